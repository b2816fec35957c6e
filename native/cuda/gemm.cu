// GEMM: C[M, N] = alpha op(A) op(B) + beta C (row-major, leading dimensions as row strides), A f32,
// B f32 or bf16, f32 accumulation. This is a 32 x 32 shared-memory tiled kernel (each of 256
// threads computes 4 outputs of a tile). It is the GEMM of the emulator and of GPU builds today;
// cuBLAS (cublasGemmEx through dlopen) is the planned fast path on real GPUs (docs/cuda.md).
#include "cuda_common.cuh"
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

}  // namespace

void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const void* b,
            DType b_dt, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
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
