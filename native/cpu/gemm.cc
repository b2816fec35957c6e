// Matrix products through OpenBLAS. Never called from inside parallel_for: OpenBLAS runs its own
// threads, and the two pools would fight over the same cores.
#include <cblas.h>

#include <algorithm>
#include <new>

#include "../include/bf16.h"
#include "memory.h"
#include "model_kernels.h"
#include "threadpool.h"

namespace spinlm {
namespace {

// A bf16 B is widened to f32 for sgemm at most this many elements at a time (8 MiB). The whole
// matrix at once would hold an f32 copy of the largest weight (the 1.1B model's LM head: 262 MB) for
// as long as it is used; in panels the copy is bounded and the product stays a few large sgemm calls.
constexpr int64_t kPanelElems = int64_t{2} << 20;

// rows x cols of a bf16 matrix with leading dimension ld, widened into out [rows, cols].
void widen_rows(const uint16_t* h, int64_t ld, int64_t rows, int64_t cols, float* out) {
  parallel_for(rows, std::max<int64_t>(1, (int64_t{1} << 16) / cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < cols; ++j) out[r * cols + j] = bf16_to_f32(h[r * ld + j]);
  });
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

}  // namespace

void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            int64_t lda, const void* b, DType b_dt, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta * C
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  if (b_dt != DType::kBF16) {
    sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, static_cast<const float*>(b), ldb, beta, c, ldc);
    return;
  }
  const uint16_t* h = static_cast<const uint16_t*>(b);
  if (trans_b) {
    // B is [n, ldb]: row j holds output column j. Panels of whole rows: C[:, j0:j1] = A B[j0:j1]^T.
    const int64_t nb = std::min(n, std::max<int64_t>(1, kPanelElems / k));
    ScratchF32 panel(nb * k);
    for (int64_t j0 = 0; j0 < n; j0 += nb) {
      const int64_t cols = std::min(nb, n - j0);
      widen_rows(h + j0 * ldb, ldb, cols, k, panel.data());
      sgemm(trans_a, true, m, cols, k, alpha, a, lda, panel.data(), k, beta, c + j0, ldc);
    }
    return;
  }
  // B is [k, ldb]: row p multiplies column p of op(A). Panels of whole rows, accumulated into C:
  // C = beta C + sum over panels of op(A)[:, p0:p1] B[p0:p1] (one panel: the single product).
  const int64_t kb = std::min(k, std::max<int64_t>(1, kPanelElems / n));
  ScratchF32 panel(kb * n);
  for (int64_t p0 = 0; p0 < k; p0 += kb) {
    const int64_t depth = std::min(kb, k - p0);
    widen_rows(h + p0 * ldb, ldb, depth, n, panel.data());
    const float* a0 = trans_a ? a + p0 * lda : a + p0;  // op(A) columns p0.. (A^T: rows p0..)
    sgemm(trans_a, false, m, n, depth, alpha, a0, lda, panel.data(), n, p0 == 0 ? beta : 1.0f, c, ldc);
  }
}

}  // namespace spinlm
