// Workload sizes of bench/model_probe.ts (its own module: importing the probe would run it).
/** score/train: rows x len tokens; generate: genBatch prompts of genPrompt tokens, genNew new; spin: pairs of len (prompt). */
export const DEFAULT_WORK = { rows: 8, len: 256, genBatch: 32, genPrompt: 64, genNew: 128, pairs: 8, prompt: 64 };
