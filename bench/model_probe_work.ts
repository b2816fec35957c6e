// Workload sizes and the SPIN loop of bench/model_probe.ts (its own module: importing the probe would
// run it); bench/gpu_probe.ts uses the same loop.
/** score/train: rows x len tokens; generate: genBatch prompts of genPrompt tokens, genNew new; spin: pairs of len (prompt). */
export const DEFAULT_WORK = { rows: 8, len: 256, genBatch: 32, genPrompt: 64, genNew: 128, pairs: 8, prompt: 64 };

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
