// Optimizer ops (f32 masters and states), small reductions and in-place f32 scalings (scale, the
// logits' soft-cap): argument checks, then the kernel.
import type { AdamwHyper, OptimTensors, RmspropHyper } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { checkCount, checkFinite, expectArg, expectTensor } from './check.js';

function checkOptim(p: OptimTensors, states: Record<string, Tensor>, clip: Tensor | undefined, hyper: object): void {
  const be = expectTensor(p.param, 'param');
  expectArg(be, p.param, 'param', ['f32', 'bf16']);
  const f32: Record<string, Tensor> = { grad: p.grad, ...states };
  if (p.master) f32.master = p.master;
  else if (p.param.dtype === 'bf16') throw new TypeError(`a bf16 parameter ${p.param} needs an f32 master copy`);
  for (const [what, t] of Object.entries(f32)) expectArg(be, t, what, ['f32'], p.param.shape);
  if (clip) expectArg(be, clip, 'clip', ['f32'], [2]);
  for (const [k, v] of Object.entries(hyper)) checkFinite(v as number, `optimizer hyperparameter '${k}'`);
}

/** One torch.optim.RMSprop step; `clip` f32 [2] from clipCoefficient scales the gradient by clip[1]. */
export function rmspropStep(p: OptimTensors & { squareAvg: Tensor<'f32'> }, h: RmspropHyper, clip?: Tensor<'f32'>): void {
  checkOptim(p, { squareAvg: p.squareAvg }, clip, h);
  p.param.backend.rmspropStep(p, h, clip);
}

/** One torch.optim.AdamW step; h.step counts from 1. */
export function adamwStep(p: OptimTensors & { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> }, h: AdamwHyper, clip?: Tensor<'f32'>): void {
  checkOptim(p, { expAvg: p.expAvg, expAvgSq: p.expAvgSq }, clip, h);
  checkCount(h.step, "adamw 'step'", 1);
  p.param.backend.adamwStep(p, h, clip);
}

/** out[index] = sum of x^2 (double accumulation, fixed order). */
export function sumSquares(x: Tensor<'f32'>, out: Tensor<'f32'>, index: number): void {
  const be = expectTensor(x, 'x');
  expectArg(be, x, 'x', ['f32']);
  expectArg(be, out, 'out', ['f32']);
  checkCount(index, 'index');
  if (index >= out.numel) throw new RangeError(`index ${index} is outside out [${out.numel}]`);
  be.sumSquares(x, out, index);
}

/** From per-tensor sums of squares [k]: f32 [2] = [total norm, min(1, maxNorm / (norm + 1e-6))] (torch's clip_grad_norm_). */
export function clipCoefficient(sumsq: Tensor<'f32'>, maxNorm: number): Tensor<'f32'> {
  const be = expectTensor(sumsq, 'sumsq');
  expectArg(be, sumsq, 'sumsq', ['f32']);
  if (typeof maxNorm !== 'number') throw new TypeError(`maxNorm must be a number, got ${typeof maxNorm}`);
  if (!(maxNorm > 0)) throw new RangeError(`maxNorm must be a positive number (Infinity: no clipping), got ${maxNorm}`);
  return be.clipCoefficient(sumsq, maxNorm);
}

/** x *= a, in place. */
export function scaleInPlace(x: Tensor<'f32'>, a: number): void {
  const be = expectTensor(x, 'x');
  expectArg(be, x, 'x', ['f32']);
  checkFinite(a, 'scale');
  be.scaleInPlace(x, a);
}

/**
 * x = c tanh(x / c), in place: logits soft-capped outside the fused head (Gemma 2's
 * final_logit_softcapping). c must be finite and > 0 as an f32 (RangeError otherwise). Relative
 * accuracy near 0 (c tanh(x / c) ~ x); +-Infinity -> +-c; NaN stays NaN.
 */
export function softcapInPlace(x: Tensor<'f32'>, c: number): void {
  const be = expectTensor(x, 'x');
  expectArg(be, x, 'x', ['f32']);
  checkFinite(c, 'softcap');
  const c32 = Math.fround(c);
  if (!(c32 > 0 && Number.isFinite(c32))) throw new RangeError(`softcap must be > 0 and finite as an f32, got ${c}`);
  be.softcapInPlace(x, c);
}

/** acc += alpha * x (same shapes): sums kept on the device and read once per logging interval. */
export function accumulate(acc: Tensor<'f32'>, x: Tensor<'f32'>, alpha: number): void {
  const be = expectTensor(acc, 'acc');
  expectArg(be, acc, 'acc', ['f32']);
  expectArg(be, x, 'x', ['f32'], acc.shape);
  checkFinite(alpha, 'alpha');
  be.accumulate(acc, x, alpha);
}
