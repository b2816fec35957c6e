// Self-play with LoRA adapters (docs/lora.md, "Self-play"): `spinlm run --lora_r 16` on the demo's θ0
// writes per iteration the PEFT adapter and the merged model, and the merged model is exactly the
// previous model plus that adapter (float64 merge, one rounding); a run killed with SIGKILL resumes
// to the same bytes; --lora_merge stack merges every adapter at once over the untouched θ0; and a θ0
// that carries an adapter (--adapter) is its own reference, never "adapter off".
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../src/model/config.js';
import { readPeftAdapter } from '../src/model/peft.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { initLlama } from '../src/model/init.js';
import { loadTokenizer } from '../src/text/tokenizer.js';
import { assertMergedOf } from './helpers/merged_model.js';
import { tokenizerDirWith, ZEPHYR_TEMPLATE } from './helpers/published_tokenizers.js';
import { tinyConfig } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const THETA0 = new URL('../assets/theta0', import.meta.url).pathname;
const spinlm = (args: string[], cwd: string, env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', env: { ...process.env, SPINLM_NUM_THREADS: '2', ...env } });

describe('spinlm run with LoRA', () => {
  const dir = mkdtempSync(join(tmpdir(), 'spinlm-lora-run-'));
  before(() => {
    const r = spinlm(['synthetic', '--out', 'tasks.jsonl', '--size', '12', '--families', 'minutes,date'], dir);
    assert.equal(r.status, 0, r.stderr);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const args = (out: string, iterations: number, extra: string[] = []) => [
    'run',
    '--model',
    THETA0,
    '--data',
    'tasks.jsonl',
    '--out',
    out,
    '--iterations',
    String(iterations),
    '--lora_r',
    '16',
    '--lora_alpha',
    '32',
    '--lora_target_modules',
    'all-linear',
    '--max_new_tokens',
    '6',
    '--save_steps',
    '1',
    '--max_length',
    '96',
    '--max_prompt_length',
    '64',
    '--per_device_train_batch_size',
    '4',
    '--gradient_accumulation_steps',
    '1',
    '--num_train_epochs',
    '1',
    '--learning_rate',
    '1e-3',
    '--device',
    'cpu',
    '--quiet',
    ...extra,
  ];

  test('three iterations write a PEFT adapter and the merged model per iteration; SIGKILL + rerun gives the same bytes', async () => {
    let r = spinlm(args('straight', 3), dir);
    assert.equal(r.status, 0, r.stderr);
    let previous = THETA0; // base_model_name_or_path: the model's path as the run was given it (--out straight: relative)
    for (let t = 0; t < 3; t++) {
      const it = join(dir, 'straight', `iter-${t}`);
      const cfg = JSON.parse(readFileSync(join(it, 'adapter', 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(cfg.peft_type, 'LORA');
      assert.equal(cfg.r, 16);
      assert.equal(cfg.lora_alpha, 32);
      assert.equal(cfg.base_model_name_or_path, previous, 'the adapter names the model it was trained on');
      const adapter = await readPeftAdapter(join(it, 'adapter'), await loadConfig(THETA0)); // every model of the run has θ0's config
      const bNorm = [...adapter.tensors]
        .filter(([n]) => n.endsWith('lora_B.weight'))
        .reduce((a, [, v]) => a + v.data.reduce((s, x) => s + x * x, 0), 0);
      assert.ok(bNorm > 0, `iteration ${t}: the adapter trained (B is no longer 0)`);
      // θ_{t+1} = θ_t + s B A (float64, one rounding), with θ_t's side files
      await assertMergedOf(join(it, 'model'), t === 0 ? THETA0 : join(dir, previous), [join(it, 'adapter')]);
      assert.ok(existsSync(join(it, 'model', 'tokenizer.json')));
      assert.ok(!existsSync(join(it, 'checkpoint')));
      previous = join('straight', `iter-${t}`, 'model');
    }
    // the report reads a LoRA run's metrics like any run's
    assert.ok(readFileSync(join(dir, 'straight', 'report.html'), 'utf8').includes('<svg'));
    // SIGKILL in iteration 1's training (after its step 2 and its checkpoint), then rerun
    const killed = spawnSync(process.execPath, [BIN, ...args('resumed', 3)], {
      cwd: dir,
      encoding: 'utf8',
      env: { ...process.env, SPINLM_NUM_THREADS: '2', SPINLM_KILL_AT: '1:2' },
    });
    assert.equal(killed.signal, 'SIGKILL');
    assert.ok(existsSync(join(dir, 'resumed', 'iter-1', 'checkpoint')) && !existsSync(join(dir, 'resumed', 'iter-1', 'adapter')));
    r = spinlm(args('resumed', 3), dir);
    assert.equal(r.status, 0, r.stderr);
    for (let t = 0; t < 3; t++)
      for (const f of ['adapter/adapter_model.safetensors', 'model/model.safetensors']) {
        const a = readFileSync(join(dir, 'straight', `iter-${t}`, f));
        const b = readFileSync(join(dir, 'resumed', `iter-${t}`, f));
        assert.ok(a.equals(b), `iter-${t}/${f}: equal to the uninterrupted run, byte for byte`);
      }
  });

  test('--lora_merge stack: each model is θ0 untouched plus every adapter so far, merged as one sum', async () => {
    const r = spinlm(args('stack', 2, ['--lora_merge', 'stack']), dir);
    assert.equal(r.status, 0, r.stderr);
    const ad = (t: number) => join(dir, 'stack', `iter-${t}`, 'adapter');
    await assertMergedOf(join(dir, 'stack', 'iter-0', 'model'), THETA0, [ad(0)]);
    await assertMergedOf(join(dir, 'stack', 'iter-1', 'model'), THETA0, [ad(0), ad(1)]);
  });

  test('--adapter: θ0 plus an adapter is its own reference (never "adapter off")', () => {
    // θ0 + the straight run's first adapter is θ1 before rounding: its greedy answers and reference
    // log-probs are θ1's (iteration 1 of the straight run) within the f32 rounding of the merge
    const r = spinlm(args('from-adapter', 1, ['--adapter', join(dir, 'straight', 'iter-0', 'adapter')]), dir);
    assert.equal(r.status, 0, r.stderr);
    const read = (p: string) => JSON.parse(readFileSync(join(dir, p), 'utf8')) as number[];
    const mine = read('from-adapter/iter-0/ref_logps.json');
    const theta1 = read('straight/iter-1/ref_logps.json');
    const theta0 = read('straight/iter-0/ref_logps.json');
    assert.deepEqual(
      JSON.parse(readFileSync(join(dir, 'from-adapter/iter-0/generated.json'), 'utf8')),
      JSON.parse(readFileSync(join(dir, 'straight/iter-1/generated.json'), 'utf8')),
    );
    // [real x n, generated x n]; θ1's iteration also trains on iteration 0's pairs (--mix_previous_iteration): [real x 2n, generated x 2n]
    const n = mine.length / 2;
    mine.forEach((v, i) => {
      const w = theta1[i < n ? i : i + n];
      assert.ok(Math.abs(v - w) <= 1e-4 * Math.max(1, Math.abs(v)), `ref ${i}: ${v} vs θ1's ${w}`);
    });
    assert.ok(
      mine.some((v, i) => Math.abs(v - theta0[i]) > 1e-2),
      "the reference is not θ0's (adapter off)",
    );
    // iteration 0 trained the given adapter further: its adapter starts from it, at rank 16
    const cfg = JSON.parse(readFileSync(join(dir, 'from-adapter', 'iter-0', 'adapter', 'adapter_config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(cfg.r, 16);
  });

  test('spinlm sweep takes LoRA arms (merge and stack) and tabulates them', () => {
    const doc = {
      base: {
        iterations: 1,
        prompts: 8,
        eval_tasks: 8,
        options: { per_device_train_batch_size: 8, num_train_epochs: 1, max_new_tokens: 6 },
      },
      seeds: [1],
      baseline: 'merge',
      arms: [
        { name: 'merge', options: { lora_r: 4, lora_target_modules: 'all-linear' } },
        { name: 'stack', options: { lora_r: 4, lora_target_modules: 'all-linear', lora_merge: 'stack' } },
      ],
    };
    writeFileSync(join(dir, 'sweep.json'), JSON.stringify(doc));
    const r = spawnSync(process.execPath, [BIN, 'sweep', 'sweep.json', '--out', 'sweep', '--device', 'cpu', '--quiet'], {
      cwd: dir,
      encoding: 'utf8',
      env: { ...process.env, SPINLM_NUM_THREADS: '2' },
    });
    assert.equal(r.status, 0, r.stderr);
    const summary = JSON.parse(readFileSync(join(dir, 'sweep', 'sweep.json'), 'utf8')) as { rows: unknown[] };
    assert.equal(summary.rows.length, 2);
    for (const arm of ['merge', 'stack']) {
      const it = join(dir, 'sweep', arm, 'seed-1', 'iter-0');
      assert.equal((JSON.parse(readFileSync(join(it, 'adapter', 'adapter_config.json'), 'utf8')) as { r: number }).r, 4);
      assert.ok(existsSync(join(it, 'model', 'model.safetensors')) && existsSync(join(it, 'eval.json')));
    }
  });

  test("a tiny model over a real tokenizer (Mistral's 32k vocabulary, zephyr's chat template): three LoRA iterations", async () => {
    const model = join(dir, 'real-tok');
    await tokenizerDirWith('mistral', model, ZEPHYR_TEMPLATE);
    const tok = await loadTokenizer(model);
    const m = initLlama(new CpuBackend(), tinyConfig({ modelType: 'mistral', vocab: tok.vocabSize }), {
      seed: 3,
      std: 0.05,
      dtype: 'bf16',
    });
    await m.save(model);
    m.weights.free();
    const withModel = args('real-run', 3).map((a) => (a === THETA0 ? model : a));
    const r = spinlm(withModel, dir);
    assert.equal(r.status, 0, r.stderr);
    let previous = model;
    for (let t = 0; t < 3; t++) {
      const it = join(dir, 'real-run', `iter-${t}`);
      // the bf16 base stays bf16; the tokenizer and its chat template travel with every model
      assert.deepEqual([...(await assertMergedOf(join(it, 'model'), previous, [join(it, 'adapter')]))], ['BF16']);
      assert.ok(readFileSync(join(it, 'model', 'tokenizer_config.json'), 'utf8').includes('<|assistant|>'));
      previous = join(it, 'model');
    }
  });
});
