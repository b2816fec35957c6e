// The spinlm library. See README.md and DESIGN.md for the map.
export { type Backend, SPIN_LOSS_ROWS, type SpinLossRow, type SpinLossType } from './backend/backend.js';
export { CpuBackend, cpuBackend } from './backend/cpu/cpu_backend.js';
export { bf16ToF32, f32ToBf16, bf16ArrayToF32, f32ArrayToBf16 } from './tensor/bf16.js';
export { type DType, type HostArray, type HostData, dtypeSize } from './tensor/dtype.js';
export { Tensor } from './tensor/tensor.js';
export {
  freeSpinLossContext, type SpinLossContext, type SpinLossOptions, type SpinMetrics,
  spinLossBackward, spinLossForward, spinLossMetrics,
} from './spin/loss.js';
