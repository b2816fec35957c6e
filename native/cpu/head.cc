// The LM head fused with the target log-probs (docs/ops.md "Fused head") on the CPU: the logits h w^T
// exist only as a panel of rows x vocabulary columns at a time, never as [n, v].
//
// The panel products are sgemm calls (OpenBLAS): fast, but a row's result depends on where it sits in
// the call (OpenBLAS's kernels round differently at tile edges and thread splits: measured). With
// row_invariant the forward's products come from matmul_rows instead (gemm_rows.cc: each element
// summed in one fixed order), so a row's lse and logp are the same bits in any call; it is as fast as
// sgemm with AVX-512 and ~10x slower where only AVX2 exists (its 16-lane code is scalarized there).
//
// Forward: per panel of 2048 vocabulary columns (w widened or copied once into an f32 [2048, H] buffer
// for sgemm) and chunk of 256 rows, the panel's logits are soft-capped and each row absorbs the panel's
// log-sum-exp into its running (max, sum) in panel order; the target's logit is kept when its column is
// in the panel. Backward: the panel's logits again by sgemm, turned in place into g = dlogp (1[j = y] -
// p_j) (times the soft-cap's derivative), then dh (+)= g w_panel and dw_panel += g^T h by sgemm.
// Scratch: the f32 w panel and one panel of logits (256 x 2048 f32: 2 MiB).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../include/bf16.h"
#include "../include/lse.h"
#include "kernels.h"
#include "loss_rows.h"
#include "memory.h"
#include "model_kernels.h"
#include "threadpool.h"

namespace spinlm {
namespace {

constexpr int64_t kPanel = 2048;  // vocabulary columns per panel (at most)
constexpr int64_t kRows = 256;    // rows per chunk

const void* w_rows(const void* w, DType wdt, int64_t row, int64_t hdim) {
  return static_cast<const char*>(w) + row * hdim * dtype_size(wdt);
}

// z -> c tanh(z / c) over a row (c > 0).
void softcap_row(float* z, int64_t len, float c) {
  const float inv = 1.0f / c;
  for (int64_t j = 0; j < len; ++j) z[j] = c * std::tanh(z[j] * inv);
}

// Rows per parallel task: ~64K logits each.
int64_t grain(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, cols)); }

// w rows [v0, v0 + vc) as f32 into panel [vc, hdim].
void fill_panel(const void* w, DType wdt, int64_t v0, int64_t vc, int64_t hdim, float* panel) {
  parallel_for(vc, grain(hdim), [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) {
      float* out = panel + r * hdim;
      if (wdt == DType::kBF16) {
        const uint16_t* src = static_cast<const uint16_t*>(w_rows(w, wdt, v0 + r, hdim));
        for (int64_t k = 0; k < hdim; ++k) out[k] = bf16_to_f32(src[k]);
      } else {
        const float* src = static_cast<const float*>(w_rows(w, wdt, v0 + r, hdim));
        std::copy(src, src + hdim, out);
      }
    }
  });
}

// x -> bf16(x) in place (round to nearest even, as the cast op), in parallel.
void round_to_bf16(float* x, int64_t len) {
  parallel_for(len, int64_t{1} << 16, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
  });
}

// The logits of rows [r0, r0 + rc) against the panel (vc columns): z [rc, vc]. Row-invariant: w's rows
// read in place by matmul_rows (h rounded to bf16 first with compute_bf16); else sgemm on the f32 panel.
void panel_logits(const float* h, int64_t r0, int64_t rc, int64_t hdim, const void* w, DType wdt, int64_t v0, int64_t vc,
                  bool row_invariant, bool compute_bf16, const float* panel, float* z) {
  if (row_invariant || compute_bf16)
    matmul_rows(rc, vc, hdim, 1.0f, h + r0 * hdim, hdim, w_rows(w, wdt, v0, hdim), wdt, hdim, 0.0f, z, vc,
                compute_bf16 && wdt == DType::kBF16);
  else
    matmul(false, true, rc, vc, hdim, 1.0f, h + r0 * hdim, hdim, panel, DType::kF32, hdim, 0.0f, z, vc);
}

}  // namespace

void head_logprob(const float* h, int64_t n, int64_t hdim, const void* w, DType wdt, int64_t v, const int32_t* targets,
                  float softcap, bool row_invariant, bool compute_bf16, float* logp, float* lse) {
  if (n == 0) return;
  std::vector<LseAcc> acc(static_cast<size_t>(n), lse_empty());
  std::vector<float> zy(static_cast<size_t>(n), NAN);
  const int64_t p = std::min(kPanel, v);
  const bool rows = row_invariant || compute_bf16;
  ScratchF32 panel(rows ? 1 : p * hdim), z(std::min(n, kRows) * p);
  for (int64_t v0 = 0; v0 < v; v0 += p) {
    const int64_t vc = std::min(p, v - v0);
    if (!rows) fill_panel(w, wdt, v0, vc, hdim, panel.data());
    for (int64_t r0 = 0; r0 < n; r0 += kRows) {
      const int64_t rc = std::min(kRows, n - r0);
      panel_logits(h, r0, rc, hdim, w, wdt, v0, vc, row_invariant, compute_bf16, panel.data(), z.data());
      parallel_for(rc, grain(vc), [&](int64_t a, int64_t b) {
        for (int64_t i = a; i < b; ++i) {
          const int64_t r = r0 + i;
          const int32_t y = targets[r];
          if (y == kIgnoreIndex) continue;
          float* row = z.data() + i * vc;
          if (softcap > 0.0f) softcap_row(row, vc, softcap);
          acc[r] = lse_merge(acc[r], LseAcc{row_logsumexp(row, vc), 1.0f});
          if (y >= v0 && y < v0 + vc) zy[r] = row[y - v0];
        }
      });
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    if (targets[r] == kIgnoreIndex) {
      logp[r] = lse[r] = 0.0f;
      continue;
    }
    lse[r] = lse_value(acc[r]);
    logp[r] = zy[r] - lse[r];
  }
}

void head_logprob_backward(const float* h, int64_t n, int64_t hdim, const void* w, DType wdt, int64_t v,
                           const int32_t* targets, float softcap, const float* lse, const float* dlogp, float* dh,
                           float* dw, bool compute_bf16) {
  if (n == 0) return;
  if (v == 0 || hdim == 0) {
    std::fill(dh, dh + n * hdim, 0.0f);
    return;
  }
  const int64_t p = std::min(kPanel, v);
  ScratchF32 panel(p * hdim), z(std::min(n, kRows) * p), hr(compute_bf16 ? n * hdim : 1);
  if (compute_bf16) {  // bf16 compute: h, each w panel and each g panel rounded, then the f32 sgemm calls
    std::copy(h, h + n * hdim, hr.data());
    round_to_bf16(hr.data(), n * hdim);
    h = hr.data();
  }
  for (int64_t v0 = 0; v0 < v; v0 += p) {
    const int64_t vc = std::min(p, v - v0);
    fill_panel(w, wdt, v0, vc, hdim, panel.data());
    if (compute_bf16) round_to_bf16(panel.data(), vc * hdim);
    for (int64_t r0 = 0; r0 < n; r0 += kRows) {
      const int64_t rc = std::min(kRows, n - r0);
      panel_logits(h, r0, rc, hdim, w, wdt, v0, vc, false, false, panel.data(), z.data());
      parallel_for(rc, grain(vc), [&](int64_t a, int64_t b) {
        for (int64_t i = a; i < b; ++i) {
          const int64_t r = r0 + i;
          const int32_t y = targets[r];
          float* row = z.data() + i * vc;
          if (y == kIgnoreIndex || dlogp[r] == 0.0f) {
            std::fill(row, row + vc, 0.0f);
            continue;
          }
          const float l = lse[r], g = dlogp[r];
          if (softcap > 0.0f) {
            // d/dz of c tanh(z / c) is 1 - tanh^2 = 1 - (capped / c)^2
            const float inv = 1.0f / softcap;
            for (int64_t j = 0; j < vc; ++j) {
              const float t = std::tanh(row[j] * inv), capped = softcap * t;
              const float d = (y == v0 + j) ? g * -std::expm1(capped - l) : -g * std::exp(capped - l);
              row[j] = d * (1.0f - t * t);
            }
            continue;
          }
          const bool here = y >= v0 && y < v0 + vc;
          const float zt = here ? row[y - v0] : 0.0f;
          row_softmax_grad(row, vc, l, g);
          if (here) row[y - v0] = g * -std::expm1(zt - l);
        }
      });
      if (compute_bf16) round_to_bf16(z.data(), rc * vc);
      // dh[rows] (+)= g w_panel; dw_panel += g^T h[rows] (the panel's first vc columns and rows only)
      matmul(false, false, rc, hdim, vc, 1.0f, z.data(), vc, panel.data(), DType::kF32, hdim, v0 == 0 ? 0.0f : 1.0f,
             dh + r0 * hdim, hdim);
      if (dw) matmul(true, false, vc, hdim, rc, 1.0f, z.data(), vc, h + r0 * hdim, DType::kF32, hdim, 1.0f, dw + v0 * hdim, hdim);
    }
  }
}

}  // namespace spinlm
