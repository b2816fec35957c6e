// Workload sizes and the SPIN loop of bench/model_probe.ts (its own module: importing the probe would
// run it); bench/gpu_probe.ts uses the same loop.
import type { ComputeDtype } from '../src/backend/backend.js';
import type { KvCacheDtype } from '../src/model/decoder.js';
import type { LlamaModel } from '../src/model/llama.js';
import type { TokenizedPair } from '../src/spin/batch.js';
import { SpinObjective } from '../src/spin/objectives.js';
/**
 * score/train: rows x len tokens; generate: genBatch prompts of genPrompt tokens, genNew new, the KV
 * cache in kvCache ('auto' = the parameters' dtype); spin: pairs of len (prompt). compute: the linear
 * layers' arithmetic of score and generate ('bf16' needs a bf16 model).
 */
export const DEFAULT_WORK = {
  rows: 8,
  len: 256,
  genBatch: 32,
  genPrompt: 64,
  genNew: 128,
  kvCache: 'auto' as KvCacheDtype,
  compute: 'f32' as ComputeDtype,
  pairs: 8,
  prompt: 64,
};

/** The optimizer loop of a benchmarked SPIN step (the paper's RMSProp, lr 5e-7, clipping 1.0), B pairs per step. */
export const spinBenchLoop = (pairsPerStep: number) => ({
  learningRate: 5e-7,
  optim: { type: 'rmsprop' as const },
  lrSchedulerType: 'linear' as const,
  warmupRatio: 0.1,
  microBatchSize: pairsPerStep,
  gradientAccumulationSteps: 1,
  numTrainEpochs: 1,
  maxGradNorm: 1,
  seed: 1,
  saveSteps: 0,
});

/** The benchmarked SPIN objective: the official loss (sigmoid, beta 0.1), no NLL term, every pair counted. */
export const spinBenchObjective = (model: LlamaModel, pairs: readonly TokenizedPair[], ref: Float32Array) =>
  new SpinObjective(model, pairs, ref, { beta: 0.1, lossType: 'sigmoid', nllAlpha: 0, dropIdentical: false, eosId: 2, padId: 0 });
