// The per-row and index kernels of the Llama layers on the WebGPU device (their WGSL is in
// elementwise.wgsl; native/cpu/layers.cc on the CPU): embedding and its backward, RMSNorm (w or
// Gemma's 1 + w) and its backward, RoPE, and scatterRows (the KV cache's writes). The index kernels
// raise their bit in the device error word on an out-of-range index.
/// <reference types="@webgpu/types" />
import type { Tensor } from '../../tensor/tensor.js';
import type { RmsNormOpts, RopeOpts } from '../backend.js';
import { empty } from './memory.js';
import type { Param, WebGpuRuntime } from './runtime.js';

export function embedding(rt: WebGpuRuntime, ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'> {
  const [v, h] = table.shape;
  const t = ids.numel;
  const out = empty(rt, 'f32', [t, h]);
  if (t * h === 0) return out;
  rt.dispatch(
    'elementwise',
    { W_BF16: table.dtype === 'bf16' },
    'embedding',
    [t * h, h, v, 0, [0, 'f'], [0, 'f'], 0, 0],
    [ids, table, out, rt.err],
    Math.ceil((t * h) / 256),
  );
  return out;
}

export function embeddingBackward(rt: WebGpuRuntime, ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void {
  const [v, h] = dtable.shape;
  const t = ids.numel;
  if (t === 0 || h === 0) return;
  rt.dispatch(
    'elementwise',
    {},
    'embedding_backward',
    [t, h, v, 0, [0, 'f'], [0, 'f'], 0, 0],
    [ids, dout, dtable, rt.err],
    Math.ceil(h / 64),
  );
}

export function rmsnorm(
  rt: WebGpuRuntime,
  x: Tensor<'f32'>,
  w: Tensor,
  eps: number,
  opts: RmsNormOpts = {},
): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
  const [t, h] = x.shape;
  const y = empty(rt, 'f32', x.shape);
  const rstd = empty(rt, 'f32', [t]);
  if (t === 0) return { y, rstd };
  const defines = { W_BF16: w.dtype === 'bf16', UNIT_OFFSET: opts.unitOffset === true };
  rt.dispatch('elementwise', defines, 'rmsnorm', [0, h, t, 0, [eps, 'f'], [0, 'f'], 0, 0], [x, w, y, rstd], t);
  return { y, rstd };
}

export function rmsnormBackward(
  rt: WebGpuRuntime,
  x: Tensor<'f32'>,
  w: Tensor,
  rstd: Tensor<'f32'>,
  dy: Tensor<'f32'>,
  dw?: Tensor<'f32'>,
  opts: RmsNormOpts = {},
): Tensor<'f32'> {
  const [t, h] = x.shape;
  const dx = empty(rt, 'f32', x.shape);
  if (t === 0) return dx;
  const defines = { W_BF16: w.dtype === 'bf16', UNIT_OFFSET: opts.unitOffset === true };
  const params: Param[] = [0, h, t, 0, [0, 'f'], [0, 'f'], 0, 0];
  rt.dispatch('elementwise', defines, 'rmsnorm_backward', params, [x, w, rstd, dy, dx], t);
  if (dw) rt.dispatch('elementwise', {}, 'rmsnorm_dw', params, [x, rstd, dy, dw], Math.ceil(h / 64));
  return dx;
}

export function rope(rt: WebGpuRuntime, x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void {
  const [t, heads, hd] = x.shape;
  const half = hd / 2;
  if (t * heads * half === 0) return;
  const freq = opts.invFreq; // as HF computes it for the rope type (src/model/rope.ts)
  const fb = rt.temp(freq.byteLength);
  rt.flush();
  rt.device.queue.writeBuffer(fb.buffer, 0, freq.buffer, 0, freq.byteLength);
  const n = t * heads * half;
  rt.dispatch(
    'elementwise',
    {},
    'rope',
    [n, hd, heads, opts.inverse ? 1 : 0, [opts.attentionScale ?? 1, 'f'], [0, 'f'], 0, 0],
    [positions, fb, x, rt.err],
    Math.ceil(n / 256),
  );
  rt.releaseBuffer(fb.buffer);
}

export function scatterRows(rt: WebGpuRuntime, src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor): void {
  const [rows, cols] = src.shape;
  if (rows * cols === 0) return;
  if (dst.dtype === 'bf16') {
    // one invocation per (row, 32-bit word of its dst row): a bf16 pair is written whole
    const n = rows * Math.ceil(cols / 2);
    rt.dispatch(
      'elementwise',
      {},
      'scatter_rows_bf16',
      [n, cols, dst.shape[0], 0, [0, 'f'], [0, 'f'], 0, 0],
      [index, src, dst, rt.err],
      Math.ceil(n / 256),
    );
    return;
  }
  rt.dispatch(
    'elementwise',
    {},
    'scatter_rows',
    [rows * cols, cols, dst.shape[0], 0, [0, 'f'], [0, 'f'], 0, 0],
    [index, src, dst, rt.err],
    Math.ceil((rows * cols) / 256),
  );
}
