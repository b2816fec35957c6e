// bf16 compute on a backend without a kernel for it: a rounded to bf16 (the cast op's rounding) and
// widened back, then the backend's f32 matmul on those values with the bf16 weight. The products are
// the same as a bf16 kernel's (exact in f32); their summation order is the f32 kernel's
// (docs/ops.md, "bf16 compute").
import type { Backend } from './backend.js';
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
