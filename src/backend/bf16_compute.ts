// bf16 compute on a backend without a kernel for it: a rounded to bf16 (the cast op's rounding) and
// widened back, then the backend's f32 matmul on those values with the bf16 weight. The products are
// the same as a bf16 kernel's (exact in f32); their summation order is the f32 kernel's
// (docs/ops.md, "bf16 compute").
import type { AttentionOpts, Backend } from './backend.js';
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
