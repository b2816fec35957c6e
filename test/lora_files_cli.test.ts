// `--adapter` and `spinlm merge` end to end on a tiny bf16 model (docs/lora.md, "Files" and "Merge"):
// the merged directory is a full HF model (config, tokenizer, weights in the base's bf16) equal to the
// float64 merge; scoring with the adapter unmerged agrees with scoring the merged model within the
// merge's bf16 rounding, and with an f32 merge to f32 rounding; merge refuses a directory spinlm did not make.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { loadAdapter } from '../src/model/adapter.js';
import { initLlama } from '../src/model/init.js';
import { LlamaModel } from '../src/model/llama.js';
import { adapterTensors, type LoraConfig } from '../src/model/lora.js';
import { mergeAdapterIntoWeights } from '../src/model/lora_merge.js';
import { readPeftAdapter, writePeftAdapter } from '../src/model/peft.js';
import { scorePairs } from '../src/spin/score.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { loadTokenizer } from '../src/text/tokenizer.js';
import { assertMergedOf } from './helpers/merged_model.js';
import { tinyConfig } from './helpers/tiny_model.js';
import { randn, withSeed } from './helpers/random.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const spinlm = (args: string[], cwd: string) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', env: { ...process.env, SPINLM_NUM_THREADS: '2' } });
const be = new CpuBackend();

describe('adapters on the command line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'spinlm-lora-cli-'));
  const base = join(dir, 'base');
  const adapterDir = join(dir, 'adapter');
  const cfg = tinyConfig({ vocab: 260, hidden: 64, intermediate: 96 });
  const lora: LoraConfig = { r: 8, alpha: 16, dropout: 0, targetModules: 'all-linear', useRslora: false };
  const pairs = Array.from({ length: 6 }, (_, i) => ({ prompt: `Add ${i} and ${i + 3}.`, real: `${2 * i + 3}`, generated: `${i}${i}` }));

  before(async () => {
    await withSeed(async (rng, seed) => {
      mkdirSync(base, { recursive: true });
      await writeByteTokenizer(base);
      const m = initLlama(be, cfg, { seed, std: 0.05, dtype: 'bf16' });
      await m.save(base);
      m.weights.free();
      // an adapter as after training: B nonzero, large enough to move the log-probs
      const tensors = adapterTensors(cfg, lora).map((s) => ({ ...s, data: randn(rng, s.shape[0] * s.shape[1], 0.15) }));
      await writePeftAdapter(adapterDir, cfg, lora, tensors, { baseModel: base });
      writeFileSync(join(dir, 'pairs.jsonl'), pairs.map((p) => JSON.stringify(p)).join('\n') + '\n');
    });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('spinlm merge writes a full bf16 HF model equal to the float64 merge; it refuses a directory it did not make', async () => {
    const r = spinlm(['merge', '--model', base, '--adapter', adapterDir, '--out', 'merged', '--device', 'cpu'], dir);
    assert.equal(r.status, 0, r.stderr);
    const out = join(dir, 'merged');
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(config.torch_dtype, 'bfloat16');
    assert.deepEqual(readFileSync(join(out, 'tokenizer.json')), readFileSync(join(base, 'tokenizer.json')));
    // the weights: the in-process merge of the same files, bit for bit, stored as BF16
    assert.deepEqual([...(await assertMergedOf(out, base, [adapterDir]))], ['BF16']);
    // a directory with someone else's files is refused; spinlm's own is rewritten with --overwrite_output_dir
    mkdirSync(join(dir, 'theirs'));
    writeFileSync(join(dir, 'theirs', 'notes.txt'), 'mine');
    const refused = spinlm(['merge', '--model', base, '--adapter', adapterDir, '--out', 'theirs', '--device', 'cpu'], dir);
    assert.equal(refused.status, 2);
    assert.match(refused.stderr, /not empty and was not written by spinlm/);
    const again = spinlm(
      ['merge', '--model', base, '--adapter', adapterDir, '--out', 'merged', '--overwrite_output_dir', '--device', 'cpu'],
      dir,
    );
    assert.equal(again.status, 0, again.stderr);
    // the output is never an input (the adapter's directory included)
    const onInput = spinlm(['merge', '--model', base, '--adapter', adapterDir, '--out', adapterDir, '--device', 'cpu'], dir);
    assert.equal(onInput.status, 2);
    assert.match(onInput.stderr, /--adapter/);
    // a bad adapter is one line naming the file and the problem
    const badDir = join(dir, 'bad');
    mkdirSync(badDir);
    const good = JSON.parse(readFileSync(join(adapterDir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(badDir, 'adapter_config.json'), JSON.stringify({ ...good, use_dora: true }));
    writeFileSync(join(badDir, 'adapter_model.safetensors'), readFileSync(join(adapterDir, 'adapter_model.safetensors')));
    const bad = spinlm(['merge', '--model', base, '--adapter', badDir, '--out', 'm2', '--device', 'cpu'], dir);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /use_dora.*DoRA/);
  });

  test('scoring with the adapter unmerged equals the merged model: f32 merge within 1e-5, bf16 merge within its rounding (2e-3), relative', async () => {
    const tok = await loadTokenizer(base);
    const opts = {
      batchSize: 3,
      template: 'instruction' as const,
      maxLength: 96,
      maxPromptLength: 64,
      truncationMode: 'keep_end' as const,
    };
    const scoreOf = async (m: LlamaModel) => (await scorePairs(m, tok, pairs, opts)).flatMap((s) => [s.logps_real, s.logps_generated]);
    const unmergedModel = await LlamaModel.load(be, base);
    await loadAdapter(unmergedModel, adapterDir);
    const unmerged = await scoreOf(unmergedModel);
    unmergedModel.weights.free();
    const plain = await LlamaModel.load(be, base);
    const baseScores = await scoreOf(plain);
    plain.weights.free();
    const merged = async (dtype: 'f32' | 'bf16') => {
      const m = await LlamaModel.load(be, base, { dtype });
      await mergeAdapterIntoWeights(m.weights, cfg, await readPeftAdapter(adapterDir, cfg));
      const s = await scoreOf(m);
      m.weights.free();
      return s;
    };
    const f32 = await merged('f32');
    const bf16 = await merged('bf16');
    // the adapter moves the log-probs far more than either tolerance
    const moved = Math.max(...unmerged.map((v, i) => Math.abs(v - baseScores[i])));
    assert.ok(moved > 0.05, `the adapter barely changes the scores (${moved})`);
    for (let i = 0; i < unmerged.length; i++) {
      const tol32 = 1e-5 * Math.max(1, Math.abs(unmerged[i])); // measured: 2e-6 on scores of -12..-18
      assert.ok(Math.abs(f32[i] - unmerged[i]) <= tol32, `f32 merge: score ${i}: ${f32[i]} vs unmerged ${unmerged[i]}`);
      // bf16 rounding of each merged weight (relative 2^-9): measured 0.005-0.008 on scores of -12..-18, the adapter's effect 1.7-2.1
      const tol16 = 2e-3 * Math.max(1, Math.abs(unmerged[i]));
      assert.ok(Math.abs(bf16[i] - unmerged[i]) <= tol16, `bf16 merge: score ${i}: ${bf16[i]} vs unmerged ${unmerged[i]}`);
    }
    // and the CLI: score --adapter writes the unmerged scores
    const r = spinlm(
      [
        'score',
        '--model',
        base,
        '--adapter',
        adapterDir,
        '--data',
        'pairs.jsonl',
        '--out',
        'scores.jsonl',
        '--per_device_eval_batch_size',
        '3',
        '--template',
        'instruction',
        '--max_length',
        '96',
        '--max_prompt_length',
        '64',
        '--quiet',
        '--device',
        'cpu',
      ],
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    const cli = readFileSync(join(dir, 'scores.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .flatMap((l) => {
        const s = JSON.parse(l) as { logps_real: number; logps_generated: number };
        return [s.logps_real, s.logps_generated];
      });
    // (another thread count: the sums may differ in the last bits)
    cli.forEach((v, i) =>
      assert.ok(Math.abs(v - unmerged[i]) <= 1e-5 * Math.max(1, Math.abs(v)), `CLI score ${i}: ${v} vs ${unmerged[i]}`),
    );
  });

  test('eval --adapter: the held-out log-prob of base + adapter, within the bf16 merge rounding of the merged model', () => {
    const evalOf = (extra: string[]) => {
      const r = spinlm(
        [
          'eval',
          '--data',
          'pairs.jsonl',
          '--template',
          'instruction',
          '--max_length',
          '96',
          '--max_prompt_length',
          '64',
          '--device',
          'cpu',
          ...extra,
        ],
        dir,
      );
      assert.equal(r.status, 0, r.stderr);
      return (JSON.parse(r.stdout) as { heldout_logp: number }).heldout_logp;
    };
    if (!existsSync(join(dir, 'merged', 'config.json'))) {
      const r = spinlm(['merge', '--model', base, '--adapter', adapterDir, '--out', 'merged', '--device', 'cpu'], dir);
      assert.equal(r.status, 0, r.stderr);
    }
    const withAdapter = evalOf(['--model', base, '--adapter', adapterDir]);
    const merged = evalOf(['--model', join(dir, 'merged')]);
    const plain = evalOf(['--model', base]);
    assert.ok(Math.abs(withAdapter - merged) <= 2e-3 * Math.abs(merged), `eval: ${withAdapter} with the adapter vs ${merged} merged`);
    assert.ok(
      Math.abs(withAdapter - plain) > 10 * Math.abs(withAdapter - merged),
      `eval: the adapter is in effect (${withAdapter} vs base ${plain})`,
    );
  });

  test('train --lora_r writes adapter/ and model/ (merged); train --adapter scores its reference with the adapter and trains it', async () => {
    const trainArgs = [
      'train',
      '--model',
      base,
      '--data',
      'pairs.jsonl',
      '--template',
      'instruction',
      '--max_length',
      '96',
      '--max_prompt_length',
      '64',
    ].concat([
      '--per_device_train_batch_size',
      '3',
      '--gradient_accumulation_steps',
      '1',
      '--num_train_epochs',
      '1',
      '--learning_rate',
      '1e-3',
      '--device',
      'cpu',
      '--quiet',
    ]);
    let r = spinlm([...trainArgs, '--out', 'trained', '--lora_r', '8', '--lora_target_modules', 'q_proj,down_proj'], dir);
    assert.equal(r.status, 0, r.stderr);
    const trainedAdapter = await readPeftAdapter(join(dir, 'trained', 'adapter'), cfg);
    assert.deepEqual(trainedAdapter.lora.targetModules, ['down_proj', 'q_proj']); // written sorted
    await assertMergedOf(join(dir, 'trained', 'model'), base, [join(dir, 'trained', 'adapter')]);
    // from base + adapter: the reference is base + adapter (not the base), and that adapter (r 8, all-linear) trains
    r = spinlm([...trainArgs, '--out', 'trained-from-adapter', '--adapter', adapterDir], dir);
    assert.equal(r.status, 0, r.stderr);
    const refLogps = JSON.parse(readFileSync(join(dir, 'trained-from-adapter', 'ref_logps.json'), 'utf8')) as number[];
    const withAdapter = await LlamaModel.load(be, base);
    await loadAdapter(withAdapter, adapterDir);
    const tok = await loadTokenizer(base);
    const opts = {
      batchSize: 3,
      template: 'instruction' as const,
      maxLength: 96,
      maxPromptLength: 64,
      truncationMode: 'keep_end' as const,
    };
    const scores = await scorePairs(withAdapter, tok, pairs, opts);
    withAdapter.weights.free();
    const expected = [...scores.map((s) => s.logps_real), ...scores.map((s) => s.logps_generated)];
    refLogps.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) <= 1e-5 * Math.max(1, Math.abs(v)), `ref ${i}: ${v} vs ${expected[i]}`));
    const cont = await readPeftAdapter(join(dir, 'trained-from-adapter', 'adapter'), cfg);
    assert.deepEqual(cont.lora.targetModules, ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']); // all-linear, as PEFT saves it
    assert.equal(cont.lora.r, 8);
    const given = await readPeftAdapter(adapterDir, cfg);
    const name = 'model.layers.0.mlp.down_proj.lora_B.weight';
    assert.notDeepEqual(cont.tensors.get(name)!.data, given.tensors.get(name)!.data, 'the given adapter trained');
  });

  test('sft --lora_r writes the merged model with its adapter in adapter/', async () => {
    const r = spinlm(
      ['sft', '--model', base, '--data', 'pairs.jsonl', '--out', 'sft-lora', '--lora_r', '4', '--template', 'instruction']
        .concat(['--max_length', '96', '--max_prompt_length', '64', '--per_device_train_batch_size', '3', '--num_train_epochs', '1'])
        .concat(['--learning_rate', '1e-3', '--device', 'cpu', '--quiet']),
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    const out = join(dir, 'sft-lora');
    const adapter = await readPeftAdapter(join(out, 'adapter'), cfg);
    assert.equal(adapter.baseModel, base);
    await assertMergedOf(out, base, [join(out, 'adapter')]);
  });
});
