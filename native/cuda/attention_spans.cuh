// Attention spans on the device (AttentionOpts.spans, issue 27's pair and packing layout): which keys
// a query sees, the first one it sees from a position on, the check, and the grouping of a query block
// by lo; small functions shared by the attention kernels (attention.cu) and meant for later ones.
// Query i of row b has the span (lo, hideLo, hideHi) and sees key j iff lo <= j <= i, j is outside
// [hideLo, hideHi), keyMask[b, j] != 0 and, with a window, dist(i, j) < window, where dist(i, j) =
// i - j - (j < hideLo ? hideHi - hideLo : 0). Without spans every query has lo = hideLo = hideHi = 0:
// plain causal attention. keyMask is the kernels' business; these functions go by position only.
#pragma once
#include <cstdint>

#include "cuda_common.cuh"

namespace spinlm::cuda {

struct Span {
  int64_t lo, hlo, hhi;
};
// "No key": past every position. A query without a usable span (past L, or invalid) gets
// Span{kNoKey, kNoKey, kNoKey}, which sees nothing (span_sees, span_next) and joins no group.
constexpr int64_t kNoKey = int64_t{1} << 62;

__device__ __forceinline__ int64_t imax64(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ __forceinline__ int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

// The span of query i (flat row = b * L + i) from spans [B, L, 3]; lo = 0, nothing hidden without spans.
template <class P>
__device__ __forceinline__ Span span_at(P spans, int64_t row) {
  if (!spans) return Span{0, 0, 0};
  return Span{spans[3 * row], spans[3 * row + 1], spans[3 * row + 2]};
}

// Valid spans: 0 <= lo <= hideLo <= hideHi <= i.
__device__ __forceinline__ bool span_valid(const Span& s, int64_t i) {
  return 0 <= s.lo && s.lo <= s.hlo && s.hlo <= s.hhi && s.hhi <= i;
}

// Query i sees key j by position (the window counts no hidden key). Without spans: j <= i and
// i - j < window (window > 0).
__device__ __forceinline__ bool span_sees(const Span& s, int64_t i, int64_t j, int64_t window) {
  if (j < s.lo || j > i || (j >= s.hlo && j < s.hhi)) return false;
  const int64_t dist = i - j - (j < s.hlo ? s.hhi - s.hlo : 0);
  return window <= 0 || dist < window;
}

// The first key >= from that query i sees by position, kNoKey if none. Its keys are two runs:
// [max(lo, i + 1 - window - hidden), hideLo) and [max(hideHi, i + 1 - window), i].
__device__ __forceinline__ int64_t span_next(const Span& s, int64_t i, int64_t from, int64_t window) {
  int64_t a = s.lo, b = s.hhi;
  if (window > 0) {
    a = imax64(a, i + 1 - window - (s.hhi - s.hlo));
    b = imax64(b, i + 1 - window);
  }
  a = imax64(a, from);
  if (a < s.hlo) return a;
  b = imax64(b, from);
  return b <= i ? b : kNoKey;
}

// A block's query spans in shared memory: sp[3 r], sp[3 r + 1], sp[3 r + 2] for its query r.
template <class S>
__device__ __forceinline__ Span span_of(S& sp, int r) {
  return Span{sp[3 * r], sp[3 * r + 1], sp[3 * r + 2]};
}
template <class S>
__device__ __forceinline__ void span_put(S& sp, int r, const Span& s) {
  sp[3 * r] = s.lo;
  sp[3 * r + 1] = s.hlo;
  sp[3 * r + 2] = s.hhi;
}

// Packing invariance: a query's key tiles start at its own lo (lo, lo + kBK, ...), so every reduction
// runs in an order fixed relative to lo. A query block therefore walks its queries by groups of one lo,
// in increasing lo: the next group's lo above prev among the block's n queries (kNoKey: none left).
template <int N, class S>
__device__ __forceinline__ int64_t next_group(S& sp, int64_t prev) {
  int64_t g = kNoKey;
  for (int r = 0; r < N; ++r) {
    const int64_t lo = sp[3 * r];
    if (lo > prev && lo < g) g = lo;
  }
  return g;
}

// The first key >= from that a query of group lo (queries q0 + r) sees, kNoKey if none.
template <int N, class S>
__device__ __forceinline__ int64_t group_next(S& sp, int64_t q0, int64_t lo, int64_t from, int64_t window) {
  int64_t j = kNoKey;
  for (int r = 0; r < N; ++r) {
    const Span s = span_of(sp, r);
    if (s.lo == lo) j = imin64(j, span_next(s, q0 + r, from, window));
  }
  return j;
}

// The start of the key tile (tile keys wide, aligned to lo) that holds key j.
__device__ __forceinline__ int64_t tile_of(int64_t lo, int64_t j, int64_t tile) { return lo + (j - lo) / tile * tile; }

// Query i's span as a block keeps it: none (kNoKey) past l or when invalid, which
// raises kErrAttentionSpans when `err` is given (one block per query raises it, not every head's).
template <class P, class E>
__device__ __forceinline__ Span block_span(P spans, int64_t bb, int64_t l, int64_t i, E err) {
  const Span none{kNoKey, kNoKey, kNoKey};
  if (i >= l) return none;
  const Span s = span_at(spans, bb * l + i);
  if (span_valid(s, i)) return s;
  if (err) atomicOr(err, static_cast<uint32_t>(kErrAttentionSpans));
  return none;
}

// For query r of a block (queries q0 + r) and the key tile [k0, k0 + tile) of group lo: hit[r] = 1 when
// it is of the group and sees a key of the tile, nxt[r] its first key past the tile (kNoKey: none, or
// not of the group). The block's next tile holds the least nxt.
template <class S, class N, class H>
__device__ __forceinline__ void mark_tile(S& sp, int r, int64_t q0, int64_t lo, int64_t k0, int64_t tile, int64_t window, N& nxt,
                                          H& hit) {
  const Span s = span_of(sp, r);
  const bool in = s.lo == lo;
  nxt[r] = in ? span_next(s, q0 + r, k0 + tile, window) : kNoKey;
  hit[r] = in && span_next(s, q0 + r, k0, window) < k0 + tile ? 1 : 0;
}

// The bounds of the query tiles (kTile queries from t * kTile) of row blockIdx.x, for a kernel that
// walks query tiles for a block of keys (attention.cu's dk/dv): first[t], the first key any valid
// query of tile t sees by position, and after[t], the least first[t'] of tiles t' >= t (0x7fffffff:
// none); no query from tile t on sees a key before after[t]. Threads take tiles; then thread 0 runs
// the suffix minimum (L / kTile steps). One block of kSpanBoundsThreads per row.
constexpr int kSpanBoundsThreads = 128;  // the bounds kernel's block
template <int kTile>
__global__ void __launch_bounds__(kSpanBoundsThreads) attention_span_bounds_kernel(SPIN_GP(const int32_t) spans, int64_t l, int64_t window,
                                                                         int64_t nt, SPIN_GP(int32_t) first, SPIN_GP(int32_t) after) {
  constexpr int64_t kNone = 0x7fffffff;
  const int64_t bb = blockIdx.x;
  for (int64_t t = threadIdx.x; t < nt; t += kSpanBoundsThreads) {
    int64_t f = kNone;
    for (int64_t i = t * kTile; i < t * kTile + kTile && i < l; ++i) {
      const Span s = span_at(spans, bb * l + i);
      if (span_valid(s, i)) f = imin64(f, span_next(s, i, 0, window));
    }
    first[bb * nt + t] = static_cast<int32_t>(imin64(f, kNone));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t m = static_cast<int32_t>(kNone);
    for (int64_t t = nt - 1; t >= 0; --t) {
      const int32_t f = first[bb * nt + t];
      m = f < m ? f : m;
      after[bb * nt + t] = m;
    }
  }
}

}  // namespace spinlm::cuda
