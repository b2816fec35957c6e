// The spinlm command line: option parsing and its errors, help, and the commands end to end on a tiny
// model (synthetic -> generate -> score -> train -> eval -> run, killed and resumed).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { helpText, type OptionSpec, parseOptions, UsageError } from '../src/cli/args.js';
import { initLlama } from '../src/model/init.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { tinyConfig } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const spinlm = (args: string[], cwd: string, env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', env: { ...process.env, SPINLM_NUM_THREADS: '2', ...env } });

describe('options', () => {
  const specs: OptionSpec[] = [
    { name: 'learning_rate', type: 'numbers', default: [5e-7], help: 'lr' },
    { name: 'per_device_train_batch_size', type: 'int', default: 8, check: (v: number) => (v > 0 ? null : 'must be positive'), help: 'b' },
    { name: 'loss_type', type: { oneOf: ['sigmoid', 'hinge'] }, default: 'sigmoid', help: 'l' },
    { name: 'drop_identical_pairs', type: 'bool', default: false, help: 'd' },
    { name: 'model', type: 'string', required: true, help: 'm' },
  ];
  test('snake and kebab case, = and space, lists, booleans, defaults', () => {
    const o = parseOptions(
      ['--model', 'm', '--learning-rate=1e-4,2e-5', '--per_device_train_batch_size', '4', '--drop-identical-pairs'],
      specs,
      't',
    );
    assert.deepEqual(o, {
      model: 'm',
      learning_rate: [1e-4, 2e-5],
      per_device_train_batch_size: 4,
      loss_type: 'sigmoid',
      drop_identical_pairs: true,
    });
    assert.equal(parseOptions(['--model', 'm', '--no-drop-identical-pairs'], specs, 't').drop_identical_pairs, false);
  });
  test('errors name the flag, the value and what was expected', () => {
    assert.throws(
      () => parseOptions(['--model', 'm', '--learning_rat', '1'], specs, 't'),
      (e: Error) => e instanceof UsageError && /unknown option --learning_rat\. Did you mean --learning_rate\?/.test(e.message),
    );
    assert.throws(
      () => parseOptions(['--model', 'm', '--per_device_train_batch_size', '2.5'], specs, 't'),
      /--per_device_train_batch_size: got "2.5", expected an integer/,
    );
    assert.throws(() => parseOptions(['--model', 'm', '--per_device_train_batch_size', '0'], specs, 't'), /must be positive/);
    assert.throws(() => parseOptions(['--model', 'm', '--loss_type', 'ipo'], specs, 't'), /expected one of sigmoid, hinge/);
    assert.throws(() => parseOptions([], specs, 't'), /--model is required/);
    assert.throws(() => parseOptions(['--model', 'm', '--learning_rate', '1e-4,x'], specs, 't'), /comma-separated list of numbers/);
  });
  test('config files: YAML and JSON under the flags; unknown keys and wrong types name the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-cfg-'));
    try {
      writeFileSync(join(dir, 'c.yaml'), 'model: from-file\nlearning_rate: [1e-5, 2e-6]\nloss_type: hinge\n');
      const o = parseOptions(['--config', join(dir, 'c.yaml'), '--loss_type', 'sigmoid'], specs, 't');
      assert.deepEqual([o.model, o.learning_rate, o.loss_type], ['from-file', [1e-5, 2e-6], 'sigmoid']);
      writeFileSync(join(dir, 'bad.json'), JSON.stringify({ model: 'x', betta: 1 }));
      assert.throws(() => parseOptions(['--config', join(dir, 'bad.json')], specs, 't'), /bad\.json: unknown key 'betta'/);
      writeFileSync(join(dir, 'type.json'), JSON.stringify({ model: 'x', per_device_train_batch_size: 'many' }));
      assert.throws(
        () => parseOptions(['--config', join(dir, 'type.json')], specs, 't'),
        /type\.json --per_device_train_batch_size: got "many"/,
      );
      assert.throws(() => parseOptions(['--config', join(dir, 'missing.yaml')], specs, 't'), /cannot read it/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  test('help lists every option with its default', () => {
    const h = helpText('t', 'summary', specs);
    for (const s of specs) assert.ok(h.includes(`--${s.name}`), s.name);
    assert.match(h, /default: 5e-7/);
  });
});

/** The rows of a JSONL file. */
const readJsonl = (file: string) =>
  readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));

describe('commands end to end', () => {
  let dir = '';
  let model = '';
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'spinlm-cli-'));
    model = join(dir, 'model');
    mkdirSync(model);
    await writeByteTokenizer(model);
    await initLlama(new CpuBackend(), tinyConfig({ vocab: 260 }), { seed: 5, std: 0.05 }).save(model);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const text = ['--max_length', '96', '--max_prompt_length', '64'];
  const small = [
    '--per_device_train_batch_size',
    '4',
    '--gradient_accumulation_steps',
    '1',
    '--num_train_epochs',
    '1',
    '--learning_rate',
    '1e-3',
    '--quiet',
  ];

  test('synthetic -> generate -> score -> train -> eval', () => {
    let r = spinlm(['synthetic', '--out', 'tasks.jsonl', '--size', '12', '--families', 'minutes,date'], dir);
    assert.equal(r.status, 0, r.stderr);
    r = spinlm(
      [
        'generate',
        '--model',
        model,
        '--data',
        'tasks.jsonl',
        '--out',
        'pairs.jsonl',
        '--max_new_tokens',
        '8',
        '--temperature',
        '1',
        '--quiet',
      ],
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    const rows = readJsonl(join(dir, 'pairs.jsonl'));
    assert.equal(rows.length, 12);
    assert.ok(rows.every((x) => x.real[1].role === 'assistant' && typeof x.generated[1].content === 'string'));
    assert.ok(!existsSync(join(dir, 'pairs.jsonl.partial.jsonl')), 'the journal is removed once the output is complete');
    r = spinlm(['score', '--model', model, '--data', 'pairs.jsonl', '--out', 'scores.jsonl', ...text, '--quiet'], dir);
    assert.equal(r.status, 0, r.stderr);
    const scores = readJsonl(join(dir, 'scores.jsonl'));
    assert.ok(scores.every((s) => s.logps_real < 0 && s.tokens_real >= 1));
    // the same pairs as plain {prompt, real, generated} strings score the same
    writeFileSync(
      join(dir, 'strings.jsonl'),
      rows.map((x) => JSON.stringify({ prompt: x.prompt, real: x.real[1].content, generated: x.generated[1].content })).join('\n'),
    );
    r = spinlm(['score', '--model', model, '--data', 'strings.jsonl', '--out', 'scores2.jsonl', ...text, '--quiet'], dir);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readFileSync(join(dir, 'scores2.jsonl'), 'utf8'), readFileSync(join(dir, 'scores.jsonl'), 'utf8'));
    // bf16 compute: needs bf16 parameters (one line, exit 2, nothing written), then scores near the f32 ones
    r = spinlm(['score', '--model', model, '--data', 'pairs.jsonl', '--out', 'scores3.jsonl', '--compute_dtype', 'bf16', ...text], dir);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--compute_dtype bf16 needs bf16 parameters .* is loaded as f32: add --dtype bf16/);
    assert.ok(!existsSync(join(dir, 'scores3.jsonl')));
    r = spinlm(
      [
        'score',
        '--model',
        model,
        '--data',
        'pairs.jsonl',
        '--out',
        'scores3.jsonl',
        '--compute_dtype',
        'bf16',
        '--dtype',
        'bf16',
        ...text,
        '--quiet',
      ],
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    const bf = readJsonl(join(dir, 'scores3.jsonl'));
    bf.forEach((b, i) => {
      const e = Math.abs(b.logps_real - scores[i].logps_real) / Math.abs(scores[i].logps_real);
      assert.ok(e < 0.02 && b.tokens_real === scores[i].tokens_real, `pair ${i}: ${b.logps_real} vs ${scores[i].logps_real}`);
    });
    r = spinlm(['train', '--model', model, '--data', 'pairs.jsonl', '--out', 'trained', ...text, ...small], dir);
    assert.equal(r.status, 0, r.stderr);
    for (const f of [
      'model/config.json',
      'model/model.safetensors',
      'model/tokenizer.json',
      'metrics.jsonl',
      'report.html',
      'train.resolved.json',
    ])
      assert.ok(existsSync(join(dir, 'trained', f)), f);
    const trainRows = readJsonl(join(dir, 'trained', 'metrics.jsonl'));
    const first = trainRows[0];
    assert.equal(first.loss, Math.fround(Math.LN2), 'step 0 of an iteration: loss log 2');
    // a run without evaluations: its report names the steps and the first and last loss, not an empty table
    const report = readFileSync(join(dir, 'trained', 'report.md'), 'utf8');
    const last = trainRows.filter((r) => r.kind === 'step').at(-1);
    assert.ok(!report.includes('Evaluation per iteration'), report);
    assert.ok(
      report.includes(
        `| run | ${trainRows.filter((r) => r.kind === 'step').length} | ${Number(first.loss).toFixed(4)} | ${Number(last.loss).toFixed(4)} |`,
      ),
      report,
    );
    // the same through --nproc 2 and ZeRO (the launcher's path: --zero_stage is a choice, read as a number)
    const mpiEnv = { OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1', SPINLM_NUM_THREADS: '1' };
    r = spinlm(
      ['train', '--model', model, '--data', 'pairs.jsonl', '--out', 'trained-np2', '--nproc', '2', '--zero_stage', '1', ...text, ...small],
      dir,
      mpiEnv,
    );
    assert.equal(r.status, 0, r.stderr);
    const firstNp2 = JSON.parse(readFileSync(join(dir, 'trained-np2', 'metrics.jsonl'), 'utf8').split('\n')[0]);
    assert.equal(firstNp2.loss, Math.fround(Math.LN2));
    r = spinlm(['eval', '--model', join(dir, 'trained', 'model'), '--data', 'tasks.jsonl', ...text, '--max_new_tokens', '8'], dir);
    assert.equal(r.status, 0, r.stderr);
    const ev = JSON.parse(r.stdout);
    assert.ok(ev.heldout_logp < 0 && ev.exact_match >= 0 && ev.by_task.minutes);
  });

  test('run: killed mid-way (SIGKILL) and rerun resumes to the weights of an uninterrupted run', () => {
    const args = (out: string) => [
      'run',
      '--model',
      model,
      '--data',
      'tasks.jsonl',
      '--out',
      out,
      '--iterations',
      '2',
      '--max_new_tokens',
      '6',
      '--save_steps',
      '1',
      ...text,
      ...small,
    ];
    let r = spinlm(args('straight'), dir);
    assert.equal(r.status, 0, r.stderr);
    // `spinlm train` runs the same stages: on iteration 0's pairs it makes iteration 0's model, byte for byte
    const tasks = readJsonl(join(dir, 'tasks.jsonl'));
    const answers: string[] = JSON.parse(readFileSync(join(dir, 'straight', 'iter-0', 'generated.json'), 'utf8'));
    writeFileSync(
      join(dir, 'iter0-pairs.jsonl'),
      tasks.map((x, i) => JSON.stringify({ prompt: x.messages[0].content, real: x.messages[1].content, generated: answers[i] })).join('\n'),
    );
    r = spinlm(
      ['train', '--model', model, '--data', 'iter0-pairs.jsonl', '--out', 'train-iter0', '--save_steps', '1', ...text, ...small],
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(
      readFileSync(join(dir, 'train-iter0', 'ref_logps.json')),
      readFileSync(join(dir, 'straight', 'iter-0', 'ref_logps.json')),
    );
    assert.ok(
      readFileSync(join(dir, 'train-iter0', 'model', 'model.safetensors')).equals(
        readFileSync(join(dir, 'straight', 'iter-0', 'model', 'model.safetensors')),
      ),
    );
    // SIGKILL in the middle of iteration 1's training (after its step 2 and its checkpoint)
    const killed = spawnSync(process.execPath, [BIN, ...args('resumed')], {
      cwd: dir,
      encoding: 'utf8',
      env: { ...process.env, SPINLM_KILL_AT: '1:2' },
    });
    assert.equal(killed.signal, 'SIGKILL');
    assert.ok(existsSync(join(dir, 'resumed', 'iter-1', 'checkpoint')) && !existsSync(join(dir, 'resumed', 'iter-1', 'model')));
    r = spinlm(args('resumed'), dir);
    assert.equal(r.status, 0, r.stderr);
    const a = readFileSync(join(dir, 'straight', 'iter-1', 'model', 'model.safetensors'));
    const b = readFileSync(join(dir, 'resumed', 'iter-1', 'model', 'model.safetensors'));
    assert.ok(a.equals(b), 'final weights equal an uninterrupted run, byte for byte');
  });

  test('run --dtype bf16 loads every model of the run in bf16 (an f32 θ0 too), so --compute_dtype bf16 generates', () => {
    const r = spinlm(
      [
        'run',
        '--model',
        model,
        '--data',
        'tasks.jsonl',
        '--out',
        'bf16-run',
        '--iterations',
        '1',
        '--max_new_tokens',
        '4',
        '--dtype',
        'bf16',
        '--compute_dtype',
        'bf16',
        ...text,
        ...small,
      ],
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    const st = readFileSync(join(dir, 'bf16-run', 'iter-0', 'model', 'model.safetensors'));
    const header = JSON.parse(st.subarray(8, 8 + Number(st.readBigUInt64LE(0))).toString('utf8')) as Record<string, { dtype?: string }>;
    const dtypes = new Set(Object.entries(header).flatMap(([k, v]) => (k === '__metadata__' ? [] : [v.dtype])));
    assert.deepEqual([...dtypes], ['BF16'], 'the trained model keeps the bf16 parameters it trained');
  });

  test('bad input: missing files and flags give one clear line and exit code 2 or 1', () => {
    let r = spinlm(['train', '--data', 'x'], dir);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--model is required/);
    r = spinlm(['score', '--model', join(dir, 'nope'), '--data', 'tasks.jsonl', '--out', 'o.jsonl'], dir);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /nope: no config\.json there/);
    r = spinlm(['trian'], dir);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command 'trian'\. Did you mean train\?/);
  });
});

describe('--device and spinlm info', () => {
  test('info lists every backend, available or not and why; it takes no options', () => {
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-info-'));
    try {
      const r = spinlm(['info'], dir);
      assert.equal(r.status, 0, r.stderr);
      for (const name of ['cpu', 'cuda', 'webgpu']) assert.match(r.stdout, new RegExp(`^${name}: (available|not available): .+$`, 'm'));
      assert.match(r.stdout, /^cpu: available: CPU, \d+ kernel thread/m);
      const bad = spinlm(['info', '--bogus'], dir);
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /unknown option --bogus/);
      const help = spinlm(['info', '--help'], dir);
      assert.equal(help.status, 0);
      assert.match(help.stdout, /Usage: spinlm info/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an unavailable --device is one line and exit 2, before any file is read; a config file can name it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-device-'));
    try {
      // the devices this machine cannot run (spinlm info says which); an available one is asked for below
      const info = spinlm(['info'], dir).stdout;
      const unavailable = ['cuda', 'webgpu'].filter((d) => new RegExp(`^${d}: not available`, 'm').test(info));
      for (const cmd of ['score', 'generate', 'train', 'run', 'sft', 'eval', 'demo']) {
        for (const dev of unavailable) {
          const files = cmd === 'demo' ? [] : ['--model', 'no-such-model', '--data', 'no-such-data', '--out', join(dir, 'o')];
          const r = spinlm([cmd, '--device', dev, ...files], dir);
          assert.equal(r.status, 2, `${cmd} --device ${dev}: ${r.stderr}`);
          const lines = r.stderr.trim().split('\n');
          assert.equal(lines.length, 1, `one line: ${r.stderr}`);
          assert.match(lines[0], new RegExp(`--device ${dev} is not available: .+\\. Use --device cpu`));
        }
      }
      for (const dev of ['cuda', 'webgpu'].filter((d) => !unavailable.includes(d))) {
        // available: the device is taken, and the missing model is the error
        const r = spinlm(['score', '--device', dev, '--model', 'no-such-model', '--data', 'd', '--out', 'o'], dir);
        assert.equal(r.status, 2, r.stderr);
        assert.match(r.stderr, /no-such-model: no config\.json there/);
      }
      if (unavailable.length > 0) {
        writeFileSync(join(dir, 'c.yaml'), `device: ${unavailable[0]}\n`);
        const r = spinlm(['score', '--config', join(dir, 'c.yaml'), '--model', 'm', '--data', 'd', '--out', 'o'], dir);
        assert.equal(r.status, 2);
        assert.match(r.stderr, new RegExp(`--device ${unavailable[0]} is not available`));
      }
      const bad = spinlm(['score', '--device', 'tpu', '--model', 'm', '--data', 'd', '--out', 'o'], dir);
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /--device: .*expected one of auto, cpu, cuda, webgpu/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
