// Mixed precision (bf16 autocast semantics, docs/numerics.md "Mixed precision") in the model and the trainer:
// the first SPIN step's u is exactly 0 with computeDtype bf16, the saved linear inputs are bf16 and
// smaller, and bf16 compute really changes the numbers (every backend of testBackends).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AttentionOpts, Backend, HeadOpts, LinearsOpts, MatmulOpts } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { uploadBatchLossRows, uploadInput } from '../src/model/input.js';
import { packSpinBatch } from '../src/spin/pack.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { initLlama } from '../src/model/init.js';
import type { LlamaModel } from '../src/model/llama.js';
import type { TokenizedPair } from '../src/spin/batch.js';
import { referenceLogps, SpinObjective } from '../src/spin/objectives.js';
import { type LoopConfig, runTrainingLoop, type StepLog, trainingComputeDtype } from '../src/spin/train_loop.js';
import { testBackends } from './helpers/backends.js';
import { randn, withSeed } from './helpers/random.js';
import { relErr } from './helpers/loss_ref.js';
import { matmulRef } from './helpers/model_ref.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import * as ops from '../src/ops/index.js';
import { tinyConfig } from './helpers/tiny_model.js';
import { randomPairs } from './helpers/pairs.js';

const EOS = 2;

const pairs = randomPairs;

const loop = (o: Partial<LoopConfig> = {}): LoopConfig => ({
  learningRate: 3e-3,
  optim: { type: 'adamw' },
  lrSchedulerType: 'linear',
  warmupRatio: 0.1,
  microBatchSize: 4,
  gradientAccumulationSteps: 1,
  numTrainEpochs: 2,
  maxGradNorm: 1.0,
  seed: 7,
  saveSteps: 0,
  ...o,
});

/** The reference pass (in the loop's arithmetic, as referenceStage runs it) and a SPIN run: the step logs. */
async function spinRun(model: LlamaModel, data: TokenizedPair[], cfg: LoopConfig): Promise<{ ref: Float32Array; logs: StepLog[] }> {
  if (cfg.computeDtype) model.computeDtype = trainingComputeDtype(cfg.computeDtype, model.backend);
  const ref = await referenceLogps(model, data, { microBatchSize: cfg.microBatchSize, seed: cfg.seed, eosId: EOS, padId: 0 });
  const logs: StepLog[] = [];
  const obj = new SpinObjective(model, data, ref, {
    beta: 5,
    lossType: 'sigmoid',
    nllAlpha: 0,
    dropIdentical: false,
    eosId: EOS,
    padId: 0,
  });
  await runTrainingLoop(model, data.length, obj, cfg, { onStep: (l) => void logs.push(l) });
  return { ref, logs };
}

for (const be of await testBackends()) {
  test(`${be.name}: matmul with computeDtype bf16 in every form training uses (transA / transB, a and b f32 or bf16, out + accumulate): float64 on the bf16-rounded operands`, () =>
    withSeed(async (rng) => {
      const [m, n, k] = [rng.int(1, 40), rng.int(1, 40), rng.int(1, 70)];
      const round = (x: Float32Array) => bf16ArrayToF32(f32ArrayToBf16(x));
      const make = (host: Float32Array, shape: number[], dtype: 'f32' | 'bf16') =>
        dtype === 'f32' ? ops.upload(be, { dtype, data: host }, shape) : ops.upload(be, { dtype, data: f32ArrayToBf16(host) }, shape);
      for (const transA of [false, true])
        for (const transB of [false, true])
          for (const da of ['f32', 'bf16'] as const)
            for (const db of ['f32', 'bf16'] as const) {
              const [ah, bh, c0] = [randn(rng, m * k), randn(rng, k * n), randn(rng, m * n)];
              const a = make(ah, transA ? [k, m] : [m, k], da) as Tensor<'f32'>;
              const b = make(bh, transB ? [n, k] : [k, n], db);
              const out = ops.upload(be, { dtype: 'f32', data: c0 }, [m, n]);
              ops.matmul(a, b, { transA, transB, computeDtype: 'bf16', out, accumulate: true, alpha: 0.5 });
              const want = matmulRef(round(ah), round(bh), m, n, k, transA, transB).map((v, i) => 0.5 * v + c0[i]);
              // products of bf16 values are exact in f32: only the f32 sums differ from float64
              const e = relErr((await ops.read(out)) as Float32Array, want);
              assert.ok(e <= 1e-6, `transA ${transA} transB ${transB} a ${da} b ${db}: relative error ${e}`);
              for (const t of [a, b, out]) t.free();
            }
    }));

  for (const dtype of ['f32', 'bf16'] as const) {
    test(`${be.name}: bf16 compute, ${dtype} parameters: u = 0 exactly at the first step (loss log 2), and training lowers the loss`, async () =>
      withSeed(async (rng) => {
        const seed = rng.int(0, 1e9);
        const data = pairs(rng, 8);
        const make = (b: Backend) => initLlama(b, tinyConfig({ vocab: 48 }), { seed, std: 0.1, dtype });
        const model = make(be);
        // gradient checkpointing: the recomputed forward of the backward is in bf16 too
        const { ref, logs } = await spinRun(model, data, loop({ computeDtype: 'bf16', gradientCheckpointing: dtype === 'bf16' }));
        assert.equal(model.computeDtype, 'bf16');
        assert.equal(logs[0].loss, Math.fround(Math.LN2));
        assert.equal(logs[0]['rewards/margins'], 0);
        assert.equal(logs[0]['rewards/real'], 0);
        assert.equal(logs[0]['rewards/generated'], 0);
        const last = logs[logs.length - 1];
        assert.ok(last.loss < logs[0].loss - 0.05, `loss ${logs[0].loss} -> ${last.loss}`);
        // the option takes effect: f32 log-probs of the same model differ
        const f32 = make(be);
        const ref32 = await referenceLogps(f32, data, { microBatchSize: 4, seed: 7, eosId: EOS, padId: 0 });
        const diff = ref.reduce((m, v, i) => Math.max(m, Math.abs(v - ref32[i])), 0);
        assert.ok(diff > 0 && diff < 0.5, `bf16 vs f32 reference log-probs differ by ${diff}`);
        model.weights.free();
        f32.weights.free();
      }));
  }
}

/**
 * A CPU backend that checks every GEMM it runs (matmul, linears, the fused head and its backward,
 * attention): each must compute on bf16 values — computeDtype 'bf16' (the backend's kernel rounds its
 * operands: Backend.matmul's contract; the ops layer sends it only the forms the backend rounds), else
 * operands whose values are all bf16 (rounded before the call). `bad` lists the calls that were not.
 */
function gemmSpy(): { be: CpuBackend; bad: string[]; calls: () => number } {
  const be = new CpuBackend({ poison: true });
  const bad: string[] = [];
  let n = 0;
  const bf16Valued = (t: Tensor) => {
    if (t.dtype === 'bf16') return true;
    const a = new Float32Array(t.numel);
    be.native.read(t, a);
    return new Uint32Array(a.buffer).every((x) => (x & 0xffff) === 0);
  };
  const check = (ok: boolean, what: string) => {
    n++;
    if (!ok) bad.push(what);
  };
  const { matmul, linears, headLogprob, headLogprobBackward, attention, attentionBackward } = be;
  Object.assign(be, {
    matmul(a: Tensor<'f32'>, b: Tensor, o: MatmulOpts = {}) {
      check(o.computeDtype === 'bf16' || (bf16Valued(a) && bf16Valued(b)), `matmul ${a} ${b} ${JSON.stringify({ ...o, out: undefined })}`);
      return matmul.call(be, a, b, o);
    },
    linears(x: Tensor<'f32'>, ws: readonly Tensor[], o: LinearsOpts) {
      check(o.computeDtype === 'bf16' || (bf16Valued(x) && ws.every(bf16Valued)), `linears ${x} ${JSON.stringify(o)}`);
      return linears.call(be, x, ws, o);
    },
    headLogprob(h: Tensor<'f32'>, w: Tensor, t: Tensor<'i32'>, o: HeadOpts) {
      check(o.computeDtype === 'bf16' || (bf16Valued(h) && bf16Valued(w)), `headLogprob ${h} ${w}`);
      return headLogprob.call(be, h, w, t, o);
    },
    headLogprobBackward(...a: Parameters<Backend['headLogprobBackward']>) {
      check(a[7].computeDtype === 'bf16', 'headLogprobBackward in f32');
      return headLogprobBackward.apply(be, a);
    },
    attention(...a: Parameters<Backend['attention']>) {
      const o: AttentionOpts = a[4] ?? {};
      check(o.computeDtype === 'bf16' || a.slice(0, 3).every((t) => bf16Valued(t as Tensor)), 'attention in f32');
      return attention.apply(be, a);
    },
    attentionBackward(...a: Parameters<Backend['attentionBackward']>) {
      const o: AttentionOpts = a[7] ?? {};
      check(o.computeDtype === 'bf16' || [a[0], a[1], a[2], a[6]].every((t) => bf16Valued(t as Tensor)), 'attentionBackward in f32');
      return attentionBackward.apply(be, a);
    },
  });
  return { be, bad, calls: () => n };
}

for (const lora of [false, true])
  test(`cpu: with computeDtype bf16 every GEMM of a training step computes on bf16 values (forward, backward, head, attention${lora ? ', LoRA with dropout' : ''}); with f32 they do not`, async () =>
    withSeed(async (rng) => {
      const seed = rng.int(0, 1e9);
      const data = pairs(rng, 4);
      const cfg = (computeDtype: 'f32' | 'bf16') =>
        loop({
          computeDtype,
          numTrainEpochs: 1,
          gradientCheckpointing: true,
          ...(lora ? { lora: { r: 4, alpha: 8, dropout: 0.25, targetModules: 'all-linear', useRslora: false } } : {}),
        });
      for (const computeDtype of ['bf16', 'f32'] as const) {
        const spy = gemmSpy();
        // tied head: the embedding is the head (its rows are read f32 by the embedding, rounded by the head)
        const model = initLlama(spy.be, tinyConfig({ vocab: 48, tie: true, modelType: 'qwen2' }), { seed, std: 0.1, randomizeAll: true });
        const { logs } = await spinRun(model, data, cfg(computeDtype));
        assert.equal(logs[0].loss, Math.fround(Math.LN2));
        assert.ok(spy.calls() > 20, `${spy.calls()} GEMM calls seen`);
        if (computeDtype === 'bf16') assert.deepEqual(spy.bad, []);
        else assert.ok(spy.bad.length > 0, 'the spy sees f32 GEMMs');
        model.weights.free();
      }
    }));

test('cpu: the linear layers keep their saved inputs (h1, h2, act) in bf16 under computeDtype bf16: the saved state is that much smaller', async () =>
  withSeed(async (rng) => {
    const be = new CpuBackend();
    const cfg = tinyConfig({ vocab: 48, hidden: 64, intermediate: 160 });
    const model = initLlama(be, cfg, { seed: rng.int(0, 1e9), std: 0.1 });
    model.weights.enableTraining();
    const batch = packSpinBatch(pairs(rng, 4), EOS);
    const saved: Record<string, number> = {};
    for (const computeDtype of ['f32', 'bf16'] as const) {
      const input = uploadInput(be, batch, cfg.vocabSize);
      const loss = uploadBatchLossRows(be, batch);
      const before = be.native.liveBytes();
      model.computeDtype = computeDtype;
      const { logp, state } = model.forwardLogprobs(input, loss, { train: true });
      saved[computeDtype] = be.native.liveBytes() - before;
      const want = computeDtype === 'bf16' ? 'bf16' : 'f32';
      for (const s of state!.layers) for (const k of ['h1', 'h2', 'act'] as const) assert.equal(s[k]!.dtype, want, `${k} is ${want}`);
      model.backwardLogprobs(state!, ops.zeros(be, 'f32', logp.shape));
      logp.free();
      for (const t of [input.inputIds, input.positions, input.attentionMask, input.spans, loss.rows, loss.targets, loss.segments])
        t?.free();
    }
    // h1, h2 [T, H] and act [T, I] per layer: 2 bytes instead of 4 each
    const T = batch.rows * batch.length;
    const expected = cfg.numLayers * T * (2 * cfg.hiddenSize + cfg.intermediateSize) * 2;
    assert.equal(saved.f32 - saved.bf16, expected, `saved state ${saved.f32} B (f32) vs ${saved.bf16} B (bf16)`);
    model.weights.free();
  }));
