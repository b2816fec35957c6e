// The row-invariant linear layer: C[M, N] = alpha * A[M, K] B[N, K]^T + beta * C, where every element
// is summed in one fixed order, so a row of C depends only on its row of A and on B: never on M, on
// the other rows, on where the row sits, or on the thread count. OpenBLAS does not promise that (it
// takes a different kernel for small M * N * K, with another summation order), and generation needs
// it: a prompt's logits must not depend on which prompts share its prefill or decode step
// (docs/ops.md, "Row-invariant matmul").
//
// The order of one element: one chain of fused multiply-adds in increasing k, from zero,
//   s = 0; s = fma(a[i][0], b[j][0], s); s = fma(a[i][1], b[j][1], s); ... ; s = fma(a[i][K-1], b[j][K-1], s)
// then C = alpha * s (+ beta * C). One rounding per step, no reassociation, so the value is the same
// whatever the tile, the thread, the kernel set (AVX-512, AVX2 or scalar fmaf) or the machine.
//
// The form is OpenBLAS's (an outer product in registers, no horizontal sums): W is packed, per thread,
// into blocks of kKc values of K x kNcp panels of 16 columns, k-major (a panel's 16 weights for one k
// are one or two vectors; bf16 widened exactly here), and a register tile of r rows of A x g panels
// broadcasts a[i][p] and multiply-adds it into r x 16 g sums. K runs in blocks of kKc (a panel group
// stays in L1 while the row tiles pass over it); the sums of a block start from C, where the block
// before left them (loading them back and going on is the same chain). When alpha != 1 or beta != 0
// the sums go to a scratch [M, N] first and C is combined after. Rows of A go in blocks of kMc, packed
// into tiles of the set's row count (in L2); threads split the panels of W, so each packs and reads its
// own share. Decode (M <= 16) packs 4 panels x 512 of K at a time instead. Last columns (N % 16) run the
// same tile on a copy of them; last rows run a tile of fewer rows. Speed: docs/performance.md
// ("Row-invariant GEMM, packed").
#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../include/bf16.h"
#include "memory.h"
#include "model_kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace spinlm {
namespace {

constexpr int kPanel = 16;     // columns of W per packed panel
constexpr int64_t kKc = 256;   // K values per packed block (a panel: 16 KiB, in L1)
constexpr int64_t kMc = 144;   // rows of A per block (144 x 256 floats: 144 KiB, in L2)
constexpr int64_t kNcpSmall = 16;  // panels per packed block of W when A is one row block (256 KiB, in L2)
constexpr int64_t kNcp = 64;       // else (1 MiB, in L3: the row blocks are packed once per W block)

SPINLM_INLINE float widen(float x) { return x; }
SPINLM_INLINE float widen(uint16_t x) { return bf16_to_f32(x); }

// ---- packing: rows [0, rows) of W (columns of C), K values [pc, pc + kc), into np panels of kc x 16
// (panel q, value p, column c at wp[q kc 16 + 16 p + c]); columns past `rows` are zeros.
template <typename TB>
void pack_scalar(const TB* w, int64_t ldb, int64_t rows, int64_t pc, int64_t kc, int64_t np, float* wp) {
  for (int64_t q = 0; q < np; ++q)
    for (int c = 0; c < kPanel; ++c) {
      const int64_t j = kPanel * q + c;
      float* dst = wp + q * kc * kPanel + c;
      for (int64_t p = 0; p < kc; ++p) dst[p * kPanel] = j < rows ? widen(w[j * ldb + pc + p]) : 0.0f;
    }
}

namespace scalar {
using V = float;
constexpr int kVec = 1, kMrMax = 4, kNpMax = 1, kNpBig = 1;
constexpr int64_t np_small(int64_t) { return 1; }
SPINLM_INLINE V vzero() { return 0.0f; }
SPINLM_INLINE V vload(const float* p) { return *p; }
SPINLM_INLINE void vstore(float* p, V v) { *p = v; }
SPINLM_INLINE V vbcast(const float* p) { return *p; }
SPINLM_INLINE V vfma(V a, V b, V c) { return __builtin_fmaf(a, b, c); }
#include "gemm_rows_tile.inc"
}  // namespace scalar

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
SPINLM_INLINE __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
SPINLM_INLINE __m256 load8(const uint16_t* p) {  // bf16 -> f32: the 16 bits moved up (exact)
  const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
}
SPINLM_INLINE void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}
// The packing of pack_scalar, 8 x 8 blocks transposed in registers.
template <typename TB>
void pack(const TB* w, int64_t ldb, int64_t rows, int64_t pc, int64_t kc, int64_t np, float* wp) {
  for (int64_t q = 0; q < np; ++q)
    for (int h = 0; h < 2; ++h) {
      const int64_t j0 = kPanel * q + 8 * h;
      float* dst = wp + q * kc * kPanel + 8 * h;
      int64_t p = 0;
      for (; p + 8 <= kc; p += 8) {
        __m256 r[8];
        for (int t = 0; t < 8; ++t) {
          if (j0 + t >= rows) {
            r[t] = _mm256_setzero_ps();
            continue;
          }
          const TB* src = w + (j0 + t) * ldb + pc + p;
          // 512 bytes ahead (of 512, 1024, 2048 the best at decode, where W comes from memory in short
          // runs per row: docs/performance.md)
          __builtin_prefetch(src + 512 / sizeof(TB), 0, 2);
          r[t] = load8(src);
        }
        transpose8(r);
        for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + (p + t) * kPanel, r[t]);
      }
      for (; p < kc; ++p)
        for (int t = 0; t < 8; ++t) dst[p * kPanel + t] = j0 + t < rows ? widen(w[(j0 + t) * ldb + pc + p]) : 0.0f;
    }
}

using V = __m256;
// 6 rows x 1 panel: 12 sums, 2 loads and 6 broadcasts per 12 multiply-adds; fewer rows, more panels
constexpr int kVec = 8, kMrMax = 6, kNpMax = 4, kNpBig = 1;
constexpr int64_t np_small(int64_t rows) { return rows == 1 ? 4 : rows == 2 ? 3 : rows == 3 ? 2 : 1; }
SPINLM_INLINE V vzero() { return _mm256_setzero_ps(); }
SPINLM_INLINE V vload(const float* p) { return _mm256_loadu_ps(p); }
SPINLM_INLINE void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
SPINLM_INLINE V vbcast(const float* p) { return _mm256_broadcast_ss(p); }
SPINLM_INLINE V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
#include "gemm_rows_tile.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace avx512 {
using V = __m512;
// 8 rows x 3 panels: 24 sums of the 32 registers, 3 loads and 8 broadcasts per 24 multiply-adds
constexpr int kVec = 16, kMrMax = 8, kNpMax = 4, kNpBig = 3;
constexpr int64_t np_small(int64_t rows) { return rows <= 4 ? 4 : 3; }
SPINLM_INLINE V vzero() { return _mm512_setzero_ps(); }
SPINLM_INLINE V vload(const float* p) { return _mm512_loadu_ps(p); }
SPINLM_INLINE void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
SPINLM_INLINE V vbcast(const float* p) { return _mm512_set1_ps(*p); }
SPINLM_INLINE V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
#include "gemm_rows_tile.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

// One kernel set: the packing and the register tiles.
struct KernelSet {
  const char* name;
  void (*pack_f32)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*);
  void (*pack_bf16)(const uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t, float*);
  void (*run_block)(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t, bool);
};

// The widest set the CPU has; SPINLM_ROWS_KERNELS=avx2|scalar picks a narrower one (the tests compare
// the sets' bits).
const KernelSet& kernel_set() {
  static const KernelSet set = [] {
    const char* want = std::getenv("SPINLM_ROWS_KERNELS");
    const std::string w = want ? want : "";
    KernelSet s{"scalar", &pack_scalar<float>, &pack_scalar<uint16_t>, &scalar::run_block};
#if defined(__x86_64__)
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    if (w == "scalar") return s;
    if (has_avx2) s = {"avx2", &avx2::pack<float>, &avx2::pack<uint16_t>, &avx2::run_block};
    if (has_avx512 && w != "avx2") s = {"avx512", &avx2::pack<float>, &avx2::pack<uint16_t>, &avx512::run_block};
#endif
    return s;
  }();
  return set;
}

// This thread's packed block of W (`floats`), 64-byte aligned, kept between calls (<= 1 MiB).
float* packed_block(int64_t floats) {
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(floats + 16);
  if (buf.size() < need) buf.resize(need);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t{63});
}

// The sums of columns [16 q0, 16 q1) of one job's C (rows of B) into t (rows ldt apart).
void job_panels(const KernelSet& ks, int64_t m, int64_t k, const float* a, int64_t lda, const RowsJob& job, float* t, int64_t ldt,
                int64_t q0, int64_t q1) {
  // Decode (m <= 16 rows): W is read once and each panel used by one to three row tiles, so W is packed
  // in runs of K of up to 512 values 4 panels at a time (128 KiB, in L2 when the tiles read it back; 4
  // panels give a 1-row tile 8 independent chains). Else K blocks of kKc, and W blocks of kNcpSmall
  // panels (one row block: W read once) or kNcp (the row blocks packed once per W block).
  const bool decode = m <= 16;
  const int64_t kb = decode ? std::min<int64_t>(k, 2 * kKc) : kKc;
  const int64_t ncp = decode ? 4 : m <= kMc ? kNcpSmall : kNcp;
  float* wp = packed_block(kb * ncp * kPanel);
  for (int64_t jc = q0; jc < q1; jc += ncp) {
    const int64_t np = std::min(ncp, q1 - jc), j0 = kPanel * jc;
    const int64_t rows = std::min(job.n - j0, kPanel * np);
    for (int64_t pc = 0; pc < k; pc += kb) {
      const int64_t kc = std::min(kb, k - pc);
      if (job.b_dt == DType::kBF16)
        ks.pack_bf16(static_cast<const uint16_t*>(job.b) + j0 * job.ldb, job.ldb, rows, pc, kc, np, wp);
      else
        ks.pack_f32(static_cast<const float*>(job.b) + j0 * job.ldb, job.ldb, rows, pc, kc, np, wp);
      for (int64_t ic = 0; ic < m; ic += kMc) ks.run_block(ic, std::min(m, ic + kMc), kc, a + pc, lda, wp, np, rows, t + j0, ldt, pc > 0);
    }
  }
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
using simd::vf;
constexpr int kDpMr = 4;  // rows of A per vdpbf16ps register tile
constexpr int kDpNr = 6;  // rows of B per tile

// Asks for the rows [j, j + kDpNr) of bf16 B (those below n), 64 bytes at a time, ahead of their use.
SPINLM_INLINE void prefetch_tile(const uint16_t* b, int64_t j, int64_t n, int64_t ldb, int64_t k) {
  const int nr = static_cast<int>(std::min<int64_t>(kDpNr, n - j));
  for (int r = 0; r < nr; ++r)
    for (int64_t q = 0; q < k; q += 32) __builtin_prefetch(b + (j + r) * ldb + q, 0, 2);
}

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
    const int64_t j = kDpNr * t;
    const int nr = static_cast<int>(std::min<int64_t>(kDpNr, n - j));
    // the next tile's rows, fetched while this one's row tiles run (as the widened f32 path does)
    if (t + 1 < t1) prefetch_tile(b, j + kDpNr, n, ldb, k);
    for (int64_t i = i0; i < i1; i += kDpMr) {
      const uint16_t* ai = a + i * lda;
      const uint16_t* bj = b + j * ldb;
      float* cij = c + i * ldc + j;
      switch (std::min<int64_t>(kDpMr, i1 - i)) {
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
    for (; c + simd::kLanes <= k; c += simd::kLanes) simd::store(d + c, simd::load(s + c));
    for (; c < k; ++c) d[c] = f32_to_bf16(s[c]);
  }
}
SPINLM_CLONES void widen_rows_f32(int64_t r0, int64_t r1, int64_t k, const uint16_t* a16, float* a32) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t c = 0;
    for (; c + simd::kLanes <= k; c += simd::kLanes) simd::store(a32 + r * k + c, simd::load(a16 + r * k + c));
    for (; c < k; ++c) a32[r * k + c] = bf16_to_f32(a16[r * k + c]);
  }
}

// The bf16-compute jobs on vdpbf16ps (A already rounded, rows k apart): tiles of kDpNr rows of B,
// A in blocks of <= 1 MiB, threads splitting the tiles.
void dp_jobs(int64_t m, int64_t k, float alpha, const uint16_t* a16, const RowsJob* jobs, int count, float beta) {
  std::vector<int64_t> first(static_cast<size_t>(count) + 1, 0);  // job j owns tiles [first[j], first[j + 1])
  for (int j = 0; j < count; ++j) first[j + 1] = first[j] + (jobs[j].n + kDpNr - 1) / kDpNr;
  const int64_t tiles = first[count];
  if (tiles == 0) return;
  // An A block of about 1 MiB (L2 on current x86 server cores), at least 64 rows, at most 256.
  const int64_t mc = std::clamp<int64_t>((int64_t{1} << 20) / (4 * std::max<int64_t>(k, 1)) / 4 * 4, 64, 256);
  for (int64_t i0 = 0; i0 < m; i0 += mc) {
    const int64_t i1 = std::min(m, i0 + mc);
    // at least ~4M multiply-adds (~25 us) per range: waking a pool thread costs tens of microseconds
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, kDpNr * k * (i1 - i0)));
    parallel_for(tiles, grain, [&](int64_t t0, int64_t t1) {
      for (int j = 0; j < count; ++j) {
        const int64_t lo = std::max(t0, first[j]) - first[j], hi = std::min(t1, first[j + 1]) - first[j];
        if (lo >= hi) continue;
        const RowsJob& job = jobs[j];
        block_dp(i0, i1, lo, hi, job.n, k, alpha, a16, k, static_cast<const uint16_t*>(job.b), job.ldb, beta, job.c, job.ldc);
      }
    });
  }
}

// One parallel region over the panels of every job; a thread's range may span jobs.
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
    if (dp) {
      dp_jobs(m, k, alpha, a16.data(), jobs, count, beta);
      return;
    }
    a32.resize(static_cast<size_t>(m * k));
    parallel_for(m, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, k)),
                 [&](int64_t r0, int64_t r1) { widen_rows_f32(r0, r1, k, a16.data(), a32.data()); });
    a = a32.data();
    lda = k;
  }
  std::vector<int64_t> first(static_cast<size_t>(count) + 1, 0);  // job j owns panels [first[j], first[j + 1])
  for (int j = 0; j < count; ++j) first[j + 1] = first[j] + (jobs[j].n + kPanel - 1) / kPanel;
  const int64_t panels = first[count];
  if (panels == 0) return;
  // The sums go straight to C when C = A B^T; else to a scratch [m, n] per job, combined into C after.
  const bool direct = alpha == 1.0f && beta == 0.0f;
  std::vector<std::unique_ptr<ScratchF32>> scratch;
  std::vector<float*> t(static_cast<size_t>(count));
  std::vector<int64_t> ldt(static_cast<size_t>(count));
  for (int j = 0; j < count; ++j) {
    if (direct) {
      t[j] = jobs[j].c;
      ldt[j] = jobs[j].ldc;
    } else {
      scratch.push_back(std::make_unique<ScratchF32>(m * jobs[j].n));
      t[j] = scratch.back()->data();
      ldt[j] = jobs[j].n;
    }
    if (k == 0)  // no products: every sum is its starting zero
      for (int64_t i = 0; i < m; ++i) std::fill(t[j] + i * ldt[j], t[j] + i * ldt[j] + jobs[j].n, 0.0f);
  }
  if (k > 0) {
    const KernelSet& ks = kernel_set();
    // at least ~4M multiply-adds (~25 us) per range: waking a pool thread costs tens of microseconds
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, kPanel * k * m));
    parallel_for(panels, grain, [&](int64_t q0, int64_t q1) {
      for (int j = 0; j < count; ++j) {
        const int64_t lo = std::max(q0, first[j]) - first[j], hi = std::min(q1, first[j + 1]) - first[j];
        if (lo < hi) job_panels(ks, m, k, a, lda, jobs[j], t[j], ldt[j], lo, hi);
      }
    });
  }
  if (direct) return;
  for (int j = 0; j < count; ++j) {
    const RowsJob& job = jobs[j];
    parallel_for(m, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, job.n)), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i)
        for (int64_t x = 0; x < job.n; ++x) {
          const float s = t[j][i * job.n + x];
          float* out = job.c + i * job.ldc + x;
          *out = beta == 0.0f ? alpha * s : alpha * s + beta * *out;
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
