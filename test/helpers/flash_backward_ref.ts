// float64 references for the tensor-core attention backward (native/cuda/flash_bwd.cu, test/
// flash_attention_backward_cuda.test.ts), written from FlashAttention-2's backward equations on the
// inputs the kernel is given (q, k, v, dout already rounded to bf16; out and lse as stored):
//   D_i = dO_i . O_i, P_ij = exp(s'_ij - lse_i), dP_ij = dO_i . V_j, dS_ij = P_ij (dP_ij - D_i) c'_ij
//   dV_j = sum_i P_ij dO_i, dQ_i = scale sum_j dS_ij K_j, dK_j = scale sum_i dS_ij Q_i
// (s' the scaled, soft-capped score, c' = 1 - tanh^2 its derivative; only visible pairs). It returns the
// gradients with P and dS rounded to bf16 before their products (as a tensor-core kernel must), and per
// output element the sums of |terms| that bound the rounding error: a (|P| |dO| for dv, scale |dS| |K| or
// |Q| for dq, dk) and b (scale P (sum|dO V| + sum|dO O|) |K| or |Q|: the scale of dS before the cancellation
// in dP - D, which bounds dS's own f32 error).
import { bf16ToF32, f32ToBf16 } from '../../src/tensor/bf16.js';
import { type AttnShape, attnVisibleRef } from './model_ref.js';

export interface FlashBackwardRef {
  /** P and dS rounded to bf16 before their products. */
  rounded: { dq: Float64Array; dk: Float64Array; dv: Float64Array };
  a: { dq: Float64Array; dk: Float64Array; dv: Float64Array };
  b: { dq: Float64Array; dk: Float64Array; dv: Float64Array };
}

const bf16 = (x: number) => bf16ToF32(f32ToBf16(x));

export function flashBackwardRef(
  x: {
    q: ArrayLike<number>;
    k: ArrayLike<number>;
    v: ArrayLike<number>;
    dout: ArrayLike<number>;
    out: ArrayLike<number>;
    lse: ArrayLike<number>;
  },
  mask: ArrayLike<number>,
  s: AttnShape,
  scale: number,
  window = 0,
  softcap = 0,
  spans?: ArrayLike<number>,
): FlashBackwardRef {
  const { b, l, nh, nkv, hd } = s;
  const { q, k, v, dout, out, lse } = x;
  const z = (n: number) => ({ dq: new Float64Array(n * nh), dk: new Float64Array(n * nkv), dv: new Float64Array(n * nkv) });
  const rounded = z(b * l * hd),
    a = z(b * l * hd),
    bb = z(b * l * hd);
  for (let bi = 0; bi < b; bi++)
    for (let h = 0; h < nh; h++) {
      const kvh = Math.floor(h / (nh / nkv));
      const qi = (i: number) => ((bi * l + i) * nh + h) * hd;
      const kj = (j: number) => ((bi * l + j) * nkv + kvh) * hd;
      for (let i = 0; i < l; i++) {
        const r = bi * l + i;
        const li = lse[(bi * nh + h) * l + i];
        if (!Number.isFinite(li)) continue; // no visible key (or an invalid span: NaN)
        let d = 0,
          absD = 0;
        for (let c = 0; c < hd; c++) {
          d += dout[qi(i) + c] * out[qi(i) + c];
          absD += Math.abs(dout[qi(i) + c] * out[qi(i) + c]);
        }
        for (let j = 0; j <= i; j++) {
          if (!mask[bi * l + j] || !attnVisibleRef(spans, r, i, j, window)) continue;
          let sc = 0,
            dp = 0,
            absDp = 0;
          for (let c = 0; c < hd; c++) {
            sc += q[qi(i) + c] * k[kj(j) + c];
            dp += dout[qi(i) + c] * v[kj(j) + c];
            absDp += Math.abs(dout[qi(i) + c] * v[kj(j) + c]);
          }
          sc *= scale;
          let dcap = 1;
          if (softcap > 0) {
            const t = Math.tanh(sc / softcap);
            sc = softcap * t;
            dcap = 1 - t * t;
          }
          const p = Math.exp(sc - li);
          const ds = p * (dp - d) * dcap;
          const pb = bf16(p),
            dsb = bf16(ds);
          const wide = scale * p * (absDp + absD);
          for (let c = 0; c < hd; c++) {
            const o = dout[qi(i) + c],
              kv = k[kj(j) + c],
              qv = q[qi(i) + c];
            rounded.dv[kj(j) + c] += pb * o;
            a.dv[kj(j) + c] += p * Math.abs(o);
            rounded.dq[qi(i) + c] += scale * dsb * kv;
            a.dq[qi(i) + c] += scale * Math.abs(ds * kv);
            bb.dq[qi(i) + c] += wide * Math.abs(kv);
            rounded.dk[kj(j) + c] += scale * dsb * qv;
            a.dk[kj(j) + c] += scale * Math.abs(ds * qv);
            bb.dk[kj(j) + c] += wide * Math.abs(qv);
          }
        }
      }
    }
  return { rounded, a, b: bb };
}
