// What the tensor-core (WMMA bf16) flash attention kernels share (flash_fwd.cu; the backward's may
// reuse it): the block shape, bf16 staging of q / k / v rows into padded shared tiles, a warp's score
// tile S = Q K^T on tensor cores, the soft-cap, and the shared-memory opt-in. Semantics as
// AttentionOpts.computeDtype 'bf16' (src/backend/backend.ts): inputs rounded to bf16 (nearest even) as
// they are staged, products exact in f32 accumulators, softmax and every sum f32. Tensor cores only
// through tc.cuh (its rules: 32-byte aligned tiles, 16-byte leading dims, opaque fragment layouts).
#pragma once
#include <cmath>

#include "attention_spans.cuh"
#include "cuda_common.cuh"
#include "runtime.h"
#include "tc.cuh"

// Full unrolling on the GPU (the accumulator arrays must stay in registers); nothing in the emulator.
#ifdef SPINLM_CUDA_EMU
#define SPIN_UNROLL
#else
#define SPIN_UNROLL _Pragma("unroll")
#endif

namespace spinlm::cuda::flash {

constexpr int kThreads = 128;           // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 16;        // one WMMA row tile per warp
constexpr int kBQ = kWarps * kRowsPerWarp;  // 64 queries per block
constexpr int kPadBf16 = 8;             // bf16 row padding: 16 bytes (bank spread, keeps 16-byte leading dims)
constexpr int kPadF32 = 4;              // f32 row padding: 16 bytes
constexpr int64_t kMaxHd = 256;

// The tensor-core kernels take head dims that are multiples of 16 up to 256 (other dims: the scalar kernels).
inline bool head_dim_ok(int64_t hd) { return hd > 0 && hd % 16 == 0 && hd <= kMaxHd; }

// Leading dimension (elements) of a shared bf16 tile whose rows hold hd values.
__host__ __device__ inline int64_t ld_rows(int64_t hd) { return hd + kPadBf16; }

// The soft-capped score c tanh(s / c) (c > 0).
__device__ __forceinline__ float softcapped(float s, float c) { return c * tanhf(s / c); }

// Rows r0 .. r0 + rows - 1 of head h of a [B, L, heads, hd] f32 tensor (sequence bb), rounded to bf16,
// into dst (row i at dst + i * ld); rows past l are zeros.
template <class G, class S>
__device__ __forceinline__ void stage_rows_bf16(G src, int64_t bb, int64_t l, int64_t heads, int64_t h, int64_t hd, int64_t r0,
                                                int rows, S dst, int64_t ld) {
  for (int64_t e = threadIdx.x; e < rows * hd; e += blockDim.x) {
    const int64_t i = e / hd, d = e - i * hd;
    dst[i * ld + d] = r0 + i < l ? f32_to_bf16(src[((bb * l + r0 + i) * heads + h) * hd + d]) : uint16_t{0};
  }
}

// The same from a bf16 tensor (uint16_t bits, rows 16-byte aligned: hd a multiple of 8) by 16-byte vectors.
template <class G, class S>
__device__ __forceinline__ void stage_rows(G src, int64_t bb, int64_t l, int64_t heads, int64_t h, int64_t hd, int64_t r0, int rows,
                                           S dst, int64_t ld) {
  const int64_t nv = hd / 8;  // vectors of 8 bf16 per row
  for (int64_t e = threadIdx.x; e < rows * nv; e += blockDim.x) {
    const int64_t i = e / nv, d = (e - i * nv) * 8;
    uint4 x{0u, 0u, 0u, 0u};
    if (r0 + i < l) x = ld_vec<uint4>(src + ((bb * l + r0 + i) * heads + h) * hd + d);
    SPIN_CAST(uint4, dst + i * ld + d)[0] = x;
  }
}

// One warp: the f32 scores of its 16 rows (a at a16, leading dim lda) against kKeys key rows (at b16,
// leading dim ldb) over nf * 16 dims, S[r][c] = a_r . b_c, stored row-major at s (leading dim lds).
template <int kKeys, class A, class B, class S>
__device__ __forceinline__ void warp_scores(A a16, int64_t lda, B b16, int64_t ldb, int nf, S s, int64_t lds) {
  for (int n = 0; n < kKeys / 16; ++n) {
    tc::FragC acc;
    tc::fill(acc, 0.0f);
    for (int kk = 0; kk < nf; ++kk) {
      tc::FragA fa;
      tc::FragBT fb;  // B = keys^T: column-major view of the key rows
      tc::load(fa, a16 + kk * 16, static_cast<unsigned>(lda));
      tc::load(fb, b16 + n * 16 * ldb + kk * 16, static_cast<unsigned>(ldb));
      tc::mma(acc, fa, fb, acc);
    }
    tc::store(s + n * 16, acc, static_cast<unsigned>(lds), true);
  }
}

// Past the default 48 KB of shared memory a kernel must opt in (static shared arrays count too).
inline void allow_smem(const void* kernel, size_t dyn_bytes, size_t static_bytes, const char* what) {
  if (dyn_bytes + static_bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn_bytes)), what);
}

}  // namespace spinlm::cuda::flash
