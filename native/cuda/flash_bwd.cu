// Flash attention BACKWARD on tensor cores (AttentionOpts.computeDtype 'bf16'; docs/cuda.md "Tensor-core
// attention"). FlashAttention-2's recompute from the forward's lse, without float atomics: q, k, v and
// dout are rounded to bf16 (round to nearest even) as they are staged into shared memory; S = Q K^T and
// dP = dO V^T run on WMMA (bf16 products, f32 sums); P = exp(S' - lse) (S' scaled, soft-capped, masked)
// and dS = P (dP - D) (* 1 - tanh^2 with a soft-cap) in f32 by the lanes, then P and dS are rounded to
// bf16 for the products dQ = dS K, dK = dS^T Q, dV = P^T dO (WMMA, f32 accumulators in registers).
// Two kernels, each in a fixed order (deterministic run to run):
// - dq: a block of 4 warps takes 64 queries of one (sequence, head), each warp 16 rows; it first writes
//   D_i = round(dout_i) . out_i (f32) for the dk/dv kernel, then walks the key tiles (kKT keys) that a
//   query of the block sees (causal, window, spans: span_next), skipping per warp the tiles none of its
//   rows sees;
// - dk/dv: a block takes 64 keys of one (sequence, kv head), each warp 16 keys, and walks the query
//   heads of its group, then the query tiles that see its keys (attention_span_bounds_kernel's bounds with
//   spans, the window's end without; per warp, only tiles with a query that sees one of its keys), in
//   increasing order.
// Row-wise values never touch an accumulator (WMMA's fragment layouts are opaque): S and dP go through
// shared memory (f32, 16 columns at a time), the lanes form P and dS there. A block covers at most kNF * 16 output dims (its
// register accumulators): head dims over 128 take two column blocks, each recomputing S and dP.
// Masks as the scalar kernels (attention.cu): keyMask, causal, sliding window, soft-cap, spans (an
// invalid span: a NaN dq row, kErrAttentionSpans; such a query adds nothing to dk, dv); a query with no
// visible key gets dq = 0. Packing bit-identity is not kept (the key tiles are aligned to 0, not to lo).
#include <cmath>
#include <stdexcept>
#include <string>

#include "attention_spans.cuh"
#include "cuda_common.cuh"
#include "model_kernels.h"
#include "runtime.h"
#include "tc.cuh"

namespace spinlm::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16 * kWarps;  // queries of a dq block, keys of a dk/dv block
constexpr int kNF = 8;              // 16-dim output fragments per warp: 128 dims per block
constexpr int kPadH = 8;            // bf16 row padding (16 bytes) against bank conflicts
constexpr int kLdS = 16 + 4;        // f32 rows of the S / dP chunks (16 columns, padded)

// Head dims over 128 take key / query tiles of 32 (shared memory); else 64.
inline int tile_of_hd(int64_t hd) { return hd > 128 ? 32 : 64; }
SPINLM_HD int col_blocks(int64_t hd) { return static_cast<int>((hd + 16 * kNF - 1) / (16 * kNF)); }

// rows [t0, t0 + rows) of head `head` of x [B, L, heads, hd] (sequence bb) into dst (rows of ldh
// bf16, rounded to nearest even), zeros past l. Four values per thread and step, one 16-byte load: hd
// is a multiple of 16 and tensors start 256-byte aligned (allocations, and views: VIEW_ALIGNMENT).
template <class G, class S>
__device__ inline void stage_bf16(G x, int64_t bb, int64_t l, int64_t t0, int rows, int64_t heads, int64_t head, int64_t hd, S dst,
                                  int ldh) {
  const int h4 = static_cast<int>(hd / 4);
  for (int e = threadIdx.x; e < rows * h4; e += kThreads) {
    const int i = e / h4, d = (e - i * h4) * 4;
    float4 f{0.0f, 0.0f, 0.0f, 0.0f};
    if (t0 + i < l) f = ld_vec<float4>(x + ((bb * l + t0 + i) * heads + head) * hd + d);
    dst[i * ldh + d] = f32_to_bf16(f.x);
    dst[i * ldh + d + 1] = f32_to_bf16(f.y);
    dst[i * ldh + d + 2] = f32_to_bf16(f.z);
    dst[i * ldh + d + 3] = f32_to_bf16(f.w);
  }
}

// P' = exp(s' - lse) and dS = P' (dp - dd) (* 1 - t^2 with a soft-cap) for a visible score s = q . k.
__device__ inline void p_ds(float s, float dp, float lq, float dd, float scale, float softcap, float& p, float& ds) {
  s *= scale;
  float t = 0.0f;
  if (softcap > 0.0f) {
    t = tanhf(s / softcap);
    s = softcap * t;
  }
  p = expf(s - lq);
  ds = p * (dp - dd);
  if (softcap > 0.0f) ds *= 1.0f - t * t;
}

// Shared memory (bf16 units): dq: Q, dO [64][ldh], K, V [kt][ldh], S, dP f32 [64][20] (each warp's 16
// rows x one 16-key chunk at a time), dS [64][kt + 8], lse, D f32 [64], key ok f32 [kt]. dk/dv: K, V
// [64][ldh], Q, dO [kt][ldh], S^T, dP^T f32 [64][20], P^T, dS^T [64][kt + 8], lse, D f32 [kt], key ok
// f32 [64]. Every WMMA array starts 32-byte aligned.
inline size_t dq_smem(int64_t hd, int kt) {
  const int64_t ldh = hd + kPadH;
  return static_cast<size_t>(2 * kRows * ldh + 2 * kt * ldh + 4 * kRows * kLdS + kRows * (kt + kPadH) + 4 * kRows + 2 * kt) * 2;
}
inline size_t dkv_smem(int64_t hd, int kt) {
  const int64_t ldh = hd + kPadH;
  return static_cast<size_t>(2 * kRows * ldh + 2 * kt * ldh + 4 * kRows * kLdS + 2 * kRows * (kt + kPadH) + 4 * kt + 2 * kRows) * 2;
}

// The least key >= from that a query of the block (queries q0 + r, spans in sp) sees by position.
template <class S, class N>
__device__ inline int64_t block_next(S& sp, N& nx, int64_t q0, int64_t from, int64_t window) {
  __syncthreads();  // the previous tile and nx are consumed
  if (threadIdx.x < kRows) nx[threadIdx.x] = span_next(span_of(sp, threadIdx.x), q0 + threadIdx.x, from, window);
  __syncthreads();
  int64_t m = kNoKey;
  for (int r = 0; r < kRows; ++r) m = imin64(m, nx[r]);
  return m;
}

// Accumulator fragment f of each warp (16 rows from row r0 of the block's, dims c0 + 16 f) times `mul`
// to rows g0 + r of y [B, L, heads, hd] (sequence bb, head `head`), rows < l; a row whose `bad` is set
// gets NaN. `st`: the warp's f32 staging rows (16 x ld).
template <class ST, class Y, class B>
__device__ __forceinline__ void store_rows(tc::FragC* acc, int nf, float mul, ST st, int ld, Y y, int64_t bb, int64_t l, int64_t g0, int64_t heads,
                                  int64_t head, int64_t hd, int c0, B bad) {
  const int lane = threadIdx.x & 31;
  for (int f = 0; f < kNF; ++f) {
    if (f >= nf) break;
    for (int i = 0; i < acc[f].num_elements; ++i) acc[f].x[i] *= mul;
    tc::store(st, acc[f], ld, true);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int r = e >> 4, c = e & 15;
      if (g0 + r < l) y[((bb * l + g0 + r) * heads + head) * hd + c0 + 16 * f + c] = bad(r) ? __builtin_nanf("") : st[r * ld + c];
    }
    __syncwarp();
  }
}

// One warp's two products for its 16 rows and 16 columns, summed over hd and stored as f32 for the
// lanes' element-wise pass: A1 B1^T into sf (S, or S^T) and A2 B2^T into dpf (dP, or dP^T). The tiles are
// rows of ld bf16 in shared memory; B^T is read as a column-major B fragment.
template <class H, class F>
__device__ __forceinline__ void score_pair(H a1, H b1, H a2, H b2, int64_t hd, int ld, F sf, F dpf, int lds) {
  tc::FragC s, p;
  tc::fill(s, 0.0f);
  tc::fill(p, 0.0f);
  for (int kk = 0; kk < hd; kk += 16) {
    tc::FragA a;
    tc::FragBT bt;
    tc::load(a, a1 + kk, ld);
    tc::load(bt, b1 + kk, ld);
    tc::mma(s, a, bt, s);
    tc::load(a, a2 + kk, ld);
    tc::load(bt, b2 + kk, ld);
    tc::mma(p, a, bt, p);
  }
  tc::store(sf, s, lds, true);
  tc::store(dpf, p, lds, true);
}

template <int kKT>
__global__ void __launch_bounds__(kThreads) flash_dq_kernel(SPIN_GP(const float) q, SPIN_GP(const float) k, SPIN_GP(const float) v,
                                                            SPIN_GP(const int32_t) key_mask, SPIN_GP(const int32_t) spans,
                                                            SPIN_GP(const float) out, SPIN_GP(const float) lse, SPIN_GP(const float) dout,
                                                            int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window,
                                                            float softcap, SPIN_GP(float) dq, SPIN_GP(float) dsum, SPIN_GP(uint32_t) err) {
  SPIN_DYN_SHARED(uint16_t, sm);
  SPIN_SHARED(int64_t, sp, 3 * kRows);  // the queries' spans (kNoKey: past l or invalid)
  SPIN_SHARED(int64_t, nx, kRows);
  constexpr int lds = kLdS, ldp = kKT + kPadH;
  const int ldh = static_cast<int>(hd) + kPadH;
  auto qs = sm;
  auto dos = qs + kRows * ldh;
  auto ks = dos + kRows * ldh;
  auto vs = ks + kKT * ldh;
  auto sf = SPIN_CAST(float, vs + kKT * ldh);
  auto dpf = sf + kRows * lds;
  auto dss = SPIN_CAST(uint16_t, dpf + kRows * lds);
  auto lq = SPIN_CAST(float, dss + kRows * ldp);
  auto dd = lq + kRows;
  auto kok = dd + kRows;
  const int ncol = col_blocks(hd);
  const int cb = static_cast<int>(blockIdx.x % ncol);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x / ncol) * kRows, h = blockIdx.y, bb = blockIdx.z;
  const int c0 = cb * 16 * kNF, nf = static_cast<int>((hd - c0) / 16);
  const int64_t kvh = h / (nh / nkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r0 = 16 * warp;
  stage_bf16(q, bb, l, q0, kRows, nh, h, hd, qs, ldh);
  stage_bf16(dout, bb, l, q0, kRows, nh, h, hd, dos, ldh);
  if (threadIdx.x < kRows)
    span_put(sp, threadIdx.x, block_span(spans, bb, l, q0 + threadIdx.x, h == 0 && cb == 0 ? err : nullptr));
  for (int r = warp; r < kRows; r += kWarps) {  // D_i = round(dout_i) . out_i, f32, lanes then a fixed tree
    const int64_t qi = q0 + r;
    float part = 0.0f;
    if (qi < l)
      for (int64_t d = lane; d < hd; d += 32) {
        const int64_t at = ((bb * l + qi) * nh + h) * hd + d;
        part += bf16_to_f32(f32_to_bf16(dout[at])) * out[at];
      }
    const float s = warp_sum(part);
    if (lane == 0) {
      dd[r] = s;
      lq[r] = qi < l ? lse[(bb * nh + h) * l + qi] : -INFINITY;
      if (qi < l && cb == 0) dsum[(bb * nh + h) * l + qi] = s;
    }
  }
  tc::FragC acc[kNF];
  for (int f = 0; f < kNF; ++f) tc::fill(acc[f], 0.0f);
  for (int64_t j = block_next(sp, nx, q0, 0, window); j != kNoKey;) {
    const int64_t k0 = j / kKT * kKT;
    stage_bf16(k, bb, l, k0, kKT, nkv, kvh, hd, ks, ldh);
    stage_bf16(v, bb, l, k0, kKT, nkv, kvh, hd, vs, ldh);
    if (threadIdx.x < kKT) kok[threadIdx.x] = k0 + threadIdx.x < l && key_mask[bb * l + k0 + threadIdx.x] != 0 ? 1.0f : 0.0f;
    __syncthreads();
    bool hit = false;  // a row of this warp sees a key of the tile
    if (lane < 16) hit = span_next(span_of(sp, r0 + lane), q0 + r0 + lane, k0, window) < k0 + kKT;
    if (__any_sync(kFull, hit)) {
      for (int n = 0; n < kKT / 16; ++n) {  // S = Q K^T, dP = dO V^T: the warp's 16 rows, 16 keys at a time
        score_pair(qs + r0 * ldh, ks + n * 16 * ldh, dos + r0 * ldh, vs + n * 16 * ldh, hd, ldh, sf + r0 * lds, dpf + r0 * lds, lds);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int row = r0 + (e >> 4), cc = e & 15, c = n * 16 + cc;
          float pr = 0.0f, ds = 0.0f;
          if (kok[c] != 0.0f && lq[row] != -INFINITY && span_sees(span_of(sp, row), q0 + row, k0 + c, window))
            p_ds(sf[row * lds + cc], dpf[row * lds + cc], lq[row], dd[row], scale, softcap, pr, ds);
          dss[row * ldp + c] = f32_to_bf16(ds);
        }
        __syncwarp();  // the chunk is read before the next one is stored; dS is complete for the loads below
      }
      for (int kk = 0; kk < kKT; kk += 16) {  // dQ += dS K
        tc::FragA a;
        tc::load(a, dss + r0 * ldp + kk, ldp);
        for (int f = 0; f < kNF; ++f) {
          if (f >= nf) break;
          tc::FragB b;
          tc::load(b, ks + kk * ldh + c0 + 16 * f, ldh);
          tc::mma(acc[f], a, b, acc[f]);
        }
      }
    }
    j = block_next(sp, nx, q0, k0 + kKT, window);
  }
  store_rows(acc, nf, scale, sf + r0 * lds, lds, dq, bb, l, q0 + r0, nh, h, hd, c0,
             [&](int r) { return sp[3 * (r0 + r)] == kNoKey; });
}

template <int kKT>
__global__ void __launch_bounds__(kThreads) flash_dkv_kernel(SPIN_GP(const float) q, SPIN_GP(const float) k, SPIN_GP(const float) v,
                                                             SPIN_GP(const int32_t) key_mask, SPIN_GP(const int32_t) spans,
                                                             SPIN_GP(const int32_t) tfirst, SPIN_GP(const int32_t) tafter, int64_t nt,
                                                             SPIN_GP(const float) lse, SPIN_GP(const float) dsum, SPIN_GP(const float) dout,
                                                             int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window,
                                                             float softcap, SPIN_GP(float) dk, SPIN_GP(float) dv) {
  SPIN_DYN_SHARED(uint16_t, sm);
  SPIN_SHARED(int64_t, tsp, 3 * kKT);  // the query tile's spans
  constexpr int lds = kLdS, ldp = kKT + kPadH;
  const int ldh = static_cast<int>(hd) + kPadH;
  auto ks = sm;
  auto vs = ks + kRows * ldh;
  auto qs = vs + kRows * ldh;
  auto dos = qs + kKT * ldh;
  auto sf = SPIN_CAST(float, dos + kKT * ldh);
  auto dpf = sf + kRows * lds;
  auto ps = SPIN_CAST(uint16_t, dpf + kRows * lds);
  auto dss = ps + kRows * ldp;
  auto lq = SPIN_CAST(float, dss + kRows * ldp);
  auto dd = lq + kKT;
  auto kok = dd + kKT;
  const int ncol = col_blocks(hd);
  const int cb = static_cast<int>(blockIdx.x % ncol);
  const int64_t k0 = static_cast<int64_t>(blockIdx.x / ncol) * kRows, kvh = blockIdx.y, bb = blockIdx.z;
  const int c0 = cb * 16 * kNF, nf = static_cast<int>((hd - c0) / 16);
  const int64_t group = nh / nkv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r0 = 16 * warp;
  stage_bf16(k, bb, l, k0, kRows, nkv, kvh, hd, ks, ldh);
  stage_bf16(v, bb, l, k0, kRows, nkv, kvh, hd, vs, ldh);
  if (threadIdx.x < kRows) kok[threadIdx.x] = k0 + threadIdx.x < l && key_mask[bb * l + k0 + threadIdx.x] != 0 ? 1.0f : 0.0f;
  tc::FragC gk[kNF], gv[kNF];
  for (int f = 0; f < kNF; ++f) {
    tc::fill(gk[f], 0.0f);
    tc::fill(gv[f], 0.0f);
  }
  // without spans, queries from k0 + kRows - 1 + window on see none of the block's keys
  const int64_t qend = !spans && window > 0 && k0 + kRows - 1 + window < l ? k0 + kRows - 1 + window : l;
  const int64_t klast = imin64(k0 + kRows, l) - 1;
  const int64_t kw0 = k0 + r0, kw1 = imin64(kw0 + 15, l - 1);  // the warp's keys
  for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
    for (int64_t t0 = k0 / kKT * kKT; t0 < qend; t0 += kKT) {
      if (spans) {  // uniform across the block; the bounds are of the 64-query tile holding t0
        if (tafter[bb * nt + t0 / kRows] > klast) break;
        if (tfirst[bb * nt + t0 / kRows] > klast) continue;
      }
      __syncthreads();  // the previous tile is consumed
      if (threadIdx.x < kKT) {
        const int64_t qi = t0 + threadIdx.x;
        span_put(tsp, threadIdx.x, block_span(spans, bb, l, qi, static_cast<uint32_t*>(nullptr)));
        lq[threadIdx.x] = qi < l ? lse[(bb * nh + h) * l + qi] : -INFINITY;
        dd[threadIdx.x] = qi < l ? dsum[(bb * nh + h) * l + qi] : 0.0f;
      }
      stage_bf16(q, bb, l, t0, kKT, nh, h, hd, qs, ldh);
      stage_bf16(dout, bb, l, t0, kKT, nh, h, hd, dos, ldh);
      __syncthreads();
      bool hit = false;  // a query of the tile sees a key of this warp
      for (int t = lane; t < kKT; t += 32) hit = hit || (kw0 < l && span_next(span_of(tsp, t), t0 + t, kw0, window) <= kw1);
      if (!__any_sync(kFull, hit)) continue;
      for (int n = 0; n < kKT / 16; ++n) {  // S^T = K Q^T, dP^T = V dO^T: the warp's 16 keys, 16 queries at a time
        score_pair(ks + r0 * ldh, qs + n * 16 * ldh, vs + r0 * ldh, dos + n * 16 * ldh, hd, ldh, sf + r0 * lds, dpf + r0 * lds, lds);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int row = r0 + (e >> 4), cc = e & 15, c = n * 16 + cc;  // key k0 + row, query t0 + c
          float pr = 0.0f, ds = 0.0f;
          if (kok[row] != 0.0f && lq[c] != -INFINITY && span_sees(span_of(tsp, c), t0 + c, k0 + row, window))
            p_ds(sf[row * lds + cc], dpf[row * lds + cc], lq[c], dd[c], scale, softcap, pr, ds);
          ps[row * ldp + c] = f32_to_bf16(pr);
          dss[row * ldp + c] = f32_to_bf16(ds);
        }
        __syncwarp();  // the chunk is read before the next one is stored; P, dS complete for the loads below
      }
      for (int kk = 0; kk < kKT; kk += 16) {  // dV += P^T dO, dK += dS^T Q
        tc::FragA ap, ad;
        tc::load(ap, ps + r0 * ldp + kk, ldp);
        tc::load(ad, dss + r0 * ldp + kk, ldp);
        for (int f = 0; f < kNF; ++f) {
          if (f >= nf) break;
          tc::FragB b;
          tc::load(b, dos + kk * ldh + c0 + 16 * f, ldh);
          tc::mma(gv[f], ap, b, gv[f]);
          tc::load(b, qs + kk * ldh + c0 + 16 * f, ldh);
          tc::mma(gk[f], ad, b, gk[f]);
        }
      }
    }
  }
  const auto none = [](int) { return false; };
  store_rows(gk, nf, scale, sf + r0 * lds, lds, dk, bb, l, kw0, nkv, kvh, hd, c0, none);
  store_rows(gv, nf, 1.0f, sf + r0 * lds, lds, dv, bb, l, kw0, nkv, kvh, hd, c0, none);
}

unsigned tiles(int64_t n, int64_t t) { return static_cast<unsigned>((n + t - 1) / t); }

// Past the default 48 KB a kernel must opt in; its static shared arrays (the spans', 2 KB) count too.
void allow_smem(const void* kernel, size_t bytes) {
  if (bytes + 2048 > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), "flash attention shared memory");
}

template <int kKT>
void launch(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, const float* out,
            const float* lse, const float* dout, int64_t b, int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window,
            float softcap, float* dq, float* dk, float* dv) {
  // scratch: D [b, nh, l] f32, then with spans the bounds first, after [b, nt] i32 of the 64-query tiles
  // (for tiles of 32 too: conservative, and one instantiation of the bounds kernel per tile size in the
  // addon: the emulator build's linker rejects a kernel template instantiated in two files)
  const int64_t nt = spans ? (l + kRows - 1) / kRows : 0;
  float* dsum = static_cast<float*>(scratch(static_cast<size_t>(b * nh * l + 2 * b * nt) * 4, "attentionBackward"));
  int32_t* tfirst = spans ? reinterpret_cast<int32_t*>(dsum + b * nh * l) : nullptr;
  int32_t* tafter = spans ? tfirst + b * nt : nullptr;
  if (spans)
    SPIN_LAUNCH(attention_span_bounds_kernel<kRows>, dim3(static_cast<unsigned>(b)), dim3(kSpanBoundsThreads), 0, stream(), spans, l,
                window, nt, tfirst, tafter);
  const size_t s1 = dq_smem(hd, kKT), s2 = dkv_smem(hd, kKT);
  allow_smem(reinterpret_cast<const void*>(&flash_dq_kernel<kKT>), s1);
  allow_smem(reinterpret_cast<const void*>(&flash_dkv_kernel<kKT>), s2);
  const unsigned ncol = static_cast<unsigned>(col_blocks(hd));
  SPIN_LAUNCH(flash_dq_kernel<kKT>, dim3(tiles(l, kRows) * ncol, static_cast<unsigned>(nh), static_cast<unsigned>(b)), dim3(kThreads), s1,
              stream(), q, k, v, key_mask, spans, out, lse, dout, l, nh, nkv, hd, scale, window, softcap, dq, dsum, error_word());
  SPIN_LAUNCH(flash_dkv_kernel<kKT>, dim3(tiles(l, kRows) * ncol, static_cast<unsigned>(nkv), static_cast<unsigned>(b)), dim3(kThreads),
              s2, stream(), q, k, v, key_mask, spans, static_cast<const int32_t*>(tfirst), static_cast<const int32_t*>(tafter), nt, lse,
              static_cast<const float*>(dsum), dout, l, nh, nkv, hd, scale, window, softcap, dk, dv);
}

}  // namespace

void flash_attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans,
                              const float* out, const float* lse, const float* dout, int64_t b, int64_t l, int64_t nh, int64_t nkv,
                              int64_t hd, float scale, int64_t window, float softcap, float* dq, float* dk, float* dv) {
  if (hd % 16 != 0 || hd > kMaxHeadDim)
    throw std::invalid_argument("the tensor-core attention backward takes head dimensions that are multiples of 16 up to " +
                                std::to_string(kMaxHeadDim));
  if (b * l * nh == 0 || hd == 0) return;
  if (tile_of_hd(hd) == 32)
    launch<32>(q, k, v, key_mask, spans, out, lse, dout, b, l, nh, nkv, hd, scale, window, softcap, dq, dk, dv);
  else
    launch<64>(q, k, v, key_mask, spans, out, lse, dout, b, l, nh, nkv, hd, scale, window, softcap, dq, dk, dv);
  check_launch("attentionBackward");
}

}  // namespace spinlm::cuda
