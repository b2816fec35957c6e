// bf16 compute on a backend without a kernel for it: each operand rounded to bf16 (the cast op's
// rounding; a bf16 tensor already is), then the backend's f32 kernel on those values (an f32 operand
// as an f32 tensor of bf16 values, a weight as a bf16 tensor). The products are the same as a bf16
// kernel's (exact in f32); their summation order is the f32 kernel's (docs/ops.md, "bf16 compute").
import type { AttentionOpts, Backend, MatmulOpts } from './backend.js';
import type { Tensor } from '../tensor/tensor.js';

/** a f32 -> a new f32 tensor holding a's values rounded to bf16. */
export function roundedToBf16(be: Pick<Backend, 'empty' | 'cast' | 'free'>, a: Tensor<'f32'>): Tensor<'f32'> {
  const a16 = be.empty('bf16', a.shape);
  be.cast(a, a16);
  const out = be.empty('f32', a.shape);
  be.cast(a16, out);
  be.free(a16);
  return out;
}

type CastBackend = Pick<Backend, 'empty' | 'cast' | 'free'>;

/** a (f32 or bf16) -> a new f32 tensor of its bf16 values: rounded (f32) or widened (bf16: exact). */
export function bf16Values(be: CastBackend, a: Tensor): Tensor<'f32'> {
  if (a.dtype === 'f32') return roundedToBf16(be, a as Tensor<'f32'>);
  const out = be.empty('f32', a.shape);
  be.cast(a, out);
  return out;
}

/** b as a bf16 tensor: b itself when it is bf16, else a new one of b rounded (the caller frees it). */
export function asBf16(be: CastBackend, b: Tensor): Tensor {
  if (b.dtype === 'bf16') return b;
  const out = be.empty('bf16', b.shape);
  be.cast(b, out);
  return out;
}

/** t (f32) <- bf16(t), in place (through a bf16 temporary). */
export function roundInPlace(be: CastBackend, t: Tensor<'f32'>): void {
  const t16 = be.empty('bf16', t.shape);
  be.cast(t, t16);
  be.cast(t16, t);
  be.free(t16);
}

/**
 * matmul with computeDtype 'bf16' on a backend without that kernel: a as f32 bf16 values, b as a bf16
 * tensor, then its f32 matmul (the linear layer form row-invariant, as a bf16 kernel's rows are).
 */
export function matmulOnRounded(be: CastBackend & Pick<Backend, 'matmul'>, a: Tensor, b: Tensor, opts: MatmulOpts): Tensor<'f32'> {
  const ar = bf16Values(be, a);
  const br = asBf16(be, b);
  const linear = !opts.transA && !!opts.transB;
  const y = be.matmul(ar, br, { ...opts, computeDtype: 'f32', rowInvariant: linear || !!opts.rowInvariant });
  be.free(ar);
  if (br !== b) be.free(br);
  return y;
}

type AttnBackend = Pick<Backend, 'empty' | 'cast' | 'free' | 'attention' | 'attentionBackward'>;

/** bf16 attention on a backend without a bf16 kernel: q, k, v rounded to bf16, then its f32 kernel. */
export function attentionOnRounded(
  be: AttnBackend,
  ...[q, k, v, keyMask, opts = {}]: Parameters<Backend['attention']>
): ReturnType<Backend['attention']> {
  const r = [q, k, v].map((t) => roundedToBf16(be, t));
  const res = be.attention(r[0], r[1], r[2], keyMask, f32Opts(opts));
  r.forEach((t) => be.free(t));
  return res;
}

/** The backward of attentionOnRounded: q, k, v and dout rounded to bf16, then the f32 backward. */
export function attentionBackwardOnRounded(
  be: AttnBackend,
  ...[q, k, v, keyMask, out, lse, dout, opts = {}]: Parameters<Backend['attentionBackward']>
): ReturnType<Backend['attentionBackward']> {
  const r = [q, k, v, dout].map((t) => roundedToBf16(be, t));
  const res = be.attentionBackward(r[0], r[1], r[2], keyMask, out, lse, r[3], f32Opts(opts));
  r.forEach((t) => be.free(t));
  return res;
}

function f32Opts(opts: AttentionOpts): AttentionOpts {
  return { ...opts, computeDtype: 'f32' };
}
