// Optimizer ops on the WebGPU device (optim.wgsl; native/cpu/optim.cc on the CPU): RMSProp and AdamW
// steps (in chunks of elements), sums of squares and the clip coefficient.
import type { Tensor } from '../../tensor/tensor.js';
import type { AdamwHyper, OptimTensors, RmspropHyper } from '../backend.js';
import { empty } from './memory.js';
import type { Param, Slot, WebGpuRuntime } from './runtime.js';

function optim(
  rt: WebGpuRuntime,
  entry: 'rmsprop' | 'adamw',
  p: OptimTensors,
  s1: Tensor<'f32'>,
  s2: Tensor<'f32'> | null,
  hyper: number[],
  clip?: Tensor<'f32'>,
): void {
  const n = p.param.numel;
  if (n === 0) return;
  const pb = p.param.dtype === 'bf16';
  const defines = { MASTER: !!p.master, P_BF16: pb, CLIP: !!clip };
  // chunks of whole words, starting at 256-byte boundaries of every tensor
  const chunk = rt.elementChunk();
  for (let e0 = 0; e0 < n; e0 += chunk) {
    const cnt = Math.min(chunk, n - e0);
    const params: Param[] = [cnt, 0, 0, 0, ...hyper.map((x): Param => [x, 'f'])];
    const inv = pb ? Math.ceil(cnt / 2) : cnt;
    const bs: Slot[] = [
      rt.sub(p.param, e0, cnt),
      p.master ? rt.sub(p.master, e0, cnt) : rt.noneRw,
      rt.sub(p.grad, e0, cnt),
      rt.sub(s1, e0, cnt),
      s2 ? rt.sub(s2, e0, cnt) : null,
      clip ?? rt.none,
    ];
    rt.dispatch('optim', defines, entry, params, bs, Math.ceil(inv / 256));
  }
}

export function rmspropStep(
  rt: WebGpuRuntime,
  p: OptimTensors & { squareAvg: Tensor<'f32'> },
  h: RmspropHyper,
  clip?: Tensor<'f32'>,
): void {
  optim(rt, 'rmsprop', p, p.squareAvg, null, [h.lr, h.alpha, h.eps, h.weightDecay, 0, 0, 0, 0, 0, 1 - h.alpha, 0, 0], clip);
}

export function adamwStep(
  rt: WebGpuRuntime,
  p: OptimTensors & { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> },
  h: AdamwHyper,
  clip?: Tensor<'f32'>,
): void {
  const bc1 = 1 - h.beta1 ** h.step;
  const bc2 = 1 - h.beta2 ** h.step;
  optim(
    rt,
    'adamw',
    p,
    p.expAvg,
    p.expAvgSq,
    [h.lr, 0, h.eps, h.weightDecay, h.beta1, h.beta2, h.lr / bc1, Math.sqrt(bc2), 1 - h.lr * h.weightDecay, 0, 1 - h.beta1, 1 - h.beta2],
    clip,
  );
}

export function sumSquares(rt: WebGpuRuntime, x: Tensor<'f32'>, out: Tensor<'f32'>, index: number): void {
  const n = x.numel;
  const chunk = 8192;
  const parts = Math.max(1, Math.ceil(n / chunk));
  const part = rt.temp(parts * 4);
  // bound in pieces of 64 chunks at least, so the partials' offsets stay 256-byte aligned too
  const piece = chunk * 64;
  const bind = Math.max(piece, Math.floor(rt.maxBinding / 4 / piece) * piece);
  if (n === 0) rt.dispatch('optim', {}, 'sumsq_partial', [0, 0, chunk, 1, 0], [rt.none, part], 1);
  for (let e0 = 0; e0 < n; e0 += bind) {
    const cnt = Math.min(bind, n - e0);
    const np = Math.ceil(cnt / chunk);
    rt.dispatch('optim', {}, 'sumsq_partial', [cnt, 0, chunk, np, 0], [rt.sub(x, e0, cnt), rt.sub(part, e0 / chunk, np)], np);
  }
  rt.dispatch('optim', {}, 'sum_parts', [parts, index, chunk, parts, 0], [part, out], 1);
  rt.releaseBuffer(part.buffer);
}

export function clipCoefficient(rt: WebGpuRuntime, sumsq: Tensor<'f32'>, maxNorm: number): Tensor<'f32'> {
  const out = empty(rt, 'f32', [2]);
  rt.dispatch('optim', {}, 'clip_coefficient', [sumsq.numel, 0, 0, 0, [maxNorm, 'f']], [sumsq.numel ? sumsq : rt.none, out], 1);
  return out;
}
