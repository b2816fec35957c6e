// The row-invariant linear layer: C[M, N] = alpha * A[M, K] B[N, K]^T + beta * C, where every element
// is summed in one fixed order, so a row of C depends only on its row of A and on B: never on M, on
// the other rows, on where the row sits, or on the thread count. OpenBLAS does not promise that (it
// takes a different kernel for small M * N * K, with another summation order), and generation needs
// it: a prompt's logits must not depend on which prompts share its prefill or decode step
// (docs/ops.md, "Row-invariant matmul").
//
// The order of one element: 16 lane-wise partial sums, lane l adding a[p] * b[p] for p = l, l + 16, ...
// (k rounded down to a multiple of 16) in increasing p, then simd::hsum's fixed tree, then the tail
// p >= k - k % 16 one by one. Tiles of 4 rows of A x 6 rows of B keep 24 accumulators in registers:
// each step loads 10 vectors for 24 vector multiply-adds. B is f32 or bf16: bf16 weights are read from
// memory at half the bytes; a tile of them that several row tiles use is widened once into a small
// per-thread buffer (below), a tile used once is widened in registers.
//
// Blocking: rows of A go in blocks of mc (the block, mc x K floats, stays in L2 while every 6-row tile
// of B passes over it); within a block, threads split the tiles of B, so each reads its share of B
// from memory once per block. Decode (M = a few dozen rows) is one block: B is streamed exactly once.
#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../include/bf16.h"
#include "model_kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace spinlm {
namespace {

using simd::kLanes;
using simd::vf;

constexpr int kMr = 4;  // rows of A per register tile
constexpr int kNr = 6;  // rows of B per register tile: 24 accumulators, 10 loads per 24 multiply-adds

SPINLM_INLINE float widen(float x) { return x; }
SPINLM_INLINE float widen(uint16_t x) { return bf16_to_f32(x); }

// One MR x NR tile of C from MR rows of A and NR rows of B, in the order described above.
template <int MR, int NR, typename TB>
SPINLM_INLINE void tile(const float* a, int64_t lda, const TB* b, int64_t ldb, int64_t k, float alpha, float beta, float* c,
                        int64_t ldc) {
  vf acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = simd::splat(0.0f);
  int64_t p = 0;
  for (; p + kLanes <= k; p += kLanes) {
    vf av[MR];
    for (int i = 0; i < MR; ++i) av[i] = simd::load(a + i * lda + p);
    for (int j = 0; j < NR; ++j) {
      const vf bv = simd::load(b + j * ldb + p);
      for (int i = 0; i < MR; ++i) acc[i][j] += av[i] * bv;
    }
  }
  for (int i = 0; i < MR; ++i) {
    float s[NR];
    int j0 = 0;
    if constexpr (NR >= 4) {
      simd::hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3], s);
      j0 = 4;
    }
    for (int j = j0; j < NR; ++j) s[j] = simd::hsum(acc[i][j]);
    for (int j = 0; j < NR; ++j) {
      // an explicit fused multiply-add: left to the compiler, the bf16 and f32 instantiations of this
      // loop were contracted differently (a bf16 tile widened in registers and the same tile widened
      // into the buffer gave different last bits)
      for (int64_t q = p; q < k; ++q) s[j] = __builtin_fmaf(a[i * lda + q], widen(b[j * ldb + q]), s[j]);
      float* out = c + i * ldc + j;
      *out = beta == 0.0f ? alpha * s[j] : alpha * s[j] + beta * *out;
    }
  }
}

template <int MR, typename TB>
SPINLM_INLINE void tile_cols(int nr, const float* a, int64_t lda, const TB* b, int64_t ldb, int64_t k, float alpha, float beta,
                             float* c, int64_t ldc) {
  switch (nr) {
    case 6: tile<MR, 6>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    case 5: tile<MR, 5>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    case 4: tile<MR, 4>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    case 3: tile<MR, 3>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    case 2: tile<MR, 2>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    default: tile<MR, 1>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
  }
}

// Asks for the rows [j, j + kNr) of bf16 B (those below n), 64 bytes at a time, ahead of their use.
SPINLM_INLINE void prefetch_tile(const uint16_t* b, int64_t j, int64_t n, int64_t ldb, int64_t k) {
  const int nr = static_cast<int>(std::min<int64_t>(kNr, n - j));
  for (int r = 0; r < nr; ++r)
    for (int64_t q = 0; q < k; q += 32) __builtin_prefetch(b + (j + r) * ldb + q, 0, 2);
}

// Rows nr x k of bf16 B widened to f32 (exact), rows of ldw floats: what the tiles read instead of B.
SPINLM_INLINE void widen_rows(int nr, int64_t k, const uint16_t* b, int64_t ldb, float* w, int64_t ldw) {
  for (int j = 0; j < nr; ++j) {
    int64_t p = 0;
    for (; p + kLanes <= k; p += kLanes) simd::store(w + j * ldw + p, simd::load(b + j * ldb + p));
    for (; p < k; ++p) w[j * ldw + p] = bf16_to_f32(b[j * ldb + p]);
  }
}

// Rows [i0, i1) of C against the B tiles [t0, t1) (tile t = rows 6t .. 6t + 5 of B, the last may be short).
// A bf16 tile that more than one row tile uses is widened once into `wide` (kNr x k floats), so the
// inner loop is loads and multiply-adds only: widening in registers costs two more vector operations
// per row of B per step, on the ports the multiply-adds need. The sums are the same either way.
template <typename TB>
SPINLM_INLINE void block(int64_t i0, int64_t i1, int64_t t0, int64_t t1, int64_t n, int64_t k, float alpha, const float* a,
                         int64_t lda, const TB* b, int64_t ldb, float beta, float* c, int64_t ldc, float* wide) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t j = kNr * t;
    const int nr = static_cast<int>(std::min<int64_t>(kNr, n - j));
    if constexpr (std::is_same_v<TB, uint16_t>) {
      if (wide != nullptr) {
        widen_rows(nr, k, b + j * ldb, ldb, wide, k);
        // The next tile's rows, fetched from memory while this tile's row tiles run: decode streams
        // every weight once per step, and rows of <= 1.5 KiB are too short for the hardware
        // prefetcher to ramp up (+20-25% at decode's shapes; no gain for the longer rows of the
        // in-register path: docs/performance.md).
        if (t + 1 < t1) prefetch_tile(b, j + kNr, n, ldb, k);
        block<float>(i0, i1, 0, 1, nr, k, alpha, a, lda, wide, k, beta, c + j, ldc, nullptr);
        continue;
      }
    }
    for (int64_t i = i0; i < i1; i += kMr) {
      const float* ai = a + i * lda;
      const TB* bj = b + j * ldb;
      float* cij = c + i * ldc + j;
      switch (std::min<int64_t>(kMr, i1 - i)) {
        case 4: tile_cols<4>(nr, ai, lda, bj, ldb, k, alpha, beta, cij, ldc); break;
        case 3: tile_cols<3>(nr, ai, lda, bj, ldb, k, alpha, beta, cij, ldc); break;
        case 2: tile_cols<2>(nr, ai, lda, bj, ldb, k, alpha, beta, cij, ldc); break;
        default: tile_cols<1>(nr, ai, lda, bj, ldb, k, alpha, beta, cij, ldc); break;
      }
    }
  }
}

SPINLM_CLONES void block_f32(int64_t i0, int64_t i1, int64_t t0, int64_t t1, int64_t n, int64_t k, float alpha, const float* a,
                             int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  block(i0, i1, t0, t1, n, k, alpha, a, lda, b, ldb, beta, c, ldc, nullptr);
}

SPINLM_CLONES void block_bf16(int64_t i0, int64_t i1, int64_t t0, int64_t t1, int64_t n, int64_t k, float alpha, const float* a,
                              int64_t lda, const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // One thread's widened tile, kept between calls (kNr x k floats: at most 18 KiB).
  thread_local std::vector<float> wide;
  // Only where the widened tile and a row tile of A stay in L1 together (k = 768: 18 + 12 KiB); at
  // k = 2048 the widened tile spills to L2 and a tile read from there costs more than widening it.
  const bool reuse = i1 - i0 > kMr && k <= 768;
  if (reuse && wide.size() < static_cast<size_t>(kNr * k)) wide.resize(static_cast<size_t>(kNr * k));
  block(i0, i1, t0, t1, n, k, alpha, a, lda, b, ldb, beta, c, ldc, reuse ? wide.data() : nullptr);
}

// ---- bf16 compute (compute_bf16): C = alpha * bf16(A) B^T + beta * C, B bf16 ---------------------------
// A is rounded to bf16 once per call (to nearest even: the cast op's bits), so every product is of two
// bf16 values, exact in f32, and the sums are f32 (docs/ops.md, "bf16 compute"). With AVX512-BF16 a
// tile runs on vdpbf16ps: 32 products per instruction, twice the multiply-adds of f32 FMA, and bf16 B
// is read as stored, never widened. The order of one element: lane l of 16 adds the products of
// p = 2l + 32s and 2l + 1 + 32s for s = 0, 1, ... (the last step's missing values read as zeros), then
// simd::hsum's tree. Like the f32 path it does not depend on M, on the other rows or on threads.
// The instruction treats bf16 subnormals as zero and flushes subnormal sums (Intel's definition).
// Without AVX512-BF16 the rounded A is widened back and the f32 path runs: the same products, summed
// in its order.
#if defined(__x86_64__)
#define SPINLM_DP_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

template <int MR, int NR>
SPINLM_DP_TARGET SPINLM_INLINE void tile_dp(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, int64_t k, float alpha,
                                            float beta, float* c, int64_t ldc) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + 32 <= k; p += 32) {
    __m512bh av[MR];
    for (int i = 0; i < MR; ++i) av[i] = (__m512bh)_mm512_loadu_si512(a + i * lda + p);
    for (int j = 0; j < NR; ++j) {
      const __m512bh bv = (__m512bh)_mm512_loadu_si512(b + j * ldb + p);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av[i], bv);
    }
  }
  if (p < k) {  // the last k % 32 values; the masked loads read nothing past them
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k - p)) - 1);
    __m512bh av[MR];
    for (int i = 0; i < MR; ++i) av[i] = (__m512bh)_mm512_maskz_loadu_epi16(mask, a + i * lda + p);
    for (int j = 0; j < NR; ++j) {
      const __m512bh bv = (__m512bh)_mm512_maskz_loadu_epi16(mask, b + j * ldb + p);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av[i], bv);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float s[NR];
    int j0 = 0;
    if constexpr (NR >= 4) {
      simd::hsum4(vf(acc[i][0]), vf(acc[i][1]), vf(acc[i][2]), vf(acc[i][3]), s);
      j0 = 4;
    }
    for (int j = j0; j < NR; ++j) s[j] = simd::hsum(vf(acc[i][j]));
    for (int j = 0; j < NR; ++j) {
      float* out = c + i * ldc + j;
      *out = beta == 0.0f ? alpha * s[j] : alpha * s[j] + beta * *out;
    }
  }
}

template <int MR>
SPINLM_DP_TARGET SPINLM_INLINE void tile_dp_cols(int nr, const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, int64_t k,
                                                 float alpha, float beta, float* c, int64_t ldc) {
  switch (nr) {
    case 6: tile_dp<MR, 6>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    case 5: tile_dp<MR, 5>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    case 4: tile_dp<MR, 4>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    case 3: tile_dp<MR, 3>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    case 2: tile_dp<MR, 2>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
    default: tile_dp<MR, 1>(a, lda, b, ldb, k, alpha, beta, c, ldc); break;
  }
}

// Rows [i0, i1) of C against the B tiles [t0, t1), A already bf16 (rows of lda values).
SPINLM_DP_TARGET void block_dp(int64_t i0, int64_t i1, int64_t t0, int64_t t1, int64_t n, int64_t k, float alpha, const uint16_t* a,
                               int64_t lda, const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t j = kNr * t;
    const int nr = static_cast<int>(std::min<int64_t>(kNr, n - j));
    // the next tile's rows, fetched while this one's row tiles run (as the widened f32 path does)
    if (t + 1 < t1) prefetch_tile(b, j + kNr, n, ldb, k);
    for (int64_t i = i0; i < i1; i += kMr) {
      const uint16_t* ai = a + i * lda;
      const uint16_t* bj = b + j * ldb;
      float* cij = c + i * ldc + j;
      switch (std::min<int64_t>(kMr, i1 - i)) {
        case 4: tile_dp_cols<4>(nr, ai, lda, bj, ldb, k, alpha, beta, cij, ldc); break;
        case 3: tile_dp_cols<3>(nr, ai, lda, bj, ldb, k, alpha, beta, cij, ldc); break;
        case 2: tile_dp_cols<2>(nr, ai, lda, bj, ldb, k, alpha, beta, cij, ldc); break;
        default: tile_dp_cols<1>(nr, ai, lda, bj, ldb, k, alpha, beta, cij, ldc); break;
      }
    }
  }
}

// SPINLM_NO_AVX512_BF16=1 takes the fallback on a CPU that has the instruction (its test runs it so).
bool have_avx512_bf16() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512bf16") && std::getenv("SPINLM_NO_AVX512_BF16") == nullptr;
  return yes;
}
#else
bool have_avx512_bf16() { return false; }
void block_dp(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, const uint16_t*, int64_t, const uint16_t*, int64_t, float,
              float*, int64_t) {}
#endif

// A [m, k] (rows lda apart) rounded to bf16, rows k apart; and, for the fallback, widened back to f32.
SPINLM_CLONES void round_rows_bf16(int64_t r0, int64_t r1, int64_t k, const float* a, int64_t lda, uint16_t* a16) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* s = a + r * lda;
    uint16_t* d = a16 + r * k;
    int64_t c = 0;
    for (; c + kLanes <= k; c += kLanes) simd::store(d + c, simd::load(s + c));
    for (; c < k; ++c) d[c] = f32_to_bf16(s[c]);
  }
}
SPINLM_CLONES void widen_rows_f32(int64_t r0, int64_t r1, int64_t k, const uint16_t* a16, float* a32) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t c = 0;
    for (; c + kLanes <= k; c += kLanes) simd::store(a32 + r * k + c, simd::load(a16 + r * k + c));
    for (; c < k; ++c) a32[r * k + c] = bf16_to_f32(a16[r * k + c]);
  }
}

// One parallel region over the tiles of every job; a thread's range may span jobs.
void rows_jobs(int64_t m, int64_t k, float alpha, const float* a, int64_t lda, const RowsJob* jobs, int count, float beta,
               bool compute_bf16) {
  if (m == 0 || count == 0) return;
  // bf16 compute: A rounded once (by rows, on the pool); then vdpbf16ps tiles, or the f32 path on the
  // rounded values where the CPU lacks AVX512-BF16
  std::vector<uint16_t> a16;
  std::vector<float> a32;
  const bool dp = compute_bf16 && have_avx512_bf16();
  if (compute_bf16) {
    a16.resize(static_cast<size_t>(m * k));
    parallel_for(m, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, k)),
                 [&](int64_t r0, int64_t r1) { round_rows_bf16(r0, r1, k, a, lda, a16.data()); });
    if (!dp) {
      a32.resize(static_cast<size_t>(m * k));
      parallel_for(m, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, k)),
                   [&](int64_t r0, int64_t r1) { widen_rows_f32(r0, r1, k, a16.data(), a32.data()); });
      a = a32.data();
      lda = k;
    }
  }
  std::vector<int64_t> first(static_cast<size_t>(count) + 1, 0);  // job j owns tiles [first[j], first[j + 1])
  for (int j = 0; j < count; ++j) first[j + 1] = first[j] + (jobs[j].n + kNr - 1) / kNr;
  const int64_t tiles = first[count];
  if (tiles == 0) return;
  // An A block of about 1 MiB (L2 on current x86 server cores), at least 64 rows, at most 256.
  const int64_t mc = std::clamp<int64_t>((int64_t{1} << 20) / (4 * std::max<int64_t>(k, 1)) / 4 * 4, 64, 256);
  for (int64_t i0 = 0; i0 < m; i0 += mc) {
    const int64_t i1 = std::min(m, i0 + mc);
    // at least ~4M multiply-adds (~25 us) per range: waking a pool thread costs tens of microseconds
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, kNr * k * (i1 - i0)));
    parallel_for(tiles, grain, [&](int64_t t0, int64_t t1) {
      for (int j = 0; j < count; ++j) {
        const int64_t lo = std::max(t0, first[j]) - first[j], hi = std::min(t1, first[j + 1]) - first[j];
        if (lo >= hi) continue;
        const RowsJob& job = jobs[j];
        if (dp)
          block_dp(i0, i1, lo, hi, job.n, k, alpha, a16.data(), k, static_cast<const uint16_t*>(job.b), job.ldb, beta, job.c, job.ldc);
        else if (job.b_dt == DType::kBF16)
          block_bf16(i0, i1, lo, hi, job.n, k, alpha, a, lda, static_cast<const uint16_t*>(job.b), job.ldb, beta, job.c, job.ldc);
        else
          block_f32(i0, i1, lo, hi, job.n, k, alpha, a, lda, static_cast<const float*>(job.b), job.ldb, beta, job.c, job.ldc);
      }
    });
  }
}

}  // namespace

void matmul_rows(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const void* b, DType b_dt, int64_t ldb,
                 float beta, float* c, int64_t ldc, bool compute_bf16) {
  const RowsJob job{b, b_dt, n, ldb, c, ldc};
  rows_jobs(m, k, alpha, a, lda, &job, 1, beta, compute_bf16);
}

void matmul_rows_many(int64_t m, int64_t k, const float* a, int64_t lda, const RowsJob* jobs, int count, bool compute_bf16) {
  rows_jobs(m, k, 1.0f, a, lda, jobs, count, 0.0f, compute_bf16);
}

}  // namespace spinlm
