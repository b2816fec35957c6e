// Memory-level ops on the WebGPU device (memory.wgsl; native/cpu/tensor_ops.cc on the CPU): new
// tensors (NaN-poisoned when the backend poisons), host writes, fill, f32 <-> bf16 casts and copies.
/// <reference types="@webgpu/types" />
import type { DType, HostData } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import type { Bindable, WebGpuRuntime } from './runtime.js';

/** NaN bit patterns written into fresh buffers by a poisoning backend (as the CPU backend's). */
const POISON_BITS = { f32: 0x7fc00000, bf16: 0x7fc0, i32: 0x7fc00000 } as const;

/** A new tensor; NaN in every element when the backend poisons. */
export function empty<D extends DType>(rt: WebGpuRuntime, dtype: D, shape: readonly number[]): Tensor<D> {
  const out = rt.tensor(dtype, shape);
  if (rt.poison) fillBits(rt, out, POISON_BITS[dtype]);
  return out;
}

export function write<D extends DType>(rt: WebGpuRuntime, t: Tensor<D>, host: HostData<D>): void {
  if (t.numel === 0) return;
  rt.flush();
  const data = host.data;
  const buf = t.handle as GPUBuffer;
  if (t.dtype === 'bf16' && t.numel % 2 === 1) {
    // a 4-byte write would clobber the next element: stage it, then copy the halves exactly
    const padded = new Uint16Array(t.numel + 1);
    padded.set(data as Uint16Array);
    const tmp = new Tensor(rt.backend, 'bf16', [t.numel + 1], rt.allocBuffer(padded.byteLength));
    rt.device.queue.writeBuffer(tmp.handle as GPUBuffer, 0, padded.buffer, 0, padded.byteLength);
    memory(rt, 'copy16', t.numel, [t, tmp], 0, true);
    rt.releaseBuffer(tmp.handle as GPUBuffer);
    return;
  }
  rt.device.queue.writeBuffer(buf, t.byteOffset, data.buffer, data.byteOffset, data.byteLength);
}

export function fillBits(rt: WebGpuRuntime, t: Tensor, bits: number): void {
  if (t.dtype === 'bf16') memory(rt, 'fill16', t.numel, [t], bits & 0xffff, true);
  else memory(rt, 'fill32', t.numel, [t], bits >>> 0, false);
}

export function cast(rt: WebGpuRuntime, t: Tensor, out: Tensor): void {
  if (t.numel === 0) return;
  if (t.dtype === out.dtype) {
    if (t.dtype === 'bf16') {
      memory(rt, 'copy16', t.numel, [out, t], 0, true);
    } else {
      rt.endPass();
      rt.enc().copyBufferToBuffer(t.handle as GPUBuffer, t.byteOffset, out.handle as GPUBuffer, out.byteOffset, t.byteLength);
      rt.countDispatch();
    }
  } else if (t.dtype === 'f32') {
    memory(rt, 'f32_to_bf16', t.numel, [out, t], 0, true);
  } else {
    memory(rt, 'bf16_to_f32', t.numel, [out, t], 0, false);
  }
}

/**
 * A memory kernel over n elements of [dst, src?], chunked so that no binding passes maxBinding.
 * perWord: one invocation per 32-bit word of a bf16 destination.
 */
function memory(rt: WebGpuRuntime, entry: string, n: number, ts: Bindable[], bits: number, perWord: boolean): void {
  if (n === 0) return;
  // chunks of elements that start every binding at a 256-byte boundary (multiples of 128 elements)
  const chunk = rt.elementChunk();
  for (let e0 = 0; e0 < n; e0 += chunk) {
    const cnt = Math.min(chunk, n - e0);
    const bs = ts.map((t) => rt.sub(t, e0, cnt));
    const inv = perWord ? Math.ceil(cnt / 2) : cnt;
    rt.dispatch('memory', {}, entry, [cnt, bits, 0, 0], bs, Math.ceil(inv / 256));
  }
}
