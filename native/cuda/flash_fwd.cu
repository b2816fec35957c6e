// Flash attention forward on tensor cores (WMMA bf16, f32 accumulators): AttentionOpts.computeDtype
// 'bf16' on CUDA, with every mask of the scalar kernel (attention.cu): causal, GQA, keyMask, the
// sliding window, the soft-cap and spans (attention_spans.cuh; invalid spans: a NaN row and
// kErrAttentionSpans). docs/cuda.md "Tensor-core attention".
//
// A block of 4 warps takes 64 queries of one (sequence, head), each warp 16 rows; key tiles of kBK
// keys stream through shared memory, q / k / v rounded to bf16 as they are staged. Two passes over
// the key tiles that any query of the block sees (the others are skipped, as in the scalar kernel):
//   1. S = Q K^T (WMMA) to shared memory; two lanes per row keep an online (max, sum) in f32 over
//      the row's visible keys (scaled, soft-capped) -> lse;
//   2. S again; P = exp(S' - lse) (already normalized), 0 where masked, rounded to bf16 into shared
//      memory; O += P V in accumulator fragments.
// With the final lse known in pass 2 no accumulator is ever rescaled (impossible in registers: WMMA's
// fragment layouts are opaque), at the price of computing S twice (6 instead of 4 units of FLOPs).
// A row that sees no key: out 0, lse -inf (as the scalar kernel). Deterministic: a fixed order of
// tiles, of lanes and of mma steps, no atomics on floats. Not packing-invariant bit for bit (the
// tiles are aligned to 0, not to each query's lo): CUDA training does not rely on it (docs/cuda.md).
#include <cmath>

#include "flash_common.cuh"
#include "model_kernels.h"

namespace spinlm::cuda {
namespace {

using flash::kBQ;
using flash::kPadBf16;
using flash::kPadF32;
using flash::kThreads;

// Dynamic shared bytes: q [64, ld], k and v [kBK, ld] bf16; S [64, kBK + 4] f32; P [64, kBK + 8] bf16.
size_t flash_fwd_smem(int64_t hd, int bk) {
  const int64_t ld = flash::ld_rows(hd);
  return static_cast<size_t>((kBQ + 2 * bk) * ld * 2 + kBQ * (bk + kPadF32) * 4 + kBQ * (bk + kPadBf16) * 2);
}
// Static shared bytes of the kernel (spans, next keys, hits, key flags), for the opt-in.
constexpr size_t kFwdStatic = (3 * kBQ + kBQ) * 8 + 2 * kBQ * 4 + 64 * 4;

// kMaxF: the most 16-dim fragments of a head (4, 8, 16: hd up to 64, 128, 256); nf = hd / 16 of them
// are used (guarded loops over kMaxF keep the accumulators in registers). kBK: keys per tile.
// k16, v16: k and v already rounded to bf16 (flash_attention casts them once: every query block of
// their heads reads them, so half the bytes of f32 where the kernel is bound by L2 traffic).
template <int kMaxF, int kBK>
__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(SPIN_GP(const float) q, SPIN_GP(const uint16_t) k16, SPIN_GP(const uint16_t) v16,
                                                             SPIN_GP(const int32_t) key_mask, SPIN_GP(const int32_t) spans, int64_t l,
                                                             int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window,
                                                             float softcap, SPIN_GP(float) out, SPIN_GP(float) lse,
                                                             SPIN_GP(uint32_t) err) {
  SPIN_DYN_SHARED(uint16_t, sm);
  SPIN_SHARED(int64_t, sp, 3 * kBQ);  // the queries' spans (kNoKey: past l or invalid)
  SPIN_SHARED(int64_t, nxt, kBQ);     // per query: the first key it sees past this tile (kNoKey: none)
  SPIN_SHARED(int32_t, hit, kBQ);     // per query: it sees a key of this tile
  SPIN_SHARED(int32_t, whole, kBQ);   // per query: it sees every key of this tile by position
  SPIN_SHARED(int32_t, kok, 64);      // per key of the tile: exists and keyMask lets it be seen
  const int64_t ld = flash::ld_rows(hd), lds = kBK + kPadF32, ldp = kBK + kPadBf16;
  const int nf = static_cast<int>(hd / 16);
  auto qs = sm;
  auto ks = qs + kBQ * ld;
  auto vs = ks + kBK * ld;
  auto ss = SPIN_CAST(float, vs + kBK * ld);
  auto ps = SPIN_CAST(uint16_t, ss + kBQ * lds);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBQ, h = blockIdx.y, bb = blockIdx.z;
  const int64_t kvh = h / (nh / nkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane >> 1, half = lane & 1;  // this lane's row of the warp's 16, and its half of the keys
  const int row = warp * 16 + r;
  const int64_t qi = q0 + row;
  auto sw = ss + warp * 16 * lds;  // the warp's score rows
  auto pw = ps + warp * 16 * ldp;  // the warp's probability rows
  flash::stage_rows_bf16(q, bb, l, nh, h, hd, q0, kBQ, qs, ld);
  if (threadIdx.x < kBQ) span_put(sp, threadIdx.x, block_span(spans, bb, l, q0 + threadIdx.x, h == 0 ? err : nullptr));
  __syncthreads();
  const Span my = span_of(sp, row);
  // The first key the block sees; every thread walks the same tiles (uniform).
  int64_t first = kNoKey;
  for (int i = 0; i < kBQ; ++i) first = imin64(first, span_next(span_of(sp, i), q0 + i, 0, window));

  // Walks the visible key tiles: load (k, and v when with_v), mark, then body(k0, all) for a warp
  // whose rows see a key of the tile; all: its 16 rows see every key of the tile (no mask checks).
  auto walk = [&](bool with_v, auto&& body) {
    for (int64_t j = first; j != kNoKey;) {
      const int64_t k0 = j / kBK * kBK;
      __syncthreads();  // the previous tile, nxt, hit and whole are consumed
      flash::stage_rows(k16, bb, l, nkv, kvh, hd, k0, kBK, ks, ld);
      if (with_v) flash::stage_rows(v16, bb, l, nkv, kvh, hd, k0, kBK, vs, ld);
      bool masked = false;  // a key of the tile missing (past l) or masked out
      if (threadIdx.x < kBK) {
        kok[threadIdx.x] = k0 + threadIdx.x < l && key_mask[bb * l + k0 + threadIdx.x] != 0 ? 1 : 0;
        masked = kok[threadIdx.x] == 0;
      }
      if (threadIdx.x < kBQ) {
        const int i = threadIdx.x;
        const Span s = span_of(sp, i);
        const int64_t last = k0 + kBK - 1;
        hit[i] = span_next(s, q0 + i, k0, window) < k0 + kBK ? 1 : 0;
        nxt[i] = span_next(s, q0 + i, k0 + kBK, window);
        // both ends seen and no hidden key between: the window's farthest key (k0) is seen too
        whole[i] = span_sees(s, q0 + i, k0, window) && span_sees(s, q0 + i, last, window) &&
                           (s.hlo == s.hhi || s.hhi <= k0 || s.hlo > last)
                       ? 1
                       : 0;
      }
      const bool tile_whole = !__syncthreads_or(masked);
      int any = 0, all = tile_whole ? 1 : 0;
      for (int i = 0; i < 16; ++i) {
        any |= hit[warp * 16 + i];
        all &= whole[warp * 16 + i];
      }
      if (any) body(k0, all != 0);  // uniform across the warp
      j = kNoKey;
      for (int i = 0; i < kBQ; ++i) j = imin64(j, nxt[i]);
    }
  };
  // The scaled, soft-capped score of this lane's row against key c of the tile; -inf where not seen.
  auto score = [&](int64_t k0, bool all, int c) {
    if (!all && (kok[c] == 0 || !span_sees(my, qi, k0 + c, window))) return -INFINITY;
    float s = sw[r * lds + c] * scale;
    if (softcap > 0.0f) s = flash::softcapped(s, softcap);
    return s;
  };

  // Pass 1: each row's (max, sum of exp) over its visible keys, lanes 2r and 2r + 1 taking the even
  // and odd keys of each tile; then merged in a fixed order (the even half first).
  LseAcc acc = lse_empty();
  walk(false, [&](int64_t k0, bool all) {
    flash::warp_scores<kBK>(qs + warp * 16 * ld, ld, ks, ld, nf, sw, lds);
    __syncwarp();
    for (int c = half; c < kBK; c += 2) lse_push(acc, score(k0, all, c));
  });
  const LseAcc other{__shfl_xor_sync(kFull, acc.max, 1), __shfl_xor_sync(kFull, acc.sum, 1)};
  acc = half == 0 ? lse_merge(acc, other) : lse_merge(other, acc);
  const float row_lse = acc.max == -INFINITY ? -INFINITY : lse_value(acc);

  // Pass 2: P = exp(S' - lse) in bf16, O += P V.
  tc::FragC o[kMaxF];
  SPIN_UNROLL
  for (int f = 0; f < kMaxF; ++f) tc::fill(o[f], 0.0f);
  walk(true, [&](int64_t k0, bool all) {
    flash::warp_scores<kBK>(qs + warp * 16 * ld, ld, ks, ld, nf, sw, lds);
    __syncwarp();
    for (int c = half; c < kBK; c += 2) {
      const float s = score(k0, all, c);
      const float p = s == -INFINITY || row_lse == -INFINITY ? 0.0f : expf(s - row_lse);
      pw[r * ldp + c] = f32_to_bf16(p);
    }
    __syncwarp();
    tc::FragA pa[kBK / 16];
    SPIN_UNROLL
    for (int kk = 0; kk < kBK / 16; ++kk) tc::load(pa[kk], pw + kk * 16, static_cast<unsigned>(ldp));
    SPIN_UNROLL
    for (int f = 0; f < kMaxF; ++f) {
      if (f >= nf) break;
      SPIN_UNROLL
      for (int kk = 0; kk < kBK / 16; ++kk) {
        tc::FragB vb;
        tc::load(vb, vs + kk * 16 * ld + f * 16, static_cast<unsigned>(ld));
        tc::mma(o[f], pa[kk], vb, o[f]);
      }
    }
  });

  // O through the warp's score rows (16 x 16 at a time) to global; lse by the even lanes.
  const bool bad = my.lo == kNoKey && qi < l;  // invalid spans: a NaN row
  __syncwarp();
  SPIN_UNROLL
  for (int f = 0; f < kMaxF; ++f) {
    if (f >= nf) break;
    tc::store(sw, o[f], static_cast<unsigned>(lds), true);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int rr = e >> 4, cc = e & 15;
      const int64_t qr = q0 + warp * 16 + rr;
      if (qr >= l) continue;
      const bool nan_row = sp[3 * (warp * 16 + rr)] == kNoKey;
      out[((bb * l + qr) * nh + h) * hd + f * 16 + cc] = nan_row ? __builtin_nanf("") : static_cast<float>(sw[rr * lds + cc]);
    }
    __syncwarp();
  }
  if (half == 0 && qi < l) lse[(bb * nh + h) * l + qi] = bad ? __builtin_nanf("") : row_lse;
}

template <int kMaxF, int kBK>
void launch_flash_fwd(const float* q, const uint16_t* k, const uint16_t* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
                      int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
                      float* lse) {
  const size_t smem = flash_fwd_smem(hd, kBK);
  auto kernel = &flash_fwd_kernel<kMaxF, kBK>;
  flash::allow_smem(reinterpret_cast<const void*>(kernel), smem, kFwdStatic, "attention shared memory");
  const dim3 grid(static_cast<unsigned>((l + kBQ - 1) / kBQ), static_cast<unsigned>(nh), static_cast<unsigned>(b));
  SPIN_LAUNCH(kernel, grid, dim3(kThreads), smem, stream(), q, k, v, key_mask, spans, l, nh, nkv, hd, scale, window, softcap, out,
              lse, error_word());
}

}  // namespace

bool flash_attention_takes(int64_t hd) { return flash::head_dim_ok(hd); }

// Key tiles of 64 up to hd 128 (79 KB of shared memory at hd 128), of 32 beyond (82 KB at hd 256:
// under the 99 KB an sm_86 / sm_89 block may have).
void flash_attention(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
                     int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
                     float* lse) {
  if (b * l * nh == 0) return;
  // k and v rounded to bf16 once, into scratch [2, B, L, nKV, hd]
  const int64_t kn = b * l * nkv * hd;
  uint16_t* k16 = static_cast<uint16_t*>(scratch(static_cast<size_t>(2 * kn) * 2, "attention"));
  uint16_t* v16 = k16 + kn;
  ::spinlm::cuda::cast_values(k, DType::kF32, k16, DType::kBF16, kn);
  ::spinlm::cuda::cast_values(v, DType::kF32, v16, DType::kBF16, kn);
  if (hd <= 64)
    launch_flash_fwd<4, 64>(q, k16, v16, key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap, out, lse);
  else if (hd <= 128)
    launch_flash_fwd<8, 64>(q, k16, v16, key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap, out, lse);
  else
    launch_flash_fwd<16, 32>(q, k16, v16, key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap, out, lse);
  check_launch("attention");
}

}  // namespace spinlm::cuda
