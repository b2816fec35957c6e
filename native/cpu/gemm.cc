// Matrix products through OpenBLAS. Never called from inside parallel_for: OpenBLAS runs its own
// threads, and the two pools would fight over the same cores.
#include <cblas.h>

#include <vector>

#include "../include/bf16.h"
#include "model_kernels.h"
#include "threadpool.h"

namespace spinlm {
namespace {

// Widened copy of a bf16 matrix, kept between calls (weights are re-used every step).
std::vector<float>& scratch() {
  static std::vector<float> buf;
  return buf;
}

}  // namespace

void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            int64_t lda, const void* b, DType b_dt, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const float* bf = static_cast<const float*>(b);
  if (b_dt == DType::kBF16) {
    const int64_t rows = trans_b ? n : k;  // B is stored [rows, ldb]
    const int64_t count = rows * ldb;
    std::vector<float>& s = scratch();
    if (static_cast<int64_t>(s.size()) < count) s.resize(static_cast<size_t>(count));
    const uint16_t* h = static_cast<const uint16_t*>(b);
    float* out = s.data();
    parallel_for(count, 1 << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) out[i] = bf16_to_f32(h[i]);
    });
    bf = out;
  }
  if (k == 0) {  // C = beta * C
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), bf, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

}  // namespace spinlm
