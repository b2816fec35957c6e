// Elementwise and per-row kernels of the Llama layers: embedding, RMSNorm (w or Gemma's 1 + w), RoPE,
// SwiGLU and GeGLU, residuals, biases.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../include/bf16.h"
#include "model_kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace spinlm {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per task for elementwise loops
constexpr int64_t kRowChunk = kColumnChunkRows;  // rows per partial sum of column reductions (common.h)

inline float load(const void* p, DType dt, int64_t i) {
  return dt == DType::kBF16 ? bf16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

inline float sigmoidf(float x) { return 1.0f / (1.0f + std::exp(-x)); }

using simd::kLanes;
using simd::vf;

// sigmoid of 16 lanes: e = exp(-|x|) <= 1, then 1 / (1 + e) or e / (1 + e) by sign (no overflow).
SPINLM_INLINE vf sigmoid_v(vf x) {
  const vf ax = x < simd::splat(0.0f) ? -x : x;
  const vf e = simd::exp_neg(-ax);
  const vf one = simd::splat(1.0f);
  return x < simd::splat(0.0f) ? e / (one + e) : one / (one + e);
}

SPINLM_CLONES void swiglu_range(const float* gate, const float* up, float* out, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + kLanes <= i1; i += kLanes) {
    const vf g = simd::load(gate + i);
    simd::store(out + i, g * sigmoid_v(g) * simd::load(up + i));
  }
  for (; i < i1; ++i) out[i] = gate[i] * sigmoidf(gate[i]) * up[i];
}

SPINLM_CLONES void swiglu_backward_range(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t i0, int64_t i1) {
  int64_t i = i0;
  const vf one = simd::splat(1.0f);
  for (; i + kLanes <= i1; i += kLanes) {
    const vf g = simd::load(gate + i), sg = sigmoid_v(g), d = simd::load(dout + i);
    simd::store(dup + i, d * g * sg);
    simd::store(dgate + i, d * simd::load(up + i) * sg * (one + g * (one - sg)));
  }
  for (; i < i1; ++i) {
    const float g = gate[i], sg = sigmoidf(g), d = dout[i];
    dup[i] = d * g * sg;
    dgate[i] = d * up[i] * sg * (1.0f + g * (1.0f - sg));
  }
}

// GeGLU (common.h GluActivation::kGeluTanh): gelu(g) = g sigmoid(z), z = 2 sqrt(2/pi) g (1 + 0.044715 g^2).
SPINLM_INLINE vf gelu_z(vf g) { return simd::splat(kGeluTanh2C) * g * (simd::splat(1.0f) + simd::splat(kGeluTanhA) * g * g); }
inline float gelu_z(float g) { return kGeluTanh2C * g * (1.0f + kGeluTanhA * g * g); }
// dz/dg = 2 sqrt(2/pi) (1 + 3 0.044715 g^2)
SPINLM_INLINE vf gelu_dz(vf g) { return simd::splat(kGeluTanh2C) * (simd::splat(1.0f) + simd::splat(3.0f * kGeluTanhA) * g * g); }
inline float gelu_dz(float g) { return kGeluTanh2C * (1.0f + 3.0f * kGeluTanhA * g * g); }

SPINLM_CLONES void geglu_range(const float* gate, const float* up, float* out, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + kLanes <= i1; i += kLanes) {
    const vf g = simd::load(gate + i);
    simd::store(out + i, g * sigmoid_v(gelu_z(g)) * simd::load(up + i));
  }
  for (; i < i1; ++i) out[i] = gate[i] * sigmoidf(gelu_z(gate[i])) * up[i];
}

// d/dg of g sigmoid(z) = s (1 + g (1 - s) dz/dg), s = sigmoid(z).
SPINLM_CLONES void geglu_backward_range(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t i0, int64_t i1) {
  int64_t i = i0;
  const vf one = simd::splat(1.0f);
  for (; i + kLanes <= i1; i += kLanes) {
    const vf g = simd::load(gate + i), s = sigmoid_v(gelu_z(g)), d = simd::load(dout + i);
    simd::store(dup + i, d * g * s);
    simd::store(dgate + i, d * simd::load(up + i) * s * (one + g * (one - s) * gelu_dz(g)));
  }
  for (; i < i1; ++i) {
    const float g = gate[i], s = sigmoidf(gelu_z(g)), d = dout[i];
    dup[i] = d * g * s;
    dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s) * gelu_dz(g));
  }
}

// Column sums of f(t, j) over rows t in [0, rows), into acc[j] (+=): fixed chunks of rows, each summed
// in double, then chunks in order; parallel over chunks. The result is independent of thread count.
template <class F>
void column_reduce(int64_t rows, int64_t cols, float* acc, F f) {
  const int64_t chunks = (rows + kRowChunk - 1) / kRowChunk;
  if (chunks == 0) return;
  std::vector<double> partial(static_cast<size_t>(chunks * cols), 0.0);
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double* p = partial.data() + c * cols;
      for (int64_t t = c * kRowChunk; t < std::min(rows, (c + 1) * kRowChunk); ++t)
        for (int64_t j = 0; j < cols; ++j) p[j] += f(t, j);
    }
  });
  parallel_for(cols, 256, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += partial[c * cols + j];
      acc[j] += static_cast<float>(s);
    }
  });
}

// RMSNorm's scale as f32: w, or 1 + w added in f32 as w is read (Gemma; 1 + w stored in bf16 would round).
std::vector<float> norm_weight(const void* w, DType w_dt, int64_t h, bool unit_offset) {
  std::vector<float> wf(static_cast<size_t>(h));
  for (int64_t j = 0; j < h; ++j) wf[j] = unit_offset ? 1.0f + load(w, w_dt, j) : load(w, w_dt, j);
  return wf;
}

}  // namespace

void embedding(const int32_t* ids, int64_t t, const void* table, DType dt, int64_t h, float* out) {
  parallel_for(t, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, h)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = row_offset(ids[r], h);
      float* o = out + row_offset(r, h);
      for (int64_t j = 0; j < h; ++j) o[j] = load(table, dt, base + j);
    }
  });
}

void embedding_backward(const int32_t* ids, int64_t t, const float* dout, int64_t h, float* dtable) {
  // Each thread owns a block of columns and walks the tokens in order: no two threads write one value.
  parallel_for(h, 64, [&](int64_t j0, int64_t j1) {
    for (int64_t r = 0; r < t; ++r) {
      float* d = dtable + row_offset(ids[r], h);
      const float* g = dout + row_offset(r, h);
      for (int64_t j = j0; j < j1; ++j) d[j] += g[j];
    }
  });
}

void rmsnorm(const float* x, const void* w, DType w_dt, int64_t t, int64_t h, float eps, float* y,
             float* rstd, bool unit_offset) {
  const std::vector<float> wf = norm_weight(w, w_dt, h, unit_offset);
  parallel_for(t, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, h)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + row_offset(r, h);
      float* yr = y + row_offset(r, h);
      double ss = 0;
      for (int64_t j = 0; j < h; ++j) ss += static_cast<double>(xr[j]) * xr[j];
      const float rs = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(h) + eps));
      rstd[r] = rs;
      for (int64_t j = 0; j < h; ++j) yr[j] = xr[j] * rs * wf[j];
    }
  });
}

void rmsnorm_backward(const float* x, const void* w, DType w_dt, const float* rstd, const float* dy,
                      int64_t t, int64_t h, float* dx, float* dw, bool unit_offset) {
  const std::vector<float> wf = norm_weight(w, w_dt, h, unit_offset);
  parallel_for(t, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, h)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + row_offset(r, h);
      const float* gr = dy + row_offset(r, h);
      float* dr = dx + row_offset(r, h);
      const float rs = rstd[r];
      double dot = 0;  // sum_j w_j dy_j x_j
      for (int64_t j = 0; j < h; ++j) dot += static_cast<double>(wf[j]) * gr[j] * xr[j];
      const float c = static_cast<float>(dot / static_cast<double>(h)) * rs * rs * rs;
      for (int64_t j = 0; j < h; ++j) dr[j] = rs * wf[j] * gr[j] - xr[j] * c;
    }
  });
  if (dw) column_reduce(t, h, dw, [&](int64_t r, int64_t j) { return static_cast<double>(dy[r * h + j]) * x[r * h + j] * rstd[r]; });
}

void rope(float* x, const int32_t* pos, int64_t t, int64_t heads, int64_t hd, const float* inv_freq,
          float attn, bool inverse) {
  const int64_t half = hd / 2;
  parallel_for(t, std::max<int64_t>(1, 1024 / std::max<int64_t>(1, heads * hd)), [&](int64_t r0, int64_t r1) {
    std::vector<float> cs(static_cast<size_t>(hd));
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(pos[r]) * inv_freq[i];  // fp32 product, as HF
        cs[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * attn;  // x 1 is exact
        const float s = static_cast<float>(std::sin(static_cast<double>(angle))) * attn;
        cs[half + i] = inverse ? -s : s;
      }
      for (int64_t hh = 0; hh < heads; ++hh) {
        float* v = x + (r * heads + hh) * hd;
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[half + i], c = cs[i], s = cs[half + i];
          v[i] = a * c - b * s;
          v[half + i] = b * c + a * s;
        }
      }
    }
  });
}

void swiglu(const float* gate, const float* up, int64_t n, float* out, GluActivation act) {
  const auto range = act == GluActivation::kGeluTanh ? geglu_range : swiglu_range;
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) { range(gate, up, out, i0, i1); });
}

void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n, float* dgate,
                     float* dup, GluActivation act) {
  const auto range = act == GluActivation::kGeluTanh ? geglu_backward_range : swiglu_backward_range;
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) { range(gate, up, dout, dgate, dup, i0, i1); });
}

namespace {
// 16 values at a time through simd::store's rounding: the bits of f32_to_bf16 (the cast op's).
SPINLM_CLONES void to_bf16_row(const float* s, uint16_t* d, int64_t n) {
  int64_t c = 0;
  for (; c + simd::kLanes <= n; c += simd::kLanes) simd::store(d + c, simd::load(s + c));
  for (; c < n; ++c) d[c] = f32_to_bf16(s[c]);
}
}  // namespace

void scatter_rows(const float* src, const int32_t* index, int64_t rows, int64_t cols, void* dst, DType dst_dt) {
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, cols)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = src + row_offset(r, cols);
      if (dst_dt == DType::kBF16) {
        to_bf16_row(s, static_cast<uint16_t*>(dst) + row_offset(index[r], cols), cols);
      } else {
        std::copy(s, s + cols, static_cast<float*>(dst) + row_offset(index[r], cols));
      }
    }
  });
}

void add(const float* a, const float* b, int64_t n, float* y) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = a[i] + b[i];
  });
}

void add_bias(float* x, const void* bias, DType dt, int64_t t, int64_t n) {
  std::vector<float> bf(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) bf[j] = load(bias, dt, j);
  parallel_for(t, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, n)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < n; ++j) x[r * n + j] += bf[j];
  });
}

void bias_backward(const float* dy, int64_t t, int64_t n, float* dbias) {
  column_reduce(t, n, dbias, [&](int64_t r, int64_t j) { return static_cast<double>(dy[r * n + j]); });
}

}  // namespace spinlm
