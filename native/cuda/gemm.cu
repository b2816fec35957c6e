// GEMM: C[M, N] = alpha op(A) op(B) + beta C (row-major, leading dimensions as row strides), A f32,
// B f32 or bf16, f32 accumulation. On a GPU: cublasGemmEx through dlopen (cublas.h; the mode comes
// from SPINLM_CUDA_GEMM). The 32 x 32 shared-memory tiled kernel here (each of 256 threads computes
// 4 outputs of a tile) is the emulator's GEMM, SPINLM_CUDA_GEMM=tiled's, and the fallback for
// dimensions past cuBLAS's 32-bit int arguments, and the row-invariant matmul of generation (rows
// independent of M: each output is one thread's sum over k in order).
#include <climits>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "cuda_common.cuh"
#include "kernels.h"
#include "model_kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kTile = 32;
constexpr int kThreads = 256;  // 32 columns x 8 row groups; each thread 4 rows of the tile

template <class TB>
__global__ void __launch_bounds__(kThreads) gemm_kernel(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                                       SPIN_GP(const float) a, int64_t lda, SPIN_GP(const TB) b, int64_t ldb,
                                                       float beta, SPIN_GP(float) c, int64_t ldc) {
  SPIN_SHARED(float, as, kTile * (kTile + 1));
  SPIN_SHARED(float, bs, kTile * (kTile + 1));
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;  // ty in [0, 8)
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
    __syncthreads();
    for (int rr = ty; rr < kTile; rr += 8) {
      // as[r][kk] = A(row0 + r, k0 + kk); bs[kk][cc] = B(k0 + kk, col0 + cc); tx indexes the contiguous side
      {
        const int64_t r = trans_a ? row0 + tx : row0 + rr, kk = trans_a ? k0 + rr : k0 + tx;
        const float val = r < m && kk < k ? (trans_a ? a[kk * lda + r] : a[r * lda + kk]) : 0.0f;
        if (trans_a) as[tx * (kTile + 1) + rr] = val;
        else as[rr * (kTile + 1) + tx] = val;
      }
      {
        const int64_t kk = trans_b ? k0 + tx : k0 + rr, cc = trans_b ? col0 + rr : col0 + tx;
        const float val = kk < k && cc < n ? to_f32(trans_b ? b[cc * ldb + kk] : b[kk * ldb + cc]) : 0.0f;
        if (trans_b) bs[tx * (kTile + 1) + rr] = val;
        else bs[rr * (kTile + 1) + tx] = val;
      }
    }
    __syncthreads();
    for (int kk = 0; kk < kTile; ++kk) {
      const float bv = bs[kk * (kTile + 1) + tx];
      for (int i = 0; i < 4; ++i) acc[i] += as[(ty + 8 * i) * (kTile + 1) + kk] * bv;
    }
  }
  const int64_t col = col0 + tx;
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty + 8 * i;
    if (row < m && col < n) {
      float r = alpha * acc[i];
      if (beta != 0.0f) r += beta * c[row * ldc + col];
      c[row * ldc + col] = r;
    }
  }
}

#ifndef SPINLM_CUDA_EMU
constexpr int kCudaR32F = 0, kCudaR16BF = 14;                                 // cudaDataType_t
constexpr int kComputeF32 = 68, kComputeF32FastTF32 = 77, kGemmDefault = -1;  // cublasComputeType_t, cublasGemmAlgo_t

bool fits_int(std::initializer_list<int64_t> xs) {
  for (int64_t x : xs)
    if (x > INT_MAX) return false;
  return true;
}

// Elements a row-major [rows, cols] operand with leading dimension ld spans.
int64_t span(int64_t rows, int64_t cols, int64_t ld) { return (rows - 1) * ld + cols; }

void matmul_cublas(const blas::GemmCall& g, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                   int64_t lda, const void* b, DType b_dt, int64_t ldb, float beta, float* c) {
  const blas::GemmMode mode = gemm_mode();
  const int64_t a_span = span(trans_a ? k : m, trans_a ? m : k, lda), b_span = span(trans_b ? n : k, trans_b ? k : n, ldb);
  const void* first = b;   // cuBLAS's first operand is our B, its second our A (blas::plan)
  const void* second = a;
  int type = kCudaR32F;
  if (mode == blas::GemmMode::kBF16) {
    // Both operands as bf16 (an f32 B too), f32 compute: A lands at the scratch's start, B after it.
    const size_t a_bytes = (static_cast<size_t>(a_span) * 2 + 255) / 256 * 256;
    char* s = static_cast<char*>(scratch(a_bytes + (b_dt == DType::kBF16 ? 0 : static_cast<size_t>(b_span) * 2), "matmul"));
    spinlm::cuda::cast_values(a, DType::kF32, s, DType::kBF16, a_span);
    second = s;
    if (b_dt != DType::kBF16) {
      spinlm::cuda::cast_values(b, DType::kF32, s + a_bytes, DType::kBF16, b_span);
      first = s + a_bytes;
    }
    type = kCudaR16BF;
  } else if (b_dt == DType::kBF16) {
    // cublasGemmEx takes one input type: widen the bf16 B to f32 (exact), so the product is the f32
    // GEMM the CPU backend computes.
    void* s = scratch(static_cast<size_t>(b_span) * 4, "matmul");
    spinlm::cuda::cast_values(b, DType::kBF16, s, DType::kF32, b_span);
    first = s;
  }
  const blas::Api& api = blas_library().api;
  auto call = [&] {
    return api.gemm_ex(blas_handle(), g.transa, g.transb, static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k), &alpha,
                       first, type, static_cast<int>(g.lda), second, type, static_cast<int>(g.ldb), &beta, c, kCudaR32F,
                       static_cast<int>(g.ldc), mode == blas::GemmMode::kTF32 ? kComputeF32FastTF32 : kComputeF32, kGemmDefault);
  };
  int st = call();
  constexpr int kStatusAllocFailed = 3;  // CUBLAS_STATUS_ALLOC_FAILED: cuBLAS could not get its workspace
  if (st == kStatusAllocFailed) {
    cudaGetLastError();
    if (release_cache() > 0) st = call();
  }
  if (st != 0) {
    cudaGetLastError();  // a CUDA error cuBLAS met must not be reported by the next op under its name
    throw std::runtime_error(std::string("cublasGemmEx failed in matmul: ") + (api.status_string ? api.status_string(st) : "status " + std::to_string(st)));
  }
}
#endif

}  // namespace

void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const void* b,
            DType b_dt, int64_t ldb, float beta, float* c, int64_t ldc, bool row_invariant) {
  if (m == 0 || n == 0) return;
#ifndef SPINLM_CUDA_EMU
  if (gemm_mode() != blas::GemmMode::kTiled && k > 0 && !row_invariant) {
    const blas::GemmCall g = blas::plan(trans_a, trans_b, m, n, k, lda, ldb, ldc);
    if (fits_int({g.m, g.n, g.k, g.lda, g.ldb, g.ldc})) {
      matmul_cublas(g, trans_a, trans_b, m, n, k, alpha, a, lda, b, b_dt, ldb, beta, c);
      return;
    }
  }
#endif
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile), static_cast<unsigned>((m + kTile - 1) / kTile));
  const float* ap = k ? a : nullptr;
  if (b_dt == DType::kBF16)
    SPIN_LAUNCH(gemm_kernel<uint16_t>, grid, dim3(kThreads), 0, stream(), trans_a ? 1 : 0, trans_b ? 1 : 0, m, n, k, alpha, ap, lda,
                k ? static_cast<const uint16_t*>(b) : nullptr, ldb, beta, c, ldc);
  else
    SPIN_LAUNCH(gemm_kernel<float>, grid, dim3(kThreads), 0, stream(), trans_a ? 1 : 0, trans_b ? 1 : 0, m, n, k, alpha, ap, lda,
                k ? static_cast<const float*>(b) : nullptr, ldb, beta, c, ldc);
  check_launch("matmul");
}

}  // namespace spinlm::cuda
