// LoRA in the model and the training loop (src/model/lora.ts, weights.ts, train_loop.ts): B = 0 gives the
// base model's log-probs bit for bit (u = 0, loss log 2 at step 0), training writes only the adapters (the
// base bit-identical; no gradient, master, optimizer state or checkpoint tensor for a base name), and
// gradient checkpointing, fused updates and resume (dropout masks included) give the same adapters bit for bit.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { initLlama } from '../src/model/init.js';
import { isAdapterName, type LoraConfig } from '../src/model/lora.js';
import type { LlamaModel } from '../src/model/llama.js';
import { openSafetensors } from '../src/model/safetensors.js';
import type { TokenizedPair } from '../src/spin/batch.js';
import { referenceLogps, SpinObjective } from '../src/spin/objectives.js';
import { type LoopConfig, runTrainingLoop, type StepLog } from '../src/spin/train_loop.js';
import type { Tensor } from '../src/tensor/tensor.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';
import { relErr } from './helpers/loss_ref.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';
import { randomPairs } from './helpers/pairs.js';

const EOS = 2;

const pairs = randomPairs;

const loop = (o: Partial<LoopConfig> = {}): LoopConfig => ({
  learningRate: 3e-3,
  optim: { type: 'adamw' },
  lrSchedulerType: 'linear',
  warmupRatio: 0,
  microBatchSize: 3,
  gradientAccumulationSteps: 2,
  numTrainEpochs: 2,
  maxGradNorm: 1.0,
  seed: 7,
  saveSteps: 0,
  ...o,
});

const lora = (o: Partial<LoraConfig> = {}): LoraConfig => ({
  r: 4,
  alpha: 8,
  dropout: 0,
  targetModules: 'all-linear',
  useRslora: false,
  ...o,
});

async function spinRun(model: LlamaModel, data: TokenizedPair[], cfg: LoopConfig, hooks = {}) {
  const ref = await referenceLogps(model, data, { microBatchSize: cfg.microBatchSize, seed: cfg.seed, eosId: EOS, padId: 0 });
  const logs: StepLog[] = [];
  const obj = new SpinObjective(model, data, ref, {
    beta: 0.5,
    lossType: 'sigmoid',
    nllAlpha: 0,
    dropIdentical: false,
    eosId: EOS,
    padId: 0,
  });
  await runTrainingLoop(model, data.length, obj, cfg, { onStep: (l) => void logs.push(l), ...hooks });
  return logs;
}

async function snapshot(model: LlamaModel, which: (n: string) => boolean): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for (const [n, t] of model.weights.params) {
    if (!which(n)) continue;
    const h = await ops.read(t);
    out.set(n, Uint8Array.from(new Uint8Array(h.buffer, h.byteOffset, h.byteLength)));
  }
  return out;
}

function sameBits(a: Map<string, Uint8Array>, b: Map<string, Uint8Array>, what: string) {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: names`);
  for (const [n, x] of a) assert.ok(Buffer.from(x).equals(Buffer.from(b.get(n)!)), `${what}: ${n} differs`);
}

for (const be of await testBackends())
  describe(`LoRA model on backend ${be.name}`, () => {
    const tiny = (modelType: 'llama' | 'qwen2' | 'phi3' = 'llama') =>
      tinyConfig({ modelType, vocab: 48, hidden: 64, heads: 4, kvHeads: 2 });

    for (const dtype of ['f32', 'bf16'] as const)
      test(`B = 0: the base model's logits bit for bit, u = 0 and loss log 2 at step 0 (${dtype} base, all-linear)`, () =>
        withSeed(async (rng) => {
          const seed = rng.int(0, 1e9);
          const base = initLlama(be, tiny(), { seed, std: 0.1, dtype, randomizeAll: true });
          const model = initLlama(be, tiny(), { seed, std: 0.1, dtype, randomizeAll: true });
          model.weights.addLora(model.cfg, lora(), rng.int(0, 1e9));
          const ids = Array.from({ length: 12 }, () => rng.int(3, 40));
          const input = {
            rows: 2,
            length: 6,
            inputIds: ops.upload(be, { dtype: 'i32', data: Int32Array.from(ids) }, [12]),
            positions: ops.upload(be, { dtype: 'i32', data: Int32Array.from(ids, (_, i) => i % 6) }, [12]),
            attentionMask: ops.upload(be, { dtype: 'i32', data: new Int32Array(12).fill(1) }, [2, 6]),
          };
          const [a, b] = [base, model].map((m) => m.forward(input).logits);
          assert.deepEqual(await ops.read(b), await ops.read(a));
          for (const t of [a, b, input.inputIds, input.positions, input.attentionMask]) t.free();
          const logs = await spinRun(model, pairs(rng, 6), loop({ gradientAccumulationSteps: 1, numTrainEpochs: 1 }));
          assert.equal(logs[0].loss, Math.fround(Math.LN2));
          assert.equal(logs[0]['rewards/margins'], 0);
          base.weights.free();
          model.weights.free();
        }));

    test('training writes only the adapters: the bf16 base bit-identical, no base gradients, masters, optimizer state or checkpoint tensors', () =>
      withSeed(async (rng) => {
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-lora-'));
        try {
          const model = initLlama(be, tiny('qwen2'), { seed: rng.int(0, 1e9), std: 0.1, dtype: 'bf16', randomizeAll: true });
          model.weights.addLora(model.cfg, lora({ targetModules: ['q_proj', 'v_proj', 'down_proj'] }), rng.int(0, 1e9));
          const isBase = (n: string) => !isAdapterName(n);
          const before = await snapshot(model, isBase);
          const bBefore = await snapshot(model, (n) => n.endsWith('lora_B.weight'));
          const logs = await spinRun(model, pairs(rng, 12), loop({ numTrainEpochs: 3, saveSteps: 1 }), {
            checkpointDir: join(dir, 'ckpt'),
          });
          assert.ok(logs[logs.length - 1].loss < logs[0].loss, `loss ${logs[0].loss} -> ${logs[logs.length - 1].loss}`);
          sameBits(await snapshot(model, isBase), before, 'base after training');
          for (const [n, t] of model.weights.params) assert.equal(t.dtype, isBase(n) ? 'bf16' : 'f32', n);
          const bAfter = await snapshot(model, (n) => n.endsWith('lora_B.weight'));
          for (const [n, x] of bAfter) assert.ok(!Buffer.from(x).equals(Buffer.from(bBefore.get(n)!)), `${n} was trained`);
          assert.equal(model.weights.masters.size, 0);
          assert.ok(model.weights.grads.size > 0 && [...model.weights.grads.keys()].every(isAdapterName));
          assert.throws(() => model.weights.grad('model.layers.0.self_attn.q_proj.weight'), /frozen/);
          const f = await openSafetensors(join(dir, 'ckpt', 'state.safetensors'));
          const names = f.names();
          await f.close();
          assert.ok(names.length > 0);
          for (const n of names)
            assert.match(n, /^(param|optim)\.model\.layers\.\d+\.(self_attn|mlp)\.\w+\.lora_[AB]\.weight(\.exp_avg(_sq)?)?$/);
          model.weights.free();
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }));

    test('generation with the adapters unmerged: prefill + decode (KV cache, row-invariant matmuls) equal a full recompute (1e-5)', () =>
      withSeed(async (rng) => {
        const { LlamaDecoder } = await import('../src/model/decoder.js');
        const model = initLlama(be, tiny('phi3'), { seed: rng.int(0, 1e9), std: 0.2, randomizeAll: true });
        model.weights.addLora(model.cfg, lora({ r: 8 }), rng.int(0, 1e9));
        for (const [n, t] of model.weights.params)
          if (n.endsWith('lora_B.weight'))
            ops.write(t as Tensor<'f32'>, { dtype: 'f32', data: Float32Array.from({ length: t.numel }, () => 0.3 * rng.normal()) });
        const V = model.cfg.vocabSize;
        const full = async (ids: number[]) => {
          const L = ids.length;
          const input = {
            rows: 1,
            length: L,
            inputIds: ops.upload(be, { dtype: 'i32', data: Int32Array.from(ids) }, [L]),
            positions: ops.upload(be, { dtype: 'i32', data: Int32Array.from(ids, (_, i) => i) }, [L]),
            attentionMask: ops.upload(be, { dtype: 'i32', data: new Int32Array(L).fill(1) }, [1, L]),
          };
          const { logits } = model.forward(input);
          const all = (await ops.read(logits)) as Float32Array;
          for (const t of [logits, input.inputIds, input.positions, input.attentionMask]) t.free();
          return all.slice((L - 1) * V, L * V);
        };
        const prompts = [4, 7].map((n) => Array.from({ length: n }, () => rng.int(3, V - 1)));
        const cache = new LlamaDecoder(model).newCache(2, 12);
        let logits = cache.prefill(prompts);
        for (let step = 0; step < 3; step++) {
          const host = (await ops.read(logits)) as Float32Array;
          logits.free();
          for (let b = 0; b < 2; b++) {
            const e = relErr(host.subarray(b * V, (b + 1) * V), await full(prompts[b]));
            assert.ok(e <= 1e-5, `step ${step} row ${b}: relative error ${e}`);
          }
          const next = Int32Array.from({ length: 2 }, () => rng.int(3, V - 1));
          next.forEach((t, b) => prompts[b].push(t));
          const tokens = ops.upload(be, { dtype: 'i32', data: next }, [2]);
          logits = cache.decode(tokens, Uint8Array.from([1, 1]));
          tokens.free();
        }
        logits.free();
        cache.free();
        model.weights.free();
      }));

    /** The adapters after a short run of `cfg` from the same seeds (dropout 0.2: masks in play). */
    async function adaptersAfter(seed: number, cfg: LoopConfig, o: { family?: 'llama' | 'phi3'; hooks?: object } = {}) {
      const model = initLlama(be, tiny(o.family), { seed, std: 0.1, randomizeAll: true });
      model.weights.addLora(model.cfg, lora({ dropout: 0.2 }), seed + 1);
      const { Rng } = await import('../src/util/rng.js');
      try {
        await spinRun(model, pairs(new Rng(seed), 8), cfg, o.hooks);
        return await snapshot(model, isAdapterName);
      } finally {
        model.weights.free();
      }
    }

    test('gradient checkpointing gives the same adapters bit for bit (the recomputed layers draw the same dropout masks)', () =>
      withSeed(async (rng) => {
        const seed = rng.int(0, 1e9);
        for (const family of ['llama', 'phi3'] as const) {
          const plain = await adaptersAfter(seed, loop({ gradientCheckpointing: false }), { family });
          const recompute = await adaptersAfter(seed, loop({ gradientCheckpointing: true }), { family });
          sameBits(recompute, plain, `${family}, gradient checkpointing`);
        }
      }));

    test('fused updates give the same adapters bit for bit', () =>
      withSeed(async (rng) => {
        const seed = rng.int(0, 1e9);
        const cfg = { maxGradNorm: null, gradientAccumulationSteps: 1 };
        sameBits(await adaptersAfter(seed, loop({ ...cfg, fusedUpdate: true })), await adaptersAfter(seed, loop(cfg)), 'fused updates');
      }));

    test('a run killed mid-training resumes to the same adapters (dropout masks included)', () =>
      withSeed(async (rng) => {
        const seed = rng.int(0, 1e9);
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-lora-resume-'));
        try {
          const cfg = loop({ saveSteps: 1, numTrainEpochs: 3 });
          const ckpt = { checkpointDir: join(dir, 'ckpt') };
          const whole = await adaptersAfter(seed, cfg);
          await assert.rejects(
            adaptersAfter(seed, cfg, {
              hooks: {
                ...ckpt,
                afterStep: (s: number) => {
                  if (s === 3) throw new Error('killed');
                },
              },
            }),
            /killed/,
          );
          sameBits(await adaptersAfter(seed, cfg, { hooks: ckpt }), whole, 'resumed');
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }));
  });

test('the adapter tensors are f32 and B starts at 0; A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_, a = sqrt(5))', () =>
  withSeed(async (rng) => {
    const { CpuBackend } = await import('../src/backend/cpu/cpu_backend.js');
    const be = new CpuBackend();
    const cfg = tinyConfig({ hidden: 64, intermediate: 96, layers: 1 });
    const model = initLlama(be, cfg, { seed: 1, dtype: 'bf16' });
    model.weights.addLora(cfg, lora({ r: 8, targetModules: ['q_proj', 'down_proj'] }), rng.int(0, 1e9));
    for (const [n, t] of model.weights.params) {
      if (!isAdapterName(n)) continue;
      assert.equal(t.dtype, 'f32');
      const v = (await ops.read(t as Tensor<'f32'>)) as Float32Array;
      if (n.includes('lora_B'))
        assert.ok(
          v.every((x) => x === 0),
          n,
        );
      else {
        const bound = 1 / Math.sqrt(t.shape[1]);
        assert.ok(
          v.every((x) => Math.abs(x) <= bound),
          n,
        );
        // uniform: variance bound^2 / 3 (within 25% over >= 512 draws)
        const varr = v.reduce((a, x) => a + x * x, 0) / v.length;
        assert.ok(Math.abs(varr / ((bound * bound) / 3) - 1) < 0.25, `${n}: variance ${varr}`);
      }
    }
    model.weights.free();
  }));

test('memory (measured, CPU allocator): the bf16 base holds 2 bytes per parameter and nothing else; each adapter parameter 16 (f32 weight, gradient, AdamW state)', () =>
  withSeed(async (rng) => {
    const { CpuBackend } = await import('../src/backend/cpu/cpu_backend.js');
    const { Optimizer } = await import('../src/optim/optimizer.js');
    const be = new CpuBackend();
    const live = () => be.native.liveBytes();
    const cfg = tinyConfig({ hidden: 128, intermediate: 256, layers: 2, vocab: 300 });
    const l0 = live();
    const model = initLlama(be, cfg, { seed: rng.int(0, 1e9), dtype: 'bf16' });
    const baseParams = model.weights.count();
    const baseBytes = live() - l0;
    model.weights.addLora(cfg, lora({ r: 16 }), rng.int(0, 1e9));
    model.weights.enableTraining();
    const names = model.weights.trainableNames();
    const opt = new Optimizer(
      be,
      names.map((name) => ({ name, param: model.weights.get(name), grad: model.weights.grad(name) })),
      { type: 'adamw' },
    );
    const adapterParams = model.weights.count() - baseParams;
    const adapterBytes = live() - l0 - baseBytes - names.length * 4; // (the optimizer's per-tensor norm slots)
    assert.equal(baseBytes, 2 * baseParams);
    assert.equal(adapterBytes, 16 * adapterParams);
    assert.equal(model.weights.masters.size, 0);
    opt.free();
    model.weights.free();
  }));

test('the frozen base gets no weight-gradient GEMM: every transA matmul of a LoRA backward writes an adapter gradient', () =>
  withSeed(async (rng) => {
    const { CpuBackend } = await import('../src/backend/cpu/cpu_backend.js');
    const { spinlmSpinCase, oraclePairs } = await import('./helpers/spin_oracle_case.js');
    const { collateSpinBatch } = await import('../src/spin/batch.js');
    const be = new CpuBackend();
    const shapes: string[] = [];
    const matmul = be.matmul.bind(be);
    be.matmul = (a, b, o = {}) => {
      if (o.transA) shapes.push(o.out ? o.out.shape.join('x') : 'new');
      return matmul(a, b, o);
    };
    for (const lr of [null, 4] as const) {
      shapes.length = 0;
      const model = initLlama(be, tinyConfig({ vocab: 97, hidden: 64, intermediate: 96 }), { seed: rng.int(0, 1e9), dtype: 'bf16' });
      if (lr) model.weights.addLora(model.cfg, lora({ r: lr }), 1);
      model.weights.enableTraining();
      const batch = collateSpinBatch(oraclePairs(rng, 2, EOS), EOS, 0);
      await spinlmSpinCase(be, model, batch, new Float32Array([-50, -50, -50, -50]), 0.1);
      if (lr) {
        // per layer and module: dB [out, 4] and dA [4, in]; nothing else
        assert.equal(shapes.length, 2 * 7 * 2);
        assert.ok(
          shapes.every((s) => /^(\d+x4|4x\d+)$/.test(s)),
          shapes.join(' '),
        );
      } else assert.ok(shapes.length >= 7 * 2, `full fine-tuning: ${shapes.length} weight-gradient GEMMs`);
      model.weights.free();
    }
  }));
