// Mixed precision (bf16 autocast semantics, docs/numerics.md "Mixed precision") in the model and the trainer:
// the first SPIN step's u is exactly 0 with computeDtype bf16, the saved linear inputs are bf16 and
// smaller, and bf16 compute really changes the numbers (every backend of testBackends).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { initLlama } from '../src/model/init.js';
import type { LlamaModel } from '../src/model/llama.js';
import type { TokenizedPair } from '../src/spin/batch.js';
import { referenceLogps, SpinObjective } from '../src/spin/objectives.js';
import { type LoopConfig, runTrainingLoop, type StepLog } from '../src/spin/train_loop.js';
import type { Rng } from '../src/util/rng.js';
import { testBackends } from './helpers/backends.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';

const EOS = 2;

function pairs(rng: Rng, n: number): TokenizedPair[] {
  const toks = (k: number) => Array.from({ length: k }, () => rng.int(3, 40));
  return Array.from({ length: n }, () => {
    const prompt = toks(rng.int(2, 6));
    return { real: { prompt, answer: [...toks(rng.int(1, 5)), EOS] }, generated: { prompt, answer: [...toks(rng.int(1, 5)), EOS] } };
  });
}

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
  if (cfg.computeDtype) model.computeDtype = cfg.computeDtype;
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
