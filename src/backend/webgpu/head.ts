// The LM head fused with the target log-probs on WebGPU (docs/ops.md "Fused head"). Not yet written:
// the op refuses until it is (the CPU's native/cpu/head.cc is the reference).
import type { HeadOpts } from '../backend.js';
import type { Tensor } from '../../tensor/tensor.js';
import type { WebGpuRuntime } from './runtime.js';

export function headLogprob(
  _rt: WebGpuRuntime,
  _h: Tensor<'f32'>,
  _w: Tensor,
  _targets: Tensor<'i32'>,
  _opts: HeadOpts,
): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
  throw new Error('headLogprob is not yet implemented on WebGPU');
}

export function headLogprobBackward(
  _rt: WebGpuRuntime,
  _h: Tensor<'f32'>,
  _w: Tensor,
  _targets: Tensor<'i32'>,
  _lse: Tensor<'f32'>,
  _dlogp: Tensor<'f32'>,
  _dh: Tensor<'f32'>,
  _dw: Tensor<'f32'> | null,
  _opts: HeadOpts,
): void {
  throw new Error('headLogprobBackward is not yet implemented on WebGPU');
}
