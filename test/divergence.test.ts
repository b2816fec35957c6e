// Issue 24, item 3: the numerical guard of training (src/model/divergence.ts). A huge learning rate on
// a tiny model makes the weights overflow within two steps (lr 1e20 with clipping off: the loss of the
// next step is NaN; lr 3e38: the update itself is Inf). Checked: exit 1 with one line naming the step,
// the last good checkpoint kept, no model or checkpoint with NaN/Inf written, metrics.jsonl without a
// null loss; the same under two MPI ranks with ZeRO-2 (every rank stops at the same step); a sweep
// records the diverged run as failed and finishes the other arm, and a rerun skips it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import YAML from 'yaml';
import { finiteChunks } from '../src/model/divergence.js';
import { openSafetensors } from '../src/model/safetensors.js';
import { firstNonFinite } from '../src/model/weights.js';
import { writeTinyModelDir } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const ENV = { ...process.env, SPINLM_NUM_THREADS: '1', OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' };
const spinlm = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd: dir, encoding: 'utf8', timeout: 240_000, env: { ...ENV, ...env } });

let dir = '';
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spinlm-diverge-'));
  await writeTinyModelDir(join(dir, 'model'), { seed: 3 });
  const rows = Array.from({ length: 8 }, (_, i) => ({ prompt: `say ${i}`, completion: `ok ${i} ${'ab'.repeat(i)}` }));
  writeFileSync(join(dir, 'sft.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
});
after(() => rmSync(dir, { recursive: true, force: true }));

const hot = (out: string, lr: string) => [
  'sft',
  '--model',
  'model',
  '--data',
  'sft.jsonl',
  '--out',
  out,
  '--learning_rate',
  lr,
  '--max_grad_norm',
  '0',
  '--per_device_train_batch_size',
  '2',
  '--num_train_epochs',
  '2',
  '--save_steps',
  '1',
  '--quiet',
];

/** Every tensor of a safetensors file is finite. */
async function assertFinite(file: string): Promise<void> {
  const f = await openSafetensors(file);
  try {
    for (const name of f.names()) {
      const t = await f.readTensor(name);
      assert.equal(firstNonFinite(t.data as Float32Array), -1, `${file}: ${name}`);
    }
  } finally {
    await f.close();
  }
}

function metricsRows(out: string): { step: number; loss: unknown; grad_norm: unknown }[] {
  return readFileSync(join(dir, out, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
}

describe('3. a diverged training stops, naming the step, and writes nothing diverged', () => {
  test('a NaN loss: exit 1, one line naming the step, the last good checkpoint kept, no model', async () => {
    const r = spinlm(hot('nan', '1e20'));
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    const m = /training diverged at step (\d+): the loss is NaN/.exec(r.stderr);
    assert.ok(m, r.stderr);
    const step = Number(m[1]);
    assert.match(r.stderr, new RegExp(`last good checkpoint \\(.*checkpoint, step ${step - 1}\\) is kept`));
    assert.ok(!existsSync(join(dir, 'nan', 'model.safetensors')), 'no model written');
    assert.equal(JSON.parse(readFileSync(join(dir, 'nan', 'checkpoint', 'trainer_state.json'), 'utf8')).step, step - 1);
    await assertFinite(join(dir, 'nan', 'checkpoint', 'state.safetensors'));
    const rows = metricsRows('nan');
    assert.deepEqual(
      rows.map((x) => x.step),
      Array.from({ length: step - 1 }, (_, i) => i + 1),
      'a row for each good step, none for the diverged one',
    );
    for (const x of rows) assert.ok(typeof x.loss === 'number' && typeof x.grad_norm === 'number', JSON.stringify(x));
    // the rerun resumes from the kept checkpoint and stops at the same step
    const again = spinlm(hot('nan', '1e20'));
    assert.equal(again.status, 1, again.stderr);
    assert.match(again.stderr, new RegExp(`diverged at step ${step}:`));
  });

  test('Inf weights after an update: the checkpoint is refused as it is written (the old one stays)', () => {
    const r = spinlm(hot('inf', '3e38'));
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /training diverged at step \d+: \S+: element \d+ is not finite \(NaN or Inf\)/);
    assert.ok(!existsSync(join(dir, 'inf', 'model.safetensors')));
    assert.ok(!existsSync(join(dir, 'inf', 'checkpoint.tmp')), 'no half-written checkpoint left');
  });

  test('finiteChunks names the tensor and the element across chunks (f32 and bf16 bit patterns)', async () => {
    async function* chunks<T>(...cs: T[]) {
      yield* cs;
    }
    const seen: string[] = [];
    const out: number[] = [];
    for await (const c of finiteChunks('w', chunks(new Float32Array([1, 2]), new Float32Array([3, Infinity, NaN])), (m) => seen.push(m)))
      out.push(...c);
    assert.deepEqual(seen, ['w: element 3 is not finite (NaN or Inf)'], 'reported once, at the first');
    assert.equal(out.length, 5, 'the chunks still flow (a distributed writer finishes its file)');
    const bf: string[] = [];
    for await (const c of finiteChunks('b', chunks(new Uint16Array([0x3f80, 0xff80])), (m) => bf.push(m))) void c; // 1.0, -Inf
    assert.deepEqual(bf, ['b: element 1 is not finite (NaN or Inf)']);
  });
});

describe('3. under data parallelism (2 MPI ranks, ZeRO-2) every rank stops at the same step', () => {
  const mpi = spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status === 0;
  test('exit 1 within seconds, the divergence printed once, the distributed checkpoint kept', { skip: !mpi && 'no mpirun' }, () => {
    const t0 = performance.now();
    const r = spinlm([...hot('zero', '1e20'), '--per_device_train_batch_size', '1', '--nproc', '2', '--zero_stage', '2'], {
      SPINLM_COMM_TIMEOUT: '60',
    });
    const secs = (performance.now() - t0) / 1000;
    assert.equal(r.status, 1, r.stderr);
    assert.equal((r.stderr.match(/training diverged at step \d+/g) ?? []).length, 1, `rank 0 alone reports it:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /collective|MPI_ABORT|non-zero/, 'no rank was left waiting');
    assert.ok(secs < 45, `${secs.toFixed(1)} s`);
    assert.ok(existsSync(join(dir, 'zero', 'checkpoint', 'rank-1-of-2.safetensors')));
    assert.ok(!existsSync(join(dir, 'zero', 'model.safetensors')));
  });
});

describe('3. a sweep records a diverged run as failed and goes on', () => {
  test('the other arm finishes, the table says so, a rerun skips the diverged run', () => {
    const cfg = join(dir, 'sweep.yaml');
    writeFileSync(
      cfg,
      YAML.stringify({
        base: {
          iterations: 1,
          prompts: 16,
          eval_tasks: 8,
          options: { per_device_train_batch_size: 4, gradient_accumulation_steps: 1, num_train_epochs: 1, save_steps: 1, warmup_ratio: 0 },
        },
        seeds: [1],
        baseline: 'sft',
        arms: [
          { name: 'hot', description: 'diverges', options: { objective: 'sft', learning_rate: 1e20, max_grad_norm: 0 } },
          { name: 'sft', description: 'continued SFT', options: { objective: 'sft' } },
        ],
      }),
    );
    const sweep = () =>
      spawnSync(process.execPath, [BIN, 'sweep', cfg, '--out', join(dir, 'sw'), '--device', 'cpu', '--quiet'], {
        encoding: 'utf8',
        env: ENV,
      });
    const r = sweep();
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /hot seed 1 iteration 0 failed: training diverged at step \d+/);
    assert.ok(existsSync(join(dir, 'sw', 'sft', 'seed-1', 'iter-0', 'eval.json')), 'the other arm ran');
    assert.match(r.stdout, /\| hot \| 1 \| failed: seed 1 diverged \|/);
    const summary = JSON.parse(readFileSync(join(dir, 'sw', 'sweep.json'), 'utf8'));
    assert.deepEqual(
      summary.failed.map((f: { arm: string; seed: number; iteration: number }) => [f.arm, f.seed, f.iteration]),
      [['hot', 1, 0]],
    );
    assert.match(readFileSync(join(dir, 'sw', 'sweep.md'), 'utf8'), /## Failed runs\n\n- hot seed 1, iteration 1: training diverged/);
    const again = sweep();
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stderr, /hot seed 1 iteration 0 diverged on an earlier try/);
  });
});
