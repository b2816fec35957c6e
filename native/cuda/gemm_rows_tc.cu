// The row-invariant GEMM of bf16 compute on tensor cores (docs/cuda.md "Row-invariant GEMM on tensor
// cores"): C[M, N] = alpha * bf16(A)[M, K] B[N, K]^T (+ beta C), B bf16 as stored, A rounded to bf16
// (f32_to_bf16, the cast op's rounding), f32 accumulation, f32 out. The linear layers and the head of
// generation with computeDtype 'bf16'.
//
// Row invariance (docs/ops.md "Row-invariant matmul"): an output row depends only on its row of A and
// on B, never on M, the other rows or the row's position. Everything that fixes an element's sum is a
// constant of this file: the block tile (kBN columns x kBM rows), the k order (warp w of kWarps sums the
// 16-wide k tiles w, w + kWarps, w + 2 kWarps, ... of K with WMMA m16n16k16 in increasing order), and
// the reduction of the kWarps partial sums (a fixed tree: w += w + 4, w += w + 2, w += w + 1), and the
// split of K across blocks (k_split: from N and K only; the splits' sums added in order). M only
// decides how many 16-row fragments a block computes (those holding rows < M) and how many row blocks
// the grid has; rows past M are zeros in the rounded copy of A. No split of K depends on M.
//
// Decode is memory-bound on B: a block takes kBN columns of N for all (up to kBM = 64) rows and walks
// K in chunks of kBK, so each weight byte is read once per call for M <= 64 (ceil(M / 64) times past).
// B goes global -> registers (16-byte loads, the next chunk's issued before the current one's mma) ->
// shared (row stride kBK + 8 bf16: 16-byte aligned, off the bank period); A is rounded once per call
// into a device scratch [ceil(M / 16) * 16, ceil(K / 16) * 16] bf16 (zeros around), from which the
// warps load their A fragments directly (L2-resident; each element is read by one warp per block).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_common.cuh"
#include "kernels.h"
#include "model_kernels.h"
#include "runtime.h"
#include "tc.cuh"

#ifdef SPINLM_CUDA_EMU
#define SPIN_UNROLL
#else
#define SPIN_UNROLL _Pragma("unroll")
#endif

namespace spinlm::cuda {
namespace {

constexpr int kBN = 32;                         // columns of N per block: two 16-wide B fragments
constexpr int kBM = 64;                         // rows per block: up to four 16-row A fragments
constexpr int kFragsM = kBM / 16, kFragsN = kBN / 16;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBK = 512;                        // K per chunk of B in shared memory
constexpr int kLdw = kBK + 8;                   // its row stride (bf16)
constexpr int kVecs = kBN * kBK / 8 / kThreads;  // 16-byte vectors of B per thread per chunk
constexpr int64_t kSplitBlocks = 128;  // split K when N has fewer column blocks than this (k_split)
constexpr int64_t kSplitRows = 1024;   // rows per launch under split K (bounds the partial sums' memory)
constexpr int kRedWarps = kWarps / 2;            // partial sums in shared memory at once (the tree)
constexpr size_t kSmemW = static_cast<size_t>(kBN) * kLdw * 2;
constexpr size_t kSmemRed = static_cast<size_t>(kRedWarps) * kBM * kBN * 4;
constexpr size_t kSmem = kSmemW > kSmemRed ? kSmemW : kSmemRed;
static_assert(kVecs * kThreads * 8 == kBN * kBK, "whole vectors per thread");
static_assert(kSmem <= 48 * 1024, "no cudaFuncSetAttribute needed");

int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }

// out [mp, kp] bf16 = A [m, k] (row stride lda) rounded, zeros past m rows and k columns.
__global__ void rows_tc_round_kernel(int64_t m, int64_t k, SPIN_GP(const float) a, int64_t lda, int64_t mp, int64_t kp,
                                     SPIN_GP(uint16_t) out) {
  const int64_t total = mp * kp;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / kp, c = i % kp;
    out[i] = r < m && c < k ? f32_to_bf16(a[r * lda + c]) : uint16_t{0};
  }
}

__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16; }

// Block (bx, by, bz): C rows [by * kBM, +kBM) x columns [bx * kBN, +kBN), summed over the chunks
// [bz * per, (bz + 1) * per) of K; a: the rounded A [mp, kp]. Block bz writes C + bz * zstride (split K:
// the partial sums, alpha 1, beta 0; else zstride = 0 and one z). vec: B's rows are 16-byte aligned and
// k % 8 == 0 (16-byte loads), else element loads.
__global__ void __launch_bounds__(kThreads) rows_tc_kernel(int64_t m, int64_t n, int64_t k, int64_t kp, int64_t per, float alpha,
                                                           SPIN_GP(const uint16_t) a, SPIN_GP(const uint16_t) b, int64_t ldb,
                                                           int vec, float beta, SPIN_GP(float) c, int64_t ldc, int64_t zstride) {
  SPIN_DYN_SHARED(uint16_t, sw);  // B's chunk [kBN][kLdw]; after the k loop, f32 partial sums [kRedWarps][kBM][kBN]
  const int warp = threadIdx.x >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN, r0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t left = (m - r0 + 15) / 16;
  const int frags = left < kFragsM ? static_cast<int>(left) : kFragsM;  // the fragments holding rows < m
  tc::FragC acc[kFragsM][kFragsN];
SPIN_UNROLL
  for (int f = 0; f < kFragsM; ++f)
SPIN_UNROLL
    for (int j = 0; j < kFragsN; ++j) tc::fill(acc[f][j], 0.0f);

  uint4 regs[kVecs];
  auto fetch = [&](int64_t k0) {
SPIN_UNROLL
    for (int i = 0; i < kVecs; ++i) {
      const int v = threadIdx.x + i * kThreads, row = v / (kBK / 8);
      const int64_t col = n0 + row, kk = k0 + (v % (kBK / 8)) * 8;
      uint4 q = {0u, 0u, 0u, 0u};
      if (col < n && kk < k) {
        const auto p = b + col * ldb + kk;
        if (vec) {
          q = ld_vec<uint4>(p);
        } else {
          uint16_t e[8];
SPIN_UNROLL
          for (int j = 0; j < 8; ++j) e[j] = kk + j < k ? static_cast<uint16_t>(p[j]) : uint16_t{0};
          q = {pack2(e[0], e[1]), pack2(e[2], e[3]), pack2(e[4], e[5]), pack2(e[6], e[7])};
        }
      }
      regs[i] = q;
    }
  };
  const int64_t kbeg = blockIdx.z * per * kBK, kend = kbeg + per * kBK < kp ? kbeg + per * kBK : kp;
  fetch(kbeg);
  for (int64_t k0 = kbeg; k0 < kend; k0 += kBK) {
SPIN_UNROLL
    for (int i = 0; i < kVecs; ++i) {
      const int v = threadIdx.x + i * kThreads;
      SPIN_CAST(uint4, sw + (v / (kBK / 8)) * kLdw + (v % (kBK / 8)) * 8)[0] = regs[i];
    }
    __syncthreads();
    if (k0 + kBK < kend) fetch(k0 + kBK);  // in flight while this chunk's mma run
SPIN_UNROLL
    for (int t = warp; t < kBK / 16; t += kWarps) {
      if (k0 + t * 16 >= kend) break;  // past K: the chunk's rest is zeros, skipped (depends on K only)
      tc::FragBT fb[kFragsN];
SPIN_UNROLL
      for (int j = 0; j < kFragsN; ++j) tc::load(fb[j], sw + j * 16 * kLdw + t * 16, kLdw);
SPIN_UNROLL
      for (int f = 0; f < kFragsM; ++f) {
        if (f >= frags) break;
        tc::FragA fa;
        tc::load(fa, a + (r0 + f * 16) * kp + k0 + t * 16, static_cast<unsigned>(kp));
SPIN_UNROLL
        for (int j = 0; j < kFragsN; ++j) tc::mma(acc[f][j], fa, fb[j], acc[f][j]);
      }
    }
    __syncthreads();  // every warp has read the chunk before the next one is stored
  }

  // The warps' partial sums, added in a fixed tree (half = 4, 2, 1: warp w += warp w + half). The loops
  // over fragments are unrolled (a fragment indexed at run time would live in local memory).
  auto red = SPIN_CAST(float, sw);
  for (int half = kWarps / 2; half >= 1; half /= 2) {
    if (warp >= half && warp < 2 * half) {
      SPIN_UNROLL
      for (int f = 0; f < kFragsM; ++f)
        SPIN_UNROLL
        for (int j = 0; j < kFragsN; ++j)
          if (f < frags) tc::store(red + ((warp - half) * kBM + f * 16) * kBN + j * 16, acc[f][j], kBN, true);
    }
    __syncthreads();
    if (warp < half) {
      SPIN_UNROLL
      for (int f = 0; f < kFragsM; ++f)
        SPIN_UNROLL
        for (int j = 0; j < kFragsN; ++j) {
          if (f >= frags) continue;
          tc::FragC o;
          tc::load_acc(o, red + (warp * kBM + f * 16) * kBN + j * 16, kBN, true);
          SPIN_UNROLL
          for (int e = 0; e < o.num_elements; ++e) acc[f][j].x[e] += o.x[e];
        }
    }
    __syncthreads();
  }
  if (warp == 0) {
    SPIN_UNROLL
    for (int f = 0; f < kFragsM; ++f)
      SPIN_UNROLL
      for (int j = 0; j < kFragsN; ++j)
        if (f < frags) tc::store(red + f * 16 * kBN + j * 16, acc[f][j], kBN, true);
  }
  __syncthreads();
  const auto out = c + blockIdx.z * zstride;
  for (int i = threadIdx.x; i < frags * 16 * kBN; i += kThreads) {
    const int64_t row = r0 + i / kBN, col = n0 + i % kBN;
    if (row < m && col < n) {
      float r = alpha * red[i];
      if (beta != 0.0f) r += beta * out[row * ldc + col];
      out[row * ldc + col] = r;
    }
  }
}

// Split K: C = alpha * (part[0] + part[1] + ... in order) (+ beta C), part [splits][m][n].
__global__ void rows_tc_finish_kernel(int64_t m, int64_t n, int splits, SPIN_GP(const float) part, float alpha, float beta,
                                      SPIN_GP(float) c, int64_t ldc) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m * n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = part[i];
    for (int z = 1; z < splits; ++z) sum += part[z * m * n + i];
    const int64_t row = i / n, col = i % n;
    float r = alpha * sum;
    if (beta != 0.0f) r += beta * c[row * ldc + col];
    c[row * ldc + col] = r;
  }
}

}  // namespace

RowsTcA rows_tc_round(int64_t m, int64_t k, const float* a, int64_t lda) {
  RowsTcA r{nullptr, m, k, round16(k)};
  const int64_t mp = round16(m);
  if (mp * r.kp == 0) return r;  // no rows, or k = 0 (no A is read)
  auto* out = static_cast<uint16_t*>(scratch(static_cast<size_t>(mp * r.kp) * 2, "matmul"));
  SPIN_LAUNCH(rows_tc_round_kernel, dim3(elementwise_blocks(mp * r.kp, 256)), dim3(256), 0, stream(), m, k, a, lda, mp, r.kp, out);
  r.p = out;
  return r;
}

// K's chunks per split and the splits: from n and k only (never m, nor the device), so that a small n
// still gives about kSplitBlocks column blocks x splits (the k / v projections of grouped-query attention).
struct KSplit {
  int64_t per, splits;
};
KSplit k_split(int64_t n, int64_t kp) {
  const int64_t chunks = (kp + kBK - 1) / kBK, blocks = (n + kBN - 1) / kBN;
  if (chunks <= 1 || blocks >= kSplitBlocks) return {chunks > 0 ? chunks : 1, 1};
  const int64_t want = std::min(chunks, kSplitBlocks / blocks), per = (chunks + want - 1) / want;
  return {per, (chunks + per - 1) / per};
}

void rows_tc_gemm(const RowsTcA& a, int64_t n, float alpha, const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (a.m == 0 || n == 0) return;
  const bool vec = a.k % 8 == 0 && ldb % 8 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
  const KSplit ks = k_split(n, a.kp);
  const auto* bp = static_cast<const uint16_t*>(a.k ? b : nullptr);
  if (ks.splits == 1) {
    const dim3 grid(static_cast<unsigned>((n + kBN - 1) / kBN), static_cast<unsigned>((a.m + kBM - 1) / kBM));
    SPIN_LAUNCH(rows_tc_kernel, grid, dim3(kThreads), kSmem, stream(), a.m, n, a.k, a.kp, ks.per, alpha,
                static_cast<const uint16_t*>(a.kp ? a.p : nullptr), bp, ldb, vec ? 1 : 0, beta, c, ldc, int64_t{0});
    check_launch("matmul");
    return;
  }
  // Partial sums [splits][rows][n] for up to kSplitRows rows at a time (rows are independent).
  const int64_t rows = std::min(a.m, kSplitRows);
  const size_t bytes = static_cast<size_t>(ks.splits * rows * n) * sizeof(float);
  AllocResult part = device_alloc(bytes);
  if (!part.ptr) throw std::runtime_error("matmul: " + part.error);
  for (int64_t r0 = 0; r0 < a.m; r0 += rows) {
    const int64_t rc = std::min(rows, a.m - r0);
    const dim3 grid(static_cast<unsigned>((n + kBN - 1) / kBN), static_cast<unsigned>((rc + kBM - 1) / kBM),
                    static_cast<unsigned>(ks.splits));
    auto* pf = static_cast<float*>(part.ptr);
    SPIN_LAUNCH(rows_tc_kernel, grid, dim3(kThreads), kSmem, stream(), rc, n, a.k, a.kp, ks.per, 1.0f,
                static_cast<const uint16_t*>(a.p + r0 * a.kp), bp, ldb, vec ? 1 : 0, 0.0f, pf, n, rc * n);
    SPIN_LAUNCH(rows_tc_finish_kernel, dim3(elementwise_blocks(rc * n, 256)), dim3(256), 0, stream(), rc, n,
                static_cast<int>(ks.splits), static_cast<const float*>(pf), alpha, beta, c + r0 * ldc, ldc);
  }
  device_free(part.ptr, bytes);  // one stream orders every use: the block can be reused at once
  check_launch("matmul");
}

void matmul_rows_tc(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                    float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  rows_tc_gemm(rows_tc_round(m, k, a, lda), n, alpha, b, ldb, beta, c, ldc);
}

}  // namespace spinlm::cuda
