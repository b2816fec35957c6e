// The spinlm library. See README.md and docs/ for the map.
export {
  type Backend,
  type BackendInfo,
  SPIN_LOSS_MEANS,
  SPIN_LOSS_ROWS,
  SPIN_LOSS_TYPES,
  type SpinLossRow,
  type SpinLossType,
} from './backend/backend.js';
export { CpuBackend, cpuBackend } from './backend/cpu/cpu_backend.js';
export { backendStatus, type BackendStatus, createBackend, type DeviceChoice, DEVICES } from './backend/registry.js';
/** The op layer: every op, checked once, on the backend its tensors live on. */
export * as ops from './ops/index.js';
export { bf16ToF32, f32ToBf16, bf16ArrayToF32, f32ArrayToBf16 } from './tensor/bf16.js';
export { type DType, type HostArray, type HostData, dtypeSize } from './tensor/dtype.js';
export { Tensor } from './tensor/tensor.js';
// models and files
export { type LlamaConfig, loadConfig, parseConfig } from './model/config.js';
export { LlamaModel, type ModelInput } from './model/llama.js';
export { LlamaDecoder } from './model/decoder.js';
export { initLlama } from './model/init.js';
export { openSafetensors, writeSafetensors } from './model/safetensors.js';
export { HfTokenizer, loadTokenizer } from './text/tokenizer.js';
export { formatPrompt, instructionPrompt, type PromptTemplate } from './text/templates.js';
// data and generation
export { loadSftPairs } from './data/sft.js';
export { readSpinPairs, writeSpinPairs } from './data/spin_pairs.js';
export { generateSyntheticTasks, scoreExactMatch } from './data/synthetic.js';
export { generate, type GenerateOptions } from './generate/generate.js';
export { answerPrompts } from './generate/answers.js';
// SPIN
export {
  freeSpinLossContext,
  type SpinLossContext,
  type SpinLossOptions,
  type SpinMetrics,
  spinLossBackward,
  spinLossForward,
  spinLossMetrics,
} from './spin/loss.js';
export { Optimizer, type OptimizerConfig } from './optim/optimizer.js';
export { runTrainingLoop, type LoopConfig } from './spin/train_loop.js';
export { referenceLogps, SftObjective, SpinObjective } from './spin/objectives.js';
export { runSelfPlay, type SelfPlayOptions } from './spin/self_play.js';
export {
  evaluateTheta0,
  type Experiment,
  type ExperimentEvents,
  type ExperimentRun,
  type GenerationSettings,
  readRunEvals,
  runExperiment,
} from './spin/experiment.js';
export { runSft } from './spin/sft.js';
export { scorePairs } from './spin/score.js';
export { runDemo } from './spin/demo.js';
