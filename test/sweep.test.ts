// `spinlm sweep`: config checks (one line naming the key, exit 2), the paired statistics by hand, and a
// real 2-arm x 2-seed sweep from the shipped θ0, killed midway and resumed to the table of an
// uninterrupted one; the table is recomputed here from the runs' eval.json files.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import YAML from 'yaml';
import { UsageError } from '../src/cli/args.js';
import { ARM_OPTIONS, demoArmDefaults, readSweepConfig } from '../src/cli/sweep.js';
import { trainOptions } from '../src/cli/options.js';
import { demoHeldoutPool, demoTasks } from '../src/spin/demo_setup.js';
import { forestChart } from '../src/spin/report.js';
import { meanSe, pairedDifference, summarizeSweep, type SweepEval, type SweepRecord, sweepChart } from '../src/spin/sweep.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'spinlm-sweep-'));
after(() => rmSync(dir, { recursive: true, force: true }));

let configs = 0;
function configFile(doc: unknown): string {
  const file = join(dir, `config-${configs++}.yaml`);
  writeFileSync(file, typeof doc === 'string' ? doc : YAML.stringify(doc));
  return file;
}

const twoArms = () => ({
  base: { iterations: 2, prompts: 32, eval_tasks: 24 },
  seeds: [1, 2],
  baseline: 'sft',
  arms: [
    { name: 'spin', description: 'SPIN', options: { beta: 0.1 } },
    { name: 'sft', description: 'continued SFT', options: { objective: 'sft' } },
  ],
});

describe('sweep config', () => {
  const refused = (doc: unknown, pattern: RegExp) => {
    const file = configFile(doc);
    assert.throws(
      () => readSweepConfig(file),
      (e: unknown) => {
        assert.ok(e instanceof UsageError, String(e));
        assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
        assert.ok(e.message.startsWith(file), `names the file: ${e.message}`);
        assert.match(e.message, pattern);
        return true;
      },
    );
  };
  const withArm = (options: Record<string, unknown>) => {
    const c = twoArms();
    c.arms[0].options = options as never;
    return c;
  };

  test('a good config resolves every arm option; from the shipped θ0 the defaults are the demo settings', () => {
    const c = readSweepConfig(configFile(twoArms()));
    assert.deepEqual(c.seeds, [1, 2]);
    assert.equal(c.baseline, 'sft');
    assert.equal(c.iterations, 2);
    const [spin, sft] = c.arms;
    assert.equal(spin.options.objective, 'spin');
    assert.equal(sft.options.objective, 'sft');
    for (const spec of ARM_OPTIONS) if (spec.default !== undefined) assert.ok(spec.name in spin.options, spec.name);
    const demo = demoArmDefaults();
    for (const [k, v] of Object.entries(demo)) assert.deepEqual(spin.options[k], v, k);
    // the arm options are `spinlm run`'s training flags (the same spec objects), less the per-process ones
    for (const spec of trainOptions)
      assert.equal(ARM_OPTIONS.includes(spec), !['seed', 'dtype', 'nproc', 'zero_stage', 'oversubscribe'].includes(spec.name), spec.name);
  });

  test('examples/sweep-demo.yaml: the demo arms x 3 seeds, paired against sft', () => {
    const c = readSweepConfig(new URL('../examples/sweep-demo.yaml', import.meta.url).pathname);
    assert.deepEqual(
      c.arms.map((a) => [a.name, a.options.objective, a.options.nll_alpha]),
      [
        ['spin', 'spin', 0],
        ['spin+nll', 'spin', 1],
        ['sft', 'sft', 0],
      ],
    );
    assert.deepEqual(c.seeds, [1, 2, 3]);
    assert.equal(c.baseline, 'sft');
    assert.equal(c.model, null);
  });

  test('examples/study2*.yaml: the second study parses; the core sweep is the full one less sampled-t1, same base', () => {
    const full = readSweepConfig(new URL('../examples/study2.yaml', import.meta.url).pathname);
    const core = readSweepConfig(new URL('../examples/study2-core.yaml', import.meta.url).pathname);
    assert.deepEqual(
      full.arms.map((a) => a.name),
      ['sft', 'sft-2x', 'spin', 'spin-nll', 'sppo-hard', 'sampled-t1'],
    );
    assert.deepEqual(core.arms, full.arms.slice(0, 5));
    for (const k of ['model', 'data', 'evalData', 'iterations', 'prompts', 'evalTasks', 'seeds', 'baseline'] as const)
      assert.deepEqual(core[k], full[k], k);
    assert.deepEqual(full.seeds, [1, 2, 3, 4, 5]);
    // equal steps for sft, twice the sequences of an epoch (SPIN's real + generated) for sft-2x
    const opt = (name: string) => full.arms.find((a) => a.name === name)!.options;
    assert.equal(opt('sft').num_train_epochs, 1);
    assert.equal(opt('sft-2x').num_train_epochs, 2);
    assert.deepEqual(opt('spin').learning_rate, [1e-5]);
    assert.equal(opt('sampled-t1').temperature, 1);
  });

  test('base options apply to every arm and an arm overrides them; kebab-case and aliases work', () => {
    const doc = twoArms();
    (doc.base as Record<string, unknown>).options = { learning_rate: '1e-4,5e-5', 'num-train-epochs': 3 };
    doc.arms[0].options = { learning_rate: 2e-5, gen_batch_size: 8 } as never;
    const c = readSweepConfig(configFile(doc));
    assert.deepEqual(c.arms[0].options.learning_rate, [2e-5]);
    assert.deepEqual(c.arms[1].options.learning_rate, [1e-4, 5e-5]);
    assert.equal(c.arms[0].options.num_train_epochs, 3);
    assert.equal(c.arms[1].options.num_train_epochs, 3);
    assert.equal(c.arms[0].options.generation_batch_size, 8);
  });

  test('every mistake is one line naming the key and the fix', () => {
    refused(withArm({ learning_rte: 1e-5 }), /arms\[0\] \(spin\): unknown key 'options\.learning_rte'\. Did you mean learning_rate\?/);
    refused(withArm({ zzz: 1 }), /unknown key 'options\.zzz'.*spinlm run --help/);
    refused(withArm({ beta: -1 }), /arms\[0\] \(spin\) options\.beta: must be > 0 \(got -1\)/);
    refused(withArm({ loss_type: 'nope' }), /options\.loss_type: got "nope", expected one of sigmoid, /);
    refused(withArm({ drop_identical_pairs: 'maybe' }), /options\.drop_identical_pairs: got "maybe", expected true or false/);
    refused(withArm({ seed: 3 }), /options\.seed is set per run by the top-level `seeds:` list; remove it/);
    refused(withArm({ nproc: 2 }), /options\.nproc cannot differ between runs/);
    const dup = twoArms();
    dup.arms[1].name = 'spin';
    refused(dup, /arms\[1\]: the name 'spin' is taken by arms\[0\] too; give each arm its own name/);
    refused({ ...twoArms(), baseline: 'sfft' }, /baseline must name the arm .*\(one of: spin, sft\); got "sfft"/);
    refused({ ...twoArms(), baseline: undefined }, /baseline must name the arm/);
    refused({ ...twoArms(), seeds: [1, 1] }, /seeds lists 1 twice/);
    refused({ ...twoArms(), seeds: [] }, /seeds must be a non-empty list of integers/);
    refused({ ...twoArms(), seeds: [1.5] }, /seeds must be a non-empty list of integers/);
    refused({ ...twoArms(), arm: [] }, /unknown key 'arm'; did you mean 'arms'\?/);
    refused({ ...twoArms(), base: { iteration: 2 } }, /unknown key 'base\.iteration'; did you mean 'base\.iterations'\?/);
    refused({ ...twoArms(), base: { iterations: 0 } }, /base\.iterations: must be positive \(got 0\)/);
    refused({ ...twoArms(), base: { data: 'x.jsonl' } }, /base\.data and base\.eval_data go with base\.model/);
    refused({ ...twoArms(), base: { model: 'm' } }, /base\.model needs base\.data/);
    refused({ ...twoArms(), arms: [] }, /arms must be a non-empty list/);
    const badName = twoArms();
    badName.arms[0].name = '../up';
    refused(badName, /arms\[0\]: name must be a string of letters/);
    refused('arms: [', /not valid YAML/);
  });

  test('the CLI exits 2 with that one line and no stack; a missing config file too', () => {
    const file = configFile(withArm({ beta: 0 }));
    let r = spawnSync(process.execPath, [BIN, 'sweep', file, '--out', join(dir, 'never'), '--device', 'cpu'], { encoding: 'utf8' });
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /options\.beta: must be > 0/);
    assert.ok(!existsSync(join(dir, 'never')), 'nothing written before the config is checked');
    r = spawnSync(process.execPath, [BIN, 'sweep', join(dir, 'missing.yaml'), '--device', 'cpu'], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /cannot read the config .*missing\.yaml \(ENOENT\)/);
    r = spawnSync(process.execPath, [BIN, 'sweep', '--out', 'x'], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /give CONFIG\.yaml first/);
  });
});

describe('paired statistics', () => {
  test('a known set: the paired SE is sd(d) / sqrt(n) of the per-seed differences', () => {
    const arm = { 1: 0.5, 2: 0.6, 3: 0.7 };
    const base = { 1: 0.4, 2: 0.45, 3: 0.5 };
    // d = 0.10, 0.15, 0.20: mean 0.15, sd 0.05, SE 0.05 / sqrt(3)
    const d = pairedDifference(arm, base)!;
    assert.equal(d.n, 3);
    assert.ok(Math.abs(d.mean - 0.15) < 1e-12);
    assert.ok(Math.abs(d.se! - 0.05 / Math.sqrt(3)) < 1e-12, String(d.se));
    // unpaired, the seeds' shared variation stays in: SE of the arm alone is 0.1 / sqrt(3)
    assert.ok(Math.abs(meanSe(arm).se! - 0.1 / Math.sqrt(3)) < 1e-12);
    assert.equal(meanSe({ 1: 0.3 }).se, null, 'no SE from one seed');
    assert.equal(pairedDifference({ 1: 0.3 }, { 2: 0.3 }), null, 'no seed in common');
  });

  test('summarizeSweep on random records matches a by-hand computation (pairs by seed, skips missing ones)', () => {
    const rnd = Math.random;
    const seeds = [3, 5, 8, 13];
    const arms = [
      { name: 'a', description: 'arm a' },
      { name: 'b', description: 'arm b' },
      { name: 'base', description: 'baseline' },
    ];
    const ev = (): SweepEval => ({
      exactMatch: rnd(),
      heldoutLogp: -rnd(),
      byTask: { date: rnd(), minutes: rnd() },
      generatedEqualsReal: rnd(),
      rewardsReal: rnd() - 0.5,
      rewardsGenerated: -rnd(),
    });
    const records: SweepRecord[] = [];
    for (const arm of arms)
      for (const seed of seeds) for (const iteration of [1, 2]) records.push({ arm: arm.name, seed, iteration, eval: ev() });
    // arm b misses seed 13 at iteration 2 (an unfinished run): its pairs are the other three seeds
    const missing = records.findIndex((r) => r.arm === 'b' && r.seed === 13 && r.iteration === 2);
    records.splice(missing, 1);
    const theta0 = ev();
    const s = summarizeSweep({ title: 't', arms, seeds, baseline: 'base', heldoutTasks: 10, theta0, records });
    const em = (arm: string, seed: number, it: number) => records.find((r) => r.arm === arm && r.seed === seed && r.iteration === it)?.eval;
    for (const arm of ['a', 'b'])
      for (const it of [1, 2]) {
        const row = s.rows.find((r) => r.arm === arm && r.iteration === it)!;
        const have = seeds.filter((x) => em(arm, x, it));
        const d = have.map((x) => em(arm, x, it)!.exactMatch - em('base', x, it)!.exactMatch);
        const mean = d.reduce((p, q) => p + q, 0) / d.length;
        const sd = Math.sqrt(d.reduce((p, q) => p + (q - mean) ** 2, 0) / (d.length - 1));
        assert.equal(row.diff!.n, arm === 'b' && it === 2 ? 3 : 4);
        assert.ok(Math.abs(row.diff!.mean - mean) < 1e-12);
        assert.ok(Math.abs(row.diff!.se! - sd / Math.sqrt(d.length)) < 1e-12);
        const x = have.map((q) => em(arm, q, it)!.exactMatch);
        assert.ok(Math.abs(row.exactMatch.mean - x.reduce((p, q) => p + q, 0) / x.length) < 1e-12);
        const rr = have.map((q) => em(arm, q, it)!.rewardsGenerated!);
        assert.ok(Math.abs(row.rewardsGenerated!.mean - rr.reduce((p, q) => p + q, 0) / rr.length) < 1e-12);
      }
    assert.equal(s.rows.find((r) => r.arm === 'base')!.diff, null, 'the baseline has no difference to itself');
    assert.equal(s.lastIteration, 2);
    const t = s.byTask.find((r) => r.arm === 'a' && r.family === 'minutes')!;
    const dm = seeds.map((x) => em('a', x, 2)!.byTask.minutes - em('base', x, 2)!.byTask.minutes);
    assert.ok(Math.abs(t.diff!.mean - dm.reduce((p, q) => p + q, 0) / 4) < 1e-12);
    assert.equal(t.theta0, theta0.byTask.minutes);
    // the plot: one line per arm from θ0, with error bars
    const svg = sweepChart(s);
    assert.equal((svg.match(/<polyline/g) ?? []).length, 3);
    assert.ok((svg.match(/<path d="M/g) ?? []).length >= 6, 'error bars');
  });
});

describe('a real sweep', () => {
  const doc = twoArms();
  // one optimizer step in iteration 0, two in iteration 1 (its pairs are mixed with iteration 0's); no warm-up, so
  // the second step has moved away from the reference and logs rewards that are not 0
  (doc.base as Record<string, unknown>).options = { per_device_train_batch_size: 16, num_train_epochs: 1, save_steps: 1, warmup_ratio: 0 };
  const file = join(dir, 'tiny.yaml');
  writeFileSync(file, YAML.stringify(doc));
  const sweep = (out: string, env: Record<string, string> = {}, extra: string[] = [], config = file) =>
    spawnSync(process.execPath, [BIN, 'sweep', config, '--out', join(dir, out), '--device', 'cpu', ...extra], {
      encoding: 'utf8',
      env: { ...process.env, ...env },
    });

  test('2 arms x 2 seeds end to end; killed midway and resumed to the same table; a changed config is refused', () => {
    const t0 = Date.now();
    const straight = sweep('straight', {}, ['--quiet']);
    assert.equal(straight.status, 0, straight.stderr);
    const straightSecs = (Date.now() - t0) / 1000;
    const summary = JSON.parse(readFileSync(join(dir, 'straight', 'sweep.json'), 'utf8'));
    assert.equal(summary.rows.length, 2 * 2, 'arms x iterations');
    assert.ok(readFileSync(join(dir, 'straight', 'sweep.md'), 'utf8').includes('paired SE'));
    assert.ok(readFileSync(join(dir, 'straight', 'sweep.svg'), 'utf8').startsWith('<svg'));
    assert.ok(readFileSync(join(dir, 'straight', 'sweep-delta.svg'), 'utf8').startsWith('<svg'));
    assert.ok(straight.stdout.includes('| spin | 2 | 2 |'), straight.stdout);

    // the table recomputed from the per-run eval files
    const evalOf = (out: string, arm: string, seed: number, t: number) =>
      JSON.parse(readFileSync(join(dir, out, arm, `seed-${seed}`, `iter-${t}`, 'eval.json'), 'utf8')) as SweepEval;
    for (const it of [1, 2]) {
      const d = [1, 2].map((s) => evalOf('straight', 'spin', s, it - 1).exactMatch - evalOf('straight', 'sft', s, it - 1).exactMatch);
      const row = summary.rows.find((r: { arm: string; iteration: number }) => r.arm === 'spin' && r.iteration === it);
      assert.ok(Math.abs(row.diff.mean - (d[0] + d[1]) / 2) < 1e-12);
      assert.ok(Math.abs(row.diff.se - Math.abs(d[0] - d[1]) / 2) < 1e-12, 'two seeds: sd/sqrt(2) = |d1 - d2| / 2');
      const spin = evalOf('straight', 'spin', 1, it - 1);
      assert.ok(spin.generatedEqualsReal! >= 0 && spin.generatedEqualsReal! <= 1);
      assert.ok(Number.isFinite(spin.rewardsReal) && Number.isFinite(spin.rewardsGenerated));
      assert.equal(evalOf('straight', 'sft', 1, it - 1).generatedEqualsReal, null);
    }
    // generated = real from the opponent's answers, rewards from the training steps (metrics.jsonl)
    for (const seed of [1, 2]) {
      const run = join(dir, 'straight', 'spin', `seed-${seed}`);
      const e = evalOf('straight', 'spin', seed, 1);
      const answers: string[] = JSON.parse(readFileSync(join(run, 'iter-1', 'generated.json'), 'utf8'));
      const reals = demoTasks()
        .train.slice(0, 32)
        .map((t) => t.answer);
      assert.equal(e.generatedEqualsReal, answers.filter((a, i) => a.trim() === reals[i].trim()).length / answers.length);
      const steps = readFileSync(join(run, 'metrics.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .filter((r) => r.kind === 'step' && r.iteration === 1);
      assert.equal(steps.length, 2);
      assert.ok(Math.abs(e.rewardsReal! - (steps[0]['rewards/real'] + steps[1]['rewards/real']) / 2) < 1e-12);
      assert.ok(Math.abs(e.rewardsGenerated! - (steps[0]['rewards/generated'] + steps[1]['rewards/generated']) / 2) < 1e-12);
      assert.notEqual(e.rewardsGenerated, 0);
    }

    // killed in iteration 1 of (spin, seed 2): seed 1's runs are finished, and stay untouched
    const killed = sweep('resumed', { SPINLM_KILL_AT: 'spin/seed-2:1:1' });
    assert.equal(killed.signal, 'SIGKILL', killed.stderr);
    // the table so far: seed 1's runs (it is rewritten after every finished run)
    const partial = JSON.parse(readFileSync(join(dir, 'resumed', 'sweep.json'), 'utf8'));
    assert.equal(partial.rows.length, 2 * 2);
    for (const row of partial.rows) assert.deepEqual(Object.keys(row.exactMatch.values), ['1'], `${row.arm} ${row.iteration}`);
    const done = join(dir, 'resumed', 'spin', 'seed-1', 'iter-1', 'eval.json');
    const mtime = statSync(done).mtimeMs;
    assert.ok(existsSync(join(dir, 'resumed', 'spin', 'seed-2', 'iter-1', 'checkpoint')));
    const resumed = sweep('resumed');
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.equal(statSync(done).mtimeMs, mtime, 'a finished iteration is not redone');
    assert.ok(!/spin seed 1 iteration \d: (generate|train)/.test(resumed.stderr), resumed.stderr);
    assert.match(resumed.stderr, /spin seed 2 iteration 1: train/);
    assert.ok(!/spin seed 2 iteration 0: (generate|train)/.test(resumed.stderr), resumed.stderr);
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'resumed', 'sweep.json'), 'utf8')), summary, 'the same table');

    // a changed arm is refused, naming the option
    const changed = twoArms();
    (changed.base as Record<string, unknown>).options = (doc.base as Record<string, unknown>).options;
    changed.arms[0].options = { beta: 0.5 };
    const other = join(dir, 'tiny.yaml.changed.yaml');
    writeFileSync(other, YAML.stringify(changed));
    const refused = sweep('resumed', {}, [], other);
    assert.equal(refused.status, 2, refused.stderr);
    assert.match(refused.stderr, /arm 'spin' of a sweep run with other settings: beta \(was 0\.1, now 0\.5\)/);
    assert.match(refused.stderr, /--overwrite_output_dir/);
    process.stderr.write(`# straight sweep: ${straightSecs.toFixed(1)} s\n`);
  });

  test('--jobs 2: two worker processes write the same runs and table as one process', () => {
    // at the thread count of the straight run (all cores): results differ in the last bits between
    // thread counts (held-out log-prob ~1e-8 relative), not between one process and two
    const r = sweep('jobs', { SPINLM_NUM_THREADS: String(availableParallelism()) }, ['--quiet', '--jobs', '2']);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(r.stdout.includes('| spin | 2 | 2 |'), r.stdout);
    assert.ok(!r.stdout.includes('spinlm-sweep-run-done'), 'the workers talk to the parent, not to the user');
    const read = (out: string, ...path: string[]) => JSON.parse(readFileSync(join(dir, out, ...path), 'utf8'));
    for (const arm of ['spin', 'sft'])
      for (const seed of [1, 2])
        for (const t of [0, 1])
          assert.deepEqual(
            read('jobs', arm, `seed-${seed}`, `iter-${t}`, 'eval.json'),
            read('straight', arm, `seed-${seed}`, `iter-${t}`, 'eval.json'),
            `${arm} seed ${seed} iteration ${t}`,
          );
    assert.deepEqual(read('jobs', 'sweep.json'), read('straight', 'sweep.json'));

    // a worker killed mid-run: the parent stops, says so, and a rerun resumes to the same table
    const env = { SPINLM_NUM_THREADS: String(availableParallelism()) };
    const killed = sweep('jobs-killed', { ...env, SPINLM_KILL_AT: 'spin/seed-2:1:1' }, ['--quiet', '--jobs', '2']);
    assert.notEqual(killed.status, 0, killed.stderr);
    assert.match(killed.stderr, /worker \d of 2 stopped \(SIGKILL\); rerun the same command to resume/);
    const again = sweep('jobs-killed', env, ['--quiet', '--jobs', '2']);
    assert.equal(again.status, 0, again.stderr);
    assert.deepEqual(read('jobs-killed', 'sweep.json'), read('straight', 'sweep.json'));
  });
});

test('forestChart: one row per estimate, green when the interval clears 0 upward, red downward, grey across it', () => {
  const svg = forestChart('t', 'x', [
    { name: 'up', value: 0.03, halfWidth: 0.01 },
    { name: 'down', value: -0.2, halfWidth: 0.05 },
    { name: 'across', value: 0.01, halfWidth: 0.02 },
    { name: 'one seed', value: 0.02, halfWidth: Number.NaN },
  ]);
  const dots = [...svg.matchAll(/<circle [^>]*fill="(#[0-9a-f]+)"/g)].map((m) => m[1]);
  assert.deepEqual(dots, ['#2ca02c', '#d62728', '#7f7f7f', '#2ca02c']);
  for (const n of ['up', 'down', 'across', 'one seed']) assert.ok(svg.includes(`>${n}</text>`), n);
  const ticks = [...svg.matchAll(/text-anchor="middle">([^<]+)</g)].map((m) => m[1]);
  assert.ok(ticks.includes('0') && !ticks.some((t) => /e-/.test(t)), `tick labels: ${ticks.join(' ')}`);
});

test('the held-out pool of the shipped θ0: the demo test set first, then unseen tasks of every family', () => {
  const pool = demoHeldoutPool();
  const { train, test: heldout } = demoTasks();
  assert.deepEqual(pool.slice(0, heldout.length), heldout);
  assert.ok(pool.length >= 2000, `${pool.length} tasks`);
  assert.equal(new Set(pool.map((t) => t.prompt)).size, pool.length, 'prompts are unique');
  const trained = new Set(train.map((t) => t.prompt));
  assert.equal(pool.filter((t) => trained.has(t.prompt)).length, 0, 'no prompt of the SFT set');
  const first2000 = new Map<string, number>();
  for (const t of pool.slice(0, 2000)) first2000.set(t.task, (first2000.get(t.task) ?? 0) + 1);
  assert.equal(first2000.size, 6, 'all six families in the first 2000');
});
