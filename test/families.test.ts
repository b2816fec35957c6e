// The qwen3, phi3 and Gemma families beyond the PyTorch comparison (test/llama_torch.test.ts): their
// config.json fields and refusals, phi3's checkpoint layout (fused qkv_proj / gate_up_proj split at load
// and joined at save, bytes and names kept), and a SPIN step and a generation run per family on every
// backend, from the library and from the command line (Gemma's config parsing: test/gemma_config.test.ts).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { checkpointLayout, ConfigError, configToJson, expectedTensors, parseConfig } from '../src/model/config.js';
import { openCheckpointTensors } from '../src/model/checkpoint_files.js';
import { initLlama } from '../src/model/init.js';
import { LlamaModel } from '../src/model/llama.js';
import { generate } from '../src/generate/generate.js';
import { SpinObjective } from '../src/spin/objectives.js';
import { runTrainingLoop } from '../src/spin/train_loop.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';
import { withSeed } from './helpers/random.js';
import { oraclePairs } from './helpers/spin_oracle_case.js';
import { GEMMA2_SMALL, GEMMA3_SMALL } from './helpers/gemma_configs.js';
import { PHI3_CONFIG, QWEN3_CONFIG } from './helpers/tiny_model.js';

const FILE = '/models/x/config.json';
const EOS = 2;

function expectError(fn: () => unknown, field: string, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.ok(err.message.includes(`"${field}"`), `message names field ${field}: ${err.message}`);
    assert.match(err.message, re);
    return true;
  });
}

describe('config.json of qwen3 and phi3', () => {
  test('published shapes parse: qwen3 head_dim apart from hidden/heads, q/k norms, tied; phi3 window 2047, no biases', () => {
    const q = parseConfig(QWEN3_CONFIG, FILE);
    assert.equal(q.modelType, 'qwen3');
    assert.equal(q.headDim, 32, 'explicit head_dim, not hidden_size / heads = 16');
    assert.equal(q.qkNorm, true);
    assert.equal(q.tieWordEmbeddings, true);
    assert.equal(q.qkvBias, false);
    assert.equal(q.oBias, false);
    assert.equal(q.slidingWindow, null, 'use_sliding_window false');
    assert.equal(q.ropeTheta, 1e6);
    assert.equal(parseConfig({ ...QWEN3_CONFIG, attention_bias: true }, FILE).oBias, true, 'attention_bias: q/k/v and o');
    const qw = parseConfig({ ...QWEN3_CONFIG, use_sliding_window: true, sliding_window: 64, max_window_layers: 1 }, FILE);
    assert.deepEqual([qw.slidingWindow, qw.firstSlidingLayer], [64, 1], 'Qwen2-style use_sliding_window / max_window_layers');
    const p = parseConfig(PHI3_CONFIG, FILE);
    assert.equal(p.modelType, 'phi3');
    assert.equal(p.slidingWindow, 2047, "phi3's sliding_window lands where mistral's does");
    assert.equal(p.firstSlidingLayer, 0);
    assert.deepEqual([p.qkvBias, p.oBias, p.qkNorm, p.headDim], [false, false, false, 16]);
    for (const c of [q, qw, p, parseConfig({ ...PHI3_CONFIG, sliding_window: null }, FILE)]) {
      const out = configToJson(c);
      assert.deepEqual(out.architectures, [c.modelType === 'qwen3' ? 'Qwen3ForCausalLM' : 'Phi3ForCausalLM']);
      assert.deepEqual(parseConfig(JSON.parse(JSON.stringify(out)), FILE), c, 'configToJson round trip');
    }
  });

  test('refused by name: other model types, dropout, partial rotary embeddings', () => {
    expectError(() => parseConfig({ ...QWEN3_CONFIG, model_type: 'gemma3' }, FILE), 'model_type', /"gemma3"/);
    expectError(
      () => parseConfig({ ...QWEN3_CONFIG, model_type: 'phi' }, FILE),
      'model_type',
      /"phi3", "gemma2" or "gemma3_text", got "phi"/,
    );
    for (const field of ['resid_pdrop', 'embd_pdrop', 'attention_dropout'])
      expectError(() => parseConfig({ ...PHI3_CONFIG, [field]: 0.1 }, FILE), field, /dropout is not supported \(expected 0, got 0.1\)/);
    expectError(() => parseConfig({ ...QWEN3_CONFIG, attention_dropout: 0.05 }, FILE), 'attention_dropout', /dropout/);
    expectError(
      () => parseConfig({ ...PHI3_CONFIG, partial_rotary_factor: 0.75 }, FILE),
      'partial_rotary_factor',
      /partial rotary embeddings are not supported/,
    );
    expectError(
      () => parseConfig({ ...PHI3_CONFIG, rope_parameters: { rope_type: 'default', rope_theta: 1e4, partial_rotary_factor: 0.5 } }, FILE),
      'rope_parameters.partial_rotary_factor',
      /not supported/,
    );
    assert.equal(parseConfig({ ...PHI3_CONFIG, partial_rotary_factor: 1.0 }, FILE).modelType, 'phi3', 'a factor of 1 is no change');
  });

  test("checkpointLayout: phi3's fused tensors hold q, k, v and gate, up in HF's order; other families one to one", () => {
    const c = parseConfig({ ...PHI3_CONFIG, num_key_value_heads: 2, num_hidden_layers: 3 }, FILE);
    const layout = checkpointLayout(c);
    const names = layout.map((s) => s.name);
    for (let i = 0; i < 3; i++) {
      const p = `model.layers.${i}`;
      const qkv = layout.find((s) => s.name === `${p}.self_attn.qkv_proj.weight`)!;
      assert.deepEqual(qkv.shape, [(4 + 2 * 2) * 16, 64]);
      assert.deepEqual(
        qkv.parts.map((t) => [t.name, t.shape]),
        [
          [`${p}.self_attn.q_proj.weight`, [64, 64]],
          [`${p}.self_attn.k_proj.weight`, [32, 64]],
          [`${p}.self_attn.v_proj.weight`, [32, 64]],
        ],
      );
      const gu = layout.find((s) => s.name === `${p}.mlp.gate_up_proj.weight`)!;
      assert.deepEqual(gu.shape, [2 * 96, 64]);
      assert.deepEqual(
        gu.parts.map((t) => t.name),
        [`${p}.mlp.gate_proj.weight`, `${p}.mlp.up_proj.weight`],
      );
      for (const n of ['q_proj', 'k_proj', 'v_proj']) assert.ok(!names.includes(`${p}.self_attn.${n}.weight`));
    }
    const model = expectedTensors(c).map((s) => s.name);
    assert.deepEqual(layout.flatMap((s) => s.parts.map((t) => t.name)).sort(), [...model].sort(), 'every model tensor in one place');
    const q = parseConfig(QWEN3_CONFIG, FILE);
    const ql = checkpointLayout(q);
    assert.deepEqual(
      ql.map((s) => s.name),
      expectedTensors(q).map((s) => s.name),
    );
    assert.ok(ql.every((s) => s.parts.length === 1));
    assert.deepEqual(ql.find((s) => s.name === 'model.layers.1.self_attn.k_norm.weight')?.shape, [32]);
  });
});

for (const be of await testBackends())
  describe(`qwen3 and phi3 on backend ${be.name}`, () => {
    test('save -> load -> save keeps HF names and bytes; phi3 fused tensors are the parts stacked (also split inside a load chunk)', async () =>
      withSeed(async (rng) => {
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-families-'));
        try {
          const cases = [
            { config: QWEN3_CONFIG, dtype: 'bf16' as const },
            { config: { ...PHI3_CONFIG, num_key_value_heads: 2 }, dtype: 'f32' as const },
            // gate_up_proj [24000, 64]: 1.5M elements, over one load chunk (1M), split at 768000
            { config: { ...PHI3_CONFIG, intermediate_size: 12000, num_hidden_layers: 1 }, dtype: 'bf16' as const },
          ];
          for (const [k, c] of cases.entries()) {
            const cfg = parseConfig(c.config, 'case');
            const a = join(dir, `a${k}`),
              b = join(dir, `b${k}`);
            const m = initLlama(be, cfg, { seed: rng.int(0, 1e9), std: 0.2, dtype: c.dtype, randomizeAll: true });
            await m.save(a);
            const files = await openCheckpointTensors(a);
            try {
              assert.deepEqual(
                files.names().sort(),
                checkpointLayout(cfg)
                  .map((s) => s.name)
                  .sort(),
                'HF names in the output',
              );
              for (const s of checkpointLayout(cfg)) {
                const got = (await files.readTensor(s.name)).data;
                const parts = await Promise.all(s.parts.map(async (p) => await ops.read(m.weights.get(p.name))));
                let off = 0;
                for (const part of parts) {
                  assert.deepEqual(got.subarray(off, off + part.length), part, `${s.name} holds its parts in order`);
                  off += part.length;
                }
                assert.equal(off, got.length);
              }
            } finally {
              await files.close();
            }
            const loaded = await LlamaModel.load(be, a);
            assert.deepEqual([...loaded.weights.params.keys()].sort(), [...m.weights.params.keys()].sort());
            for (const [n, t] of m.weights.params) assert.deepEqual(await ops.read(loaded.weights.get(n)), await ops.read(t), n);
            await loaded.save(b);
            assert.ok(readFileSync(join(a, 'model.safetensors')).equals(readFileSync(join(b, 'model.safetensors'))), 'bytes kept');
            assert.deepEqual(
              JSON.parse(readFileSync(join(b, 'config.json'), 'utf8')),
              JSON.parse(readFileSync(join(a, 'config.json'), 'utf8')),
            );
            m.weights.free();
            loaded.weights.free();
          }
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }));

    for (const [family, config] of [
      ['qwen3', QWEN3_CONFIG],
      ['phi3', PHI3_CONFIG],
      ['gemma2', GEMMA2_SMALL],
      ['gemma3_text', GEMMA3_SMALL],
    ] as const)
      test(`${family}: a SPIN step (bf16 parameters, f32 masters, AdamW) moves every tensor, saves with HF names; generation runs`, async () =>
        withSeed(async (rng) => {
          const dir = mkdtempSync(join(tmpdir(), `spinlm-${family}-`));
          try {
            const cfg = parseConfig(config, 'case');
            const model = initLlama(be, cfg, { seed: rng.int(0, 1e9), std: 0.2, dtype: 'bf16', randomizeAll: true });
            const before = new Map<string, Uint16Array>();
            for (const [n, t] of model.weights.params) before.set(n, Uint16Array.from((await ops.read(t)) as Uint16Array));
            const ps = oraclePairs(rng, 4, EOS);
            const ref = Float32Array.from({ length: 8 }, () => -60 + rng.normal() * 5);
            const obj = new SpinObjective(model, ps, ref, {
              beta: 0.3,
              lossType: 'sigmoid',
              nllAlpha: 0,
              dropIdentical: false,
              eosId: EOS,
              padId: 0,
            });
            await runTrainingLoop(model, 4, obj, {
              learningRate: 1e-2,
              optim: { type: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 },
              lrSchedulerType: 'constant',
              warmupRatio: 0,
              microBatchSize: 2,
              gradientAccumulationSteps: 2,
              numTrainEpochs: 1,
              maxGradNorm: 1,
              seed: 1,
              saveSteps: 0,
            });
            for (const [n, t] of model.weights.params) {
              const after = (await ops.read(t)) as Uint16Array;
              assert.ok(
                after.some((v, i) => v !== before.get(n)![i]),
                `${n} moved`,
              );
            }
            await model.save(join(dir, 'out'));
            const back = await LlamaModel.load(be, join(dir, 'out'));
            for (const [n, t] of model.weights.params) assert.deepEqual(await ops.read(back.weights.get(n)), await ops.read(t), n);
            const prompts = Array.from({ length: 5 }, () => Array.from({ length: rng.int(1, 9) }, () => rng.int(3, 96)));
            const gens = await generate(new LlamaDecoder(back), prompts, {
              temperature: 1,
              topK: 0,
              topP: 1,
              maxNewTokens: 6,
              eosIds: [EOS],
              seed: rng.int(0, 1e6),
              batchSize: 2,
            });
            assert.equal(gens.length, 5);
            assert.ok(gens.every((g) => g.tokens.length <= 6 && g.tokens.every((t) => t >= 0 && t < cfg.vocabSize)));
            model.weights.free();
            back.weights.free();
          } finally {
            rmSync(dir, { recursive: true, force: true });
          }
        }));
  });

describe('command line', () => {
  const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
  const spinlm = (args: string[], cwd: string) =>
    spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', env: { ...process.env, SPINLM_NUM_THREADS: '2' } });
  for (const [family, config] of [
    ['qwen3', QWEN3_CONFIG],
    ['phi3', PHI3_CONFIG],
    ['gemma2', GEMMA2_SMALL],
    ['gemma3_text', GEMMA3_SMALL],
  ] as const)
    test(`${family}: spinlm generate, then spinlm train writes a model with the family's HF names`, async () => {
      const dir = mkdtempSync(join(tmpdir(), `spinlm-cli-${family}-`));
      try {
        const model = join(dir, 'model');
        mkdirSync(model);
        await writeByteTokenizer(model);
        await initLlama(new CpuBackend(), parseConfig({ ...config, vocab_size: 260 }, 'case'), { seed: 5, std: 0.05 }).save(model);
        let r = spinlm(['synthetic', '--out', 'tasks.jsonl', '--size', '6', '--families', 'minutes'], dir);
        assert.equal(r.status, 0, r.stderr);
        r = spinlm(
          ['generate', '--model', model, '--data', 'tasks.jsonl', '--out', 'pairs.jsonl', '--max_new_tokens', '6', '--quiet'],
          dir,
        );
        assert.equal(r.status, 0, r.stderr);
        r = spinlm(
          [
            'train',
            '--model',
            model,
            '--data',
            'pairs.jsonl',
            '--out',
            'trained',
            '--max_length',
            '96',
            '--max_prompt_length',
            '64',
            '--per_device_train_batch_size',
            '3',
            '--num_train_epochs',
            '1',
            '--learning_rate',
            '1e-3',
            '--quiet',
          ],
          dir,
        );
        assert.equal(r.status, 0, r.stderr);
        const files = await openCheckpointTensors(join(dir, 'trained', 'model'));
        try {
          const names = files.names();
          if (family === 'phi3') {
            assert.ok(
              names.includes('model.layers.0.self_attn.qkv_proj.weight') && names.includes('model.layers.1.mlp.gate_up_proj.weight'),
            );
            assert.ok(!names.some((n) => /\.(q|k|v|gate|up)_proj\./.test(n)), names.join(', '));
          } else {
            assert.ok(!names.includes('lm_head.weight'), 'tied');
            if (family !== 'gemma2') assert.ok(names.includes('model.layers.1.self_attn.q_norm.weight'), names.join(', '));
            if (family.startsWith('gemma')) assert.ok(names.includes('model.layers.1.post_feedforward_layernorm.weight'), names.join(', '));
          }
        } finally {
          await files.close();
        }
        assert.equal(JSON.parse(readFileSync(join(dir, 'trained', 'model', 'config.json'), 'utf8')).model_type, family);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
});
