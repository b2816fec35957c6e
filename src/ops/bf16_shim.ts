// TEMPORARY (issue 28, until the lt-gemm branch lands): mixed-precision training needs computeDtype 'bf16' in
// every GEMM form — matmul with a bf16 or f32 `a`, an f32 or bf16 `b`, transA / transB — and in the fused
// head's backward. The backends take only the linear layer form with bf16 weights today, so the forms they
// lack run here: both operands rounded to bf16 (values held in f32: the rounding of the cast op, and
// widening is exact), then the f32 kernel, whose products of bf16 values are exact and summed in f32 —
// the arithmetic lt-gemm's kernels have, in another summation order. lt-gemm's version replaces this file.
import type { Backend, HeadOpts, MatmulOpts } from '../backend/backend.js';
import { roundedToBf16 } from '../backend/bf16_compute.js';
import type { Tensor } from '../tensor/tensor.js';

/** Whether matmul(a, b, opts) with computeDtype 'bf16' is a form the backends do not run themselves. */
export function matmulNeedsShim(a: Tensor, b: Tensor, opts: MatmulOpts): boolean {
  return opts.computeDtype === 'bf16' && (a.dtype === 'bf16' || b.dtype !== 'bf16' || !!opts.transA || !opts.transB);
}

/** t as f32 holding bf16 values: widened when bf16 (exact), rounded when f32; `owned` when a new tensor. */
function asRounded(be: Backend, t: Tensor): { r: Tensor<'f32'>; owned: boolean } {
  if (t.dtype === 'f32') return { r: roundedToBf16(be, t as Tensor<'f32'>), owned: true };
  const r = be.empty('f32', t.shape);
  be.cast(t, r);
  return { r, owned: true };
}

/** matmul with computeDtype 'bf16' on operands rounded to bf16, through the backend's f32 kernel. */
export function matmulOnRoundedOperands(be: Backend, a: Tensor, b: Tensor, opts: MatmulOpts): Tensor<'f32'> {
  const ra = asRounded(be, a);
  // a bf16 b is used as it is: the f32 kernels widen bf16 weights exactly
  const rb = b.dtype === 'bf16' ? { r: b, owned: false } : asRounded(be, b);
  try {
    return be.matmul(ra.r, rb.r, { ...opts, computeDtype: 'f32' });
  } finally {
    be.free(ra.r);
    if (rb.owned) be.free(rb.r);
  }
}

/** headLogprob with computeDtype 'bf16' and an f32 head: h and w rounded to bf16, then the f32 kernel. */
export function headLogprobOnRounded(
  be: Backend,
  h: Tensor<'f32'>,
  w: Tensor,
  targets: Tensor<'i32'>,
  opts: HeadOpts,
): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
  const rh = roundedToBf16(be, h);
  const rw = asRounded(be, w);
  try {
    return be.headLogprob(rh, rw.r, targets, { ...opts, computeDtype: 'f32' });
  } finally {
    be.free(rh);
    be.free(rw.r);
  }
}

/**
 * headLogprobBackward with computeDtype 'bf16', a panel of rows at a time: the logits of the rows (bf16
 * inputs, f32 sums), their gradient dZ = dlogp (onehot - p) in f32, dZ rounded to bf16 (autocast's bf16
 * grads), then dh = dZ w and dw += dZ^T h as bf16 GEMMs. Holds [rows, V] f32 logits per panel.
 */
export function headLogprobBackwardOnRounded(
  be: Backend,
  h: Tensor<'f32'>,
  w: Tensor,
  targets: Tensor<'i32'>,
  lse: Tensor<'f32'>,
  dlogp: Tensor<'f32'>,
  dh: Tensor<'f32'>,
  dw: Tensor<'f32'> | null,
  opts: HeadOpts,
): void {
  if (opts.softcap) throw new TypeError('headLogprobBackward: computeDtype bf16 with a soft-capped head (Gemma 2) is not implemented yet');
  const [n, hdim] = h.shape;
  const v = w.shape[0];
  // rows per panel: a multiple of 64 (views start at 256-byte multiples), ~16 MiB of logits
  const panel = 64 * Math.max(1, Math.floor(2 ** 22 / (v * 64)));
  for (let r0 = 0; r0 < n; r0 += panel) {
    const rows = Math.min(panel, n - r0);
    const hc = h.view(r0 * hdim, [rows, hdim]);
    const z = matmulOnRoundedOperands(be, hc, w, { transB: true, computeDtype: 'bf16' });
    be.logprobGatherBackward(z, targets.view(r0, [rows]), lse.view(r0, [rows]), dlogp.view(r0, [rows]), z);
    const dz = be.empty('bf16', [rows, v]);
    be.cast(z, dz);
    be.free(z);
    matmulOnRoundedOperands(be, dz, w, { computeDtype: 'bf16', out: dh.view(r0 * hdim, [rows, hdim]) });
    if (dw) matmulOnRoundedOperands(be, dz, hc, { transA: true, computeDtype: 'bf16', out: dw, accumulate: true });
    be.free(dz);
  }
}
