// Causal grouped-query attention, FlashAttention-style: no L x L scores in global memory.
// Forward: a block takes 16 queries of one (sequence, head); key tiles of 32 stream through shared
// memory; each warp owns 4 queries, lane j scores key j of the tile, the online softmax merges tiles
// with warp shuffles, and lane d owns output dims d, d + 32, ... Backward (deterministic, no atomics):
// one kernel recomputes scores per query tile for dq (and first D_i = dout_i . out_i); a second
// takes 16 keys of one kv head and walks the heads of its group and the query tiles in order for
// dk and dv. Decode: one block per (sequence, head), its 4 warps split the cached keys (split-K
// within the block) and merge their partial softmax states in a fixed order. A sliding window (> 0):
// query i sees key j only when i - j < window; key tiles wholly before a block's window (and, for dk/dv,
// query tiles wholly after it) are not visited. A soft-cap c > 0 (Gemma 2): each score s becomes
// c tanh(s / c) before the mask, and the backward's dS gets the factor 1 - tanh(s / c)^2 (the scores
// are recomputed and capped as the forward capped them); c = 0 leaves the arithmetic as it was.
// Spans (AttentionOpts.spans; attention_spans.cuh): a query's key tiles are aligned to its lo (without
// spans lo = 0: the tiles as before), so its out and lse do not depend on where it is packed; a block
// walks its queries by groups of one lo and each query merges only the tiles holding keys it sees. The
// dk/dv kernel visits only the query tiles that see its keys. An invalid span: a NaN row and
// kErrAttentionSpans in the error word.
#include <cmath>

#include "attention_spans.cuh"
#include "cuda_common.cuh"
#include "model_kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kBQ = 16;  // queries per forward / dq block
constexpr int kQW = kBQ / kWarps;  // queries per warp
constexpr int kBK = 32;  // keys per tile (one per lane)
constexpr int kKB = 16;  // keys per dk/dv block
constexpr int kKW = kKB / kWarps;
constexpr int kMaxD = kMaxHeadDim / 32;  // dims per lane

// The soft-capped score c tanh(s / c) (c > 0), its tanh in t for the backward's 1 - t^2.
__device__ inline float cap(float s, float c, float& t) {
  t = tanhf(s / c);
  return c * t;
}

// Loads the kBK keys and values of kv head kvh from key k0 on into shared memory (0 past l), and ok:
// 1.0f where the key exists and keyMask lets it be attended to.
template <class G, class M, class S>
__device__ inline void load_kv_tile(G k, G v, M key_mask, int64_t bb, int64_t l, int64_t nkv, int64_t kvh, int64_t hd, int64_t k0,
                                    S ks, S vs, S ok) {
  const int64_t hdp = hd + 1;
  for (int64_t e = threadIdx.x; e < kBK * hd; e += kThreads) {
    const int64_t j = e / hd, d = e - j * hd;
    const bool in = k0 + j < l;
    const int64_t src = ((bb * l + k0 + j) * nkv + kvh) * hd + d;
    ks[j * hdp + d] = in ? k[src] : 0.0f;
    vs[j * hdp + d] = in ? v[src] : 0.0f;
  }
  if (threadIdx.x < kBK) ok[threadIdx.x] = k0 + threadIdx.x < l && key_mask[bb * l + k0 + threadIdx.x] != 0 ? 1.0f : 0.0f;
}

// Shared-memory floats of each kernel (rows padded to hd + 1 against bank conflicts).
inline size_t fwd_smem(int64_t hd) { return static_cast<size_t>((kBQ + 2 * kBK) * (hd + 1) + kBK) * 4; }
inline size_t dq_smem(int64_t hd) { return static_cast<size_t>((2 * kBQ + 2 * kBK) * (hd + 1) + kBK) * 4; }
inline size_t dkv_smem(int64_t hd) { return static_cast<size_t>((2 * kKB + 2 * kBK) * (hd + 1) + 3 * kBK + kKB) * 4; }

__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(SPIN_GP(const float) q, SPIN_GP(const float) k, SPIN_GP(const float) v,
                                                                 SPIN_GP(const int32_t) key_mask, SPIN_GP(const int32_t) spans, int64_t l,
                                                                 int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window,
                                                                 float softcap, SPIN_GP(float) out, SPIN_GP(float) lse,
                                                                 SPIN_GP(uint32_t) err) {
  SPIN_DYN_SHARED(float, sm);
  SPIN_SHARED(int64_t, sp, 3 * kBQ);  // the queries' spans (kNoKey: past l or invalid)
  SPIN_SHARED(int64_t, nxt, kBQ);     // per query: the first key it sees past this tile (kNoKey: none, or another group)
  SPIN_SHARED(int32_t, hit, kBQ);     // per query: it sees a key of this tile
  const int64_t hdp = hd + 1;
  auto qs = sm;
  auto ks = sm + kBQ * hdp;
  auto vs = ks + kBK * hdp;
  auto ok = vs + kBK * hdp;  // 1.0f where the tile's key may be attended to
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBQ, h = blockIdx.y, bb = blockIdx.z;
  const int64_t kvh = h / (nh / nkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nd = static_cast<int>((hd + 31) / 32);
  for (int64_t e = threadIdx.x; e < kBQ * hd; e += kThreads) {
    const int64_t i = e / hd, d = e - i * hd;
    qs[i * hdp + d] = q0 + i < l ? q[((bb * l + q0 + i) * nh + h) * hd + d] : 0.0f;
  }
  if (threadIdx.x < kBQ) span_put(sp, threadIdx.x, block_span(spans, bb, l, q0 + threadIdx.x, h == 0 ? err : nullptr));
  float m[kQW], lsum[kQW], o[kQW][kMaxD];
  for (int a = 0; a < kQW; ++a) {
    m[a] = -INFINITY;
    lsum[a] = 0.0f;
    for (int c = 0; c < kMaxD; ++c) o[a][c] = 0.0f;
  }
  __syncthreads();
  // By groups of one lo; a group's key tiles are aligned to its lo, and a query merges only the tiles
  // holding keys it sees: its arithmetic depends on nothing else in the block (packing invariance).
  for (int64_t lo = next_group<kBQ>(sp, -1); lo != kNoKey; lo = next_group<kBQ>(sp, lo)) {
    for (int64_t j = group_next<kBQ>(sp, q0, lo, lo, window); j != kNoKey;) {
      const int64_t k0 = tile_of(lo, j, kBK);
      __syncthreads();  // the previous tile and nxt are consumed
      load_kv_tile(k, v, key_mask, bb, l, nkv, kvh, hd, k0, ks, vs, ok);
      if (threadIdx.x < kBQ) mark_tile(sp, threadIdx.x, q0, lo, k0, kBK, window, nxt, hit);
      __syncthreads();
      for (int a = 0; a < kQW; ++a) {
        const int row = warp * kQW + a;
        if (hit[row] == 0) continue;  // uniform across the warp
        const int64_t qi = q0 + row;
        const int64_t kj = k0 + lane;
        float s = -INFINITY;
        if (ok[lane] != 0.0f && span_sees(span_of(sp, row), qi, kj, window)) {
          float dot = 0.0f;
          for (int64_t d = 0; d < hd; ++d) dot += qs[row * hdp + d] * ks[lane * hdp + d];
          s = dot * scale;
          float t;
          if (softcap > 0.0f) s = cap(s, softcap, t);
        }
        const float mt = warp_max(s);
        const float mn = fmaxf(m[a], mt);
        if (mn == -INFINITY) continue;  // nothing attended yet (uniform across the warp)
        const float p = s == -INFINITY ? 0.0f : expf(s - mn);
        const float corr = m[a] == -INFINITY ? 0.0f : expf(m[a] - mn);
        lsum[a] = lsum[a] * corr + warp_sum(p);
        m[a] = mn;
        for (int c = 0; c < kMaxD; ++c) o[a][c] *= corr;
        for (int jj = 0; jj < kBK; ++jj) {
          const float pj = __shfl_sync(kFull, p, jj);
          if (pj == 0.0f) continue;  // a key it does not see: no 0 * v of a neighbour's value (uniform)
          for (int c = 0; c < nd; ++c) {
            const int64_t d = lane + 32 * c;
            if (d < hd) o[a][c] += pj * vs[jj * hdp + d];
          }
        }
      }
      j = kNoKey;
      for (int r = 0; r < kBQ; ++r) j = imin64(j, nxt[r]);
    }
  }
  for (int a = 0; a < kQW; ++a) {
    const int64_t qi = q0 + warp * kQW + a;
    if (qi >= l) continue;
    const bool bad = sp[3 * (warp * kQW + a)] == kNoKey;  // invalid spans: a NaN row
    const float inv = lsum[a] > 0.0f ? 1.0f / lsum[a] : 0.0f;
    for (int c = 0; c < nd; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < hd) out[((bb * l + qi) * nh + h) * hd + d] = bad ? __builtin_nanf("") : o[a][c] * inv;
    }
    if (lane == 0) lse[(bb * nh + h) * l + qi] = bad ? __builtin_nanf("") : lsum[a] > 0.0f ? m[a] + logf(lsum[a]) : -INFINITY;
  }
}

// dq for 16 queries of one (sequence, head); also writes D_i = dout_i . out_i for the dk/dv kernel. The
// key tiles go as the forward's (by groups of one lo, aligned to it, only those a query sees).
__global__ void __launch_bounds__(kThreads) attention_dq_kernel(
    SPIN_GP(const float) q, SPIN_GP(const float) k, SPIN_GP(const float) v, SPIN_GP(const int32_t) key_mask,
    SPIN_GP(const int32_t) spans, SPIN_GP(const float) out, SPIN_GP(const float) lse, SPIN_GP(const float) dout, int64_t l,
    int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, SPIN_GP(float) dq, SPIN_GP(float) dsum,
    SPIN_GP(uint32_t) err) {
  SPIN_DYN_SHARED(float, sm);
  SPIN_SHARED(int64_t, sp, 3 * kBQ);
  SPIN_SHARED(int64_t, nxt, kBQ);
  SPIN_SHARED(int32_t, hit, kBQ);
  const int64_t hdp = hd + 1;
  auto qs = sm;
  auto dos = qs + kBQ * hdp;
  auto ks = dos + kBQ * hdp;
  auto vs = ks + kBK * hdp;
  auto ok = vs + kBK * hdp;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBQ, h = blockIdx.y, bb = blockIdx.z;
  const int64_t kvh = h / (nh / nkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nd = static_cast<int>((hd + 31) / 32);
  for (int64_t e = threadIdx.x; e < kBQ * hd; e += kThreads) {
    const int64_t i = e / hd, d = e - i * hd;
    const bool in = q0 + i < l;
    const int64_t src = ((bb * l + q0 + i) * nh + h) * hd + d;
    qs[i * hdp + d] = in ? q[src] : 0.0f;
    dos[i * hdp + d] = in ? dout[src] : 0.0f;
  }
  if (threadIdx.x < kBQ) span_put(sp, threadIdx.x, block_span(spans, bb, l, q0 + threadIdx.x, h == 0 ? err : nullptr));
  float dd[kQW], lq[kQW], acc[kQW][kMaxD];
  for (int a = 0; a < kQW; ++a) {
    const int64_t qi = q0 + warp * kQW + a;
    float part = 0.0f;
    for (int c = 0; c < nd; ++c) {
      const int64_t d = lane + 32 * c;
      if (qi < l && d < hd) {
        const int64_t at = ((bb * l + qi) * nh + h) * hd + d;
        part += dout[at] * out[at];
      }
    }
    dd[a] = warp_sum(part);
    lq[a] = qi < l ? lse[(bb * nh + h) * l + qi] : -INFINITY;
    if (qi < l && lane == 0) dsum[(bb * nh + h) * l + qi] = dd[a];
    for (int c = 0; c < kMaxD; ++c) acc[a][c] = 0.0f;
  }
  __syncthreads();
  for (int64_t lo = next_group<kBQ>(sp, -1); lo != kNoKey; lo = next_group<kBQ>(sp, lo)) {
    for (int64_t j = group_next<kBQ>(sp, q0, lo, lo, window); j != kNoKey;) {
      const int64_t k0 = tile_of(lo, j, kBK);
      __syncthreads();
      load_kv_tile(k, v, key_mask, bb, l, nkv, kvh, hd, k0, ks, vs, ok);
      if (threadIdx.x < kBQ) mark_tile(sp, threadIdx.x, q0, lo, k0, kBK, window, nxt, hit);
      __syncthreads();
      for (int a = 0; a < kQW; ++a) {
        const int row = warp * kQW + a;
        if (hit[row] == 0) continue;  // uniform across the warp
        const int64_t qi = q0 + row, kj = k0 + lane;
        float ds = 0.0f;
        if (ok[lane] != 0.0f && span_sees(span_of(sp, row), qi, kj, window) && lq[a] != -INFINITY) {
          float s = 0.0f, dp = 0.0f;
          for (int64_t d = 0; d < hd; ++d) {
            s += qs[row * hdp + d] * ks[lane * hdp + d];
            dp += dos[row * hdp + d] * vs[lane * hdp + d];
          }
          if (softcap > 0.0f) {
            float t;
            const float p = expf(cap(s * scale, softcap, t) - lq[a]);
            ds = p * (dp - dd[a]) * (1.0f - t * t);
          } else {
            const float p = expf(s * scale - lq[a]);
            ds = p * (dp - dd[a]);
          }
        }
        for (int jj = 0; jj < kBK; ++jj) {
          const float dsj = __shfl_sync(kFull, ds, jj);
          for (int c = 0; c < nd; ++c) {
            const int64_t d = lane + 32 * c;
            if (d < hd) acc[a][c] += dsj * ks[jj * hdp + d];
          }
        }
      }
      j = kNoKey;
      for (int r = 0; r < kBQ; ++r) j = imin64(j, nxt[r]);
    }
  }
  for (int a = 0; a < kQW; ++a) {
    const int64_t qi = q0 + warp * kQW + a;
    if (qi >= l) continue;
    const bool bad = sp[3 * (warp * kQW + a)] == kNoKey;  // invalid spans: a NaN row
    for (int c = 0; c < nd; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < hd) dq[((bb * l + qi) * nh + h) * hd + d] = bad ? __builtin_nanf("") : acc[a][c] * scale;
    }
  }
}

// dk, dv for 16 keys of one (sequence, kv head): the heads of the group, then query tiles, in order.
// With spans, only the query tiles that see a key of the block: the walk stops at after[] and skips
// the tiles whose first[] is past the block (attention_span_bounds_kernel), then those whose queries'
// spans (checked here too: an invalid one sees nothing) see none of its keys.
__global__ void __launch_bounds__(kThreads) attention_dkv_kernel(
    SPIN_GP(const float) q, SPIN_GP(const float) k, SPIN_GP(const float) v, SPIN_GP(const int32_t) key_mask,
    SPIN_GP(const int32_t) spans, SPIN_GP(const int32_t) tfirst, SPIN_GP(const int32_t) tafter, int64_t nt,
    SPIN_GP(const float) lse, SPIN_GP(const float) dsum, SPIN_GP(const float) dout, int64_t l, int64_t nh, int64_t nkv,
    int64_t hd, float scale, int64_t window, float softcap, SPIN_GP(float) dk, SPIN_GP(float) dv) {
  SPIN_DYN_SHARED(float, sm);
  SPIN_SHARED(int64_t, tsp, 3 * kBK);  // the query tile's spans (with spans)
  const int64_t hdp = hd + 1;
  auto ks = sm;
  auto vs = ks + kKB * hdp;
  auto qs = vs + kKB * hdp;
  auto dos = qs + kBK * hdp;
  auto lqs = dos + kBK * hdp;
  auto dds = lqs + kBK;
  auto qok = dds + kBK;
  auto kok = qok + kBK;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kKB, kvh = blockIdx.y, bb = blockIdx.z;
  const int64_t group = nh / nkv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nd = static_cast<int>((hd + 31) / 32);
  for (int64_t e = threadIdx.x; e < kKB * hd; e += kThreads) {
    const int64_t j = e / hd, d = e - j * hd;
    const bool in = k0 + j < l;
    const int64_t src = ((bb * l + k0 + j) * nkv + kvh) * hd + d;
    ks[j * hdp + d] = in ? k[src] : 0.0f;
    vs[j * hdp + d] = in ? v[src] : 0.0f;
  }
  if (threadIdx.x < kKB) kok[threadIdx.x] = k0 + threadIdx.x < l && key_mask[bb * l + k0 + threadIdx.x] != 0 ? 1.0f : 0.0f;
  float gk[kKW][kMaxD], gv[kKW][kMaxD];
  for (int a = 0; a < kKW; ++a)
    for (int c = 0; c < kMaxD; ++c) gk[a][c] = gv[a][c] = 0.0f;
  // without spans, queries past k0 + kKB - 2 + window see none of the block's keys
  const int64_t qend = !spans && window > 0 && k0 + kKB - 1 + window < l ? k0 + kKB - 1 + window : l;
  const int64_t klast = imin64(k0 + kKB, l) - 1;
  for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
    for (int64_t t0 = (k0 / kBK) * kBK; t0 < qend; t0 += kBK) {
      if (spans) {  // uniform across the block
        if (tafter[bb * nt + t0 / kBK] > klast) break;
        if (tfirst[bb * nt + t0 / kBK] > klast) continue;
      }
      __syncthreads();
      if (spans) {
        bool sees = false;
        if (threadIdx.x < kBK) {
          const int64_t qi = t0 + threadIdx.x;
          const Span s = block_span(spans, bb, l, qi, static_cast<uint32_t*>(nullptr));
          span_put(tsp, threadIdx.x, s);
          sees = span_next(s, qi, k0, window) <= klast;
        }
        if (!__syncthreads_or(sees)) continue;  // no query of the tile sees a key of the block
      }
      for (int64_t e = threadIdx.x; e < kBK * hd; e += kThreads) {
        const int64_t i = e / hd, d = e - i * hd;
        const bool in = t0 + i < l;
        const int64_t src = ((bb * l + t0 + i) * nh + h) * hd + d;
        qs[i * hdp + d] = in ? q[src] : 0.0f;
        dos[i * hdp + d] = in ? dout[src] : 0.0f;
      }
      if (threadIdx.x < kBK) {
        const int64_t qi = t0 + threadIdx.x;
        const bool in = qi < l;
        lqs[threadIdx.x] = in ? lse[(bb * nh + h) * l + qi] : -INFINITY;
        dds[threadIdx.x] = in ? dsum[(bb * nh + h) * l + qi] : 0.0f;
        qok[threadIdx.x] = in ? 1.0f : 0.0f;
      }
      __syncthreads();
      for (int a = 0; a < kKW; ++a) {
        const int kr = warp * kKW + a;
        const int64_t kj = k0 + kr, qi = t0 + lane;
        float p = 0.0f, ds = 0.0f;
        const Span sq = spans ? span_of(tsp, lane) : Span{0, 0, 0};
        if (qok[lane] != 0.0f && kok[kr] != 0.0f && span_sees(sq, qi, kj, window) && lqs[lane] != -INFINITY) {
          float s = 0.0f, dp = 0.0f;
          for (int64_t d = 0; d < hd; ++d) {
            s += qs[lane * hdp + d] * ks[kr * hdp + d];
            dp += dos[lane * hdp + d] * vs[kr * hdp + d];
          }
          if (softcap > 0.0f) {
            float t;
            p = expf(cap(s * scale, softcap, t) - lqs[lane]);
            ds = p * (dp - dds[lane]) * (1.0f - t * t);
          } else {
            p = expf(s * scale - lqs[lane]);
            ds = p * (dp - dds[lane]);
          }
        }
        for (int i = 0; i < kBK; ++i) {
          const float pi = __shfl_sync(kFull, p, i), dsi = __shfl_sync(kFull, ds, i);
          for (int c = 0; c < nd; ++c) {
            const int64_t d = lane + 32 * c;
            if (d < hd) {
              gv[a][c] += pi * dos[i * hdp + d];
              gk[a][c] += dsi * qs[i * hdp + d];
            }
          }
        }
      }
    }
  }
  for (int a = 0; a < kKW; ++a) {
    const int64_t kj = k0 + warp * kKW + a;
    if (kj >= l) continue;
    for (int c = 0; c < nd; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < hd) {
        const int64_t at = ((bb * l + kj) * nkv + kvh) * hd + d;
        dk[at] = gk[a][c] * scale;
        dv[at] = gv[a][c];
      }
    }
  }
}

// One query per (sequence, head) against the cache; warps take every 4th tile of 32 keys. T: the
// caches' storage (float, or uint16_t bf16 bits widened exactly to f32 as read).
template <class T>
__global__ void __launch_bounds__(kThreads) attention_decode_kernel(
    SPIN_GP(const float) q, SPIN_GP(const T) kc, SPIN_GP(const T) vc, SPIN_GP(const int32_t) lengths,
    SPIN_GP(const int32_t) key_mask, int64_t lmax, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window,
    float softcap, SPIN_GP(float) out, SPIN_GP(uint32_t) err) {
  SPIN_SHARED(float, qs, kMaxHeadDim);
  SPIN_SHARED(float, wm, kWarps);
  SPIN_SHARED(float, wl, kWarps);
  SPIN_SHARED(float, wo, kWarps * kMaxHeadDim);
  const int64_t h = blockIdx.x, bb = blockIdx.y;
  const int64_t kvh = h / (nh / nkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nd = static_cast<int>((hd + 31) / 32);
  const int32_t len = lengths[bb];
  auto o_row = out + (bb * nh + h) * hd;
  if (len < 0 || len > lmax) {  // uniform across the block: leaves before any barrier
    for (int64_t d = threadIdx.x; d < hd; d += kThreads) o_row[d] = __builtin_nanf("");
    if (threadIdx.x == 0) atomicOr(err, static_cast<uint32_t>(kErrDecodeLengths));
    return;
  }
  for (int64_t d = threadIdx.x; d < hd; d += kThreads) qs[d] = q[(bb * nh + h) * hd + d];
  __syncthreads();
  const auto kbase = kc + (bb * nkv + kvh) * lmax * hd;
  const auto vbase = vc + (bb * nkv + kvh) * lmax * hd;
  float m = -INFINITY, ls = 0.0f, o[kMaxD];
  for (int c = 0; c < kMaxD; ++c) o[c] = 0.0f;
  // the query is position len - 1: with a window, the last `window` cached positions only
  const int64_t lo = window > 0 && len > window ? len - window : 0;
  for (int64_t t0 = lo + static_cast<int64_t>(warp) * 32; t0 < len; t0 += kThreads) {
    const int64_t j = t0 + lane;
    float s = -INFINITY;
    if (j < len && (!key_mask || key_mask[bb * lmax + j] != 0)) {
      float dot = 0.0f;
      for (int64_t d = 0; d < hd; ++d) dot += qs[d] * to_f32(kbase[j * hd + d]);
      s = dot * scale;
      float t;
      if (softcap > 0.0f) s = cap(s, softcap, t);
    }
    const float mn = fmaxf(m, warp_max(s));
    if (mn == -INFINITY) continue;
    const float p = s == -INFINITY ? 0.0f : expf(s - mn);
    const float corr = m == -INFINITY ? 0.0f : expf(m - mn);
    ls = ls * corr + warp_sum(p);
    m = mn;
    for (int c = 0; c < kMaxD; ++c) o[c] *= corr;
    for (int jj = 0; jj < 32; ++jj) {
      const float pj = __shfl_sync(kFull, p, jj);
      if (t0 + jj >= len) continue;  // uniform across the warp
      for (int c = 0; c < nd; ++c) {
        const int64_t d = lane + 32 * c;
        if (d < hd) o[c] += pj * to_f32(vbase[(t0 + jj) * hd + d]);
      }
    }
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = ls;
  }
  for (int c = 0; c < nd; ++c) {
    const int64_t d = lane + 32 * c;
    if (d < hd) wo[warp * kMaxHeadDim + d] = o[c];
  }
  __syncthreads();
  if (warp == 0) {
    float gm = -INFINITY;
    for (int w = 0; w < kWarps; ++w) gm = fmaxf(gm, wm[w]);
    float gl = 0.0f;
    float acc[kMaxD];
    for (int c = 0; c < kMaxD; ++c) acc[c] = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float f = wm[w] == -INFINITY ? 0.0f : expf(wm[w] - gm);
      gl += wl[w] * f;
      for (int c = 0; c < nd; ++c) {
        const int64_t d = lane + 32 * c;
        if (d < hd) acc[c] += wo[w * kMaxHeadDim + d] * f;
      }
    }
    const float inv = gl > 0.0f ? 1.0f / gl : 0.0f;
    for (int c = 0; c < nd; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < hd) o_row[d] = acc[c] * inv;
    }
  }
}

unsigned tiles(int64_t n, int64_t t) { return static_cast<unsigned>((n + t - 1) / t); }

// Past the default 48 KB a kernel must opt in; its static shared arrays (the spans', under 1 KB) count
// against that default too.
void allow_smem(const void* kernel, size_t bytes) {
  if (bytes + 1024 > 48 * 1024) check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), "attention shared memory");
}

template <class T>
void launch_decode(const float* q, const void* k_cache, const void* v_cache, const int32_t* lengths, const int32_t* key_mask,
                   int64_t b, int64_t lmax, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap,
                   float* out) {
  const T* kc = lmax ? static_cast<const T*>(k_cache) : nullptr;
  const T* vc = lmax ? static_cast<const T*>(v_cache) : nullptr;
  SPIN_LAUNCH(attention_decode_kernel<T>, dim3(static_cast<unsigned>(nh), static_cast<unsigned>(b)), dim3(kThreads), 0, stream(), q,
              kc, vc, lengths, lmax ? key_mask : nullptr, lmax, nh, nkv, hd, scale, window, softcap, out, error_word());
}

}  // namespace

void attention(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b, int64_t l,
               int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out, float* lse) {
  if (b * l * nh == 0) return;
  const size_t smem = fwd_smem(hd);
  allow_smem(reinterpret_cast<const void*>(&attention_fwd_kernel), smem);
  SPIN_LAUNCH(attention_fwd_kernel, dim3(tiles(l, kBQ), static_cast<unsigned>(nh), static_cast<unsigned>(b)), dim3(kThreads), smem,
              stream(), q, k, v, key_mask, spans, l, nh, nkv, hd, scale, window, softcap, out, lse, error_word());
  check_launch("attention");
}

void attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans,
                        const float* out, const float* lse, const float* dout, int64_t b, int64_t l, int64_t nh, int64_t nkv,
                        int64_t hd, float scale, int64_t window, float softcap, float* dq, float* dk, float* dv) {
  if (b * l == 0) return;
  // scratch: dsum [b, nh, l] f32, then with spans the query tiles' bounds first, after [b, nt] i32
  const int64_t nt = spans ? (l + kBK - 1) / kBK : 0;
  float* dsum = static_cast<float*>(scratch(static_cast<size_t>(b * nh * l + 2 * b * nt) * 4, "attentionBackward"));
  int32_t* tfirst = spans ? reinterpret_cast<int32_t*>(dsum + b * nh * l) : nullptr;
  int32_t* tafter = spans ? tfirst + b * nt : nullptr;
  if (spans)
    SPIN_LAUNCH(attention_span_bounds_kernel<kBK>, dim3(static_cast<unsigned>(b)), dim3(kSpanBoundsThreads), 0, stream(), spans, l,
                window, nt, tfirst, tafter);
  const size_t s1 = dq_smem(hd), s2 = dkv_smem(hd);
  allow_smem(reinterpret_cast<const void*>(&attention_dq_kernel), s1);
  allow_smem(reinterpret_cast<const void*>(&attention_dkv_kernel), s2);
  SPIN_LAUNCH(attention_dq_kernel, dim3(tiles(l, kBQ), static_cast<unsigned>(nh), static_cast<unsigned>(b)), dim3(kThreads), s1,
              stream(), q, k, v, key_mask, spans, out, lse, dout, l, nh, nkv, hd, scale, window, softcap, dq, dsum, error_word());
  SPIN_LAUNCH(attention_dkv_kernel, dim3(tiles(l, kKB), static_cast<unsigned>(nkv), static_cast<unsigned>(b)), dim3(kThreads), s2,
              stream(), q, k, v, key_mask, spans, static_cast<const int32_t*>(tfirst), static_cast<const int32_t*>(tafter), nt, lse,
              static_cast<const float*>(dsum), dout, l, nh, nkv, hd, scale, window, softcap, dk, dv);
  check_launch("attentionBackward");
}

void attention_decode(const float* q, const void* k_cache, const void* v_cache, DType cache_dt, const int32_t* lengths,
                      const int32_t* key_mask, int64_t b, int64_t lmax, int64_t nh, int64_t nkv, int64_t hd, float scale,
                      int64_t window, float softcap, float* out) {
  if (b * nh == 0) return;
  if (cache_dt == DType::kBF16)
    launch_decode<uint16_t>(q, k_cache, v_cache, lengths, key_mask, b, lmax, nh, nkv, hd, scale, window, softcap, out);
  else
    launch_decode<float>(q, k_cache, v_cache, lengths, key_mask, b, lmax, nh, nkv, hd, scale, window, softcap, out);
  check_launch("attentionDecode");
}

}  // namespace spinlm::cuda
