#include <algorithm>
#include <cmath>
#include <vector>

#include "../include/bf16.h"
#include "optim_kernels.h"
#include "threadpool.h"

namespace spinlm {
namespace {

constexpr int64_t kGrain = 1 << 15;

// Writes the model's copy of an updated master value.
inline void store_param(void* param, DType dt, int64_t i, float w) {
  if (dt == DType::kBF16) static_cast<uint16_t*>(param)[i] = f32_to_bf16(w);
  else static_cast<float*>(param)[i] = w;
}

}  // namespace

void rmsprop_step(void* param, DType param_dt, float* master, const float* grad, float* square_avg,
                  int64_t n, const RmspropHyper& h, const float* grad_scale) {
  // With an f32 parameter and no separate master, the parameter is the master.
  float* w = master ? master : static_cast<float*>(param);
  const float scale = grad_scale ? *grad_scale : 1.0f;
  const float lr = static_cast<float>(h.lr), alpha = static_cast<float>(h.alpha);
  // 1 - alpha is formed in double (as torch does with its Python float): 1 - float(alpha) would carry
  // float(alpha)'s rounding error, ~1e-6 relative for 0.99, into every square_avg
  const float one_minus_alpha = static_cast<float>(1.0 - h.alpha);
  const float eps = static_cast<float>(h.eps), wd = static_cast<float>(h.weight_decay);
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float g = grad[i] * scale;
      if (wd != 0.0f) g += wd * w[i];
      const float v = alpha * square_avg[i] + one_minus_alpha * g * g;
      square_avg[i] = v;
      w[i] -= lr * (g / (std::sqrt(v) + eps));  // torch's order: addcdiv(g, avg, -lr)
      if (master) store_param(param, param_dt, i, w[i]);
    }
  });
}

void adamw_step(void* param, DType param_dt, float* master, const float* grad, float* exp_avg,
                float* exp_avg_sq, int64_t n, const AdamwHyper& h, const float* grad_scale) {
  float* w = master ? master : static_cast<float*>(param);
  const float scale = grad_scale ? *grad_scale : 1.0f;
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(h.step));
  const float step_size = static_cast<float>(h.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = static_cast<float>(1.0 - h.lr * h.weight_decay);
  const float b1 = static_cast<float>(h.beta1), b2 = static_cast<float>(h.beta2);
  // 1 - beta in double (as torch forms its Python floats): 1 - float(0.999) is off by 1.3e-5 relative,
  // which moved every AdamW step by ~6e-6 of its size (found by the model-step test against torch)
  const float one_minus_b1 = static_cast<float>(1.0 - h.beta1), one_minus_b2 = static_cast<float>(1.0 - h.beta2);
  const float eps = static_cast<float>(h.eps);
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = grad[i] * scale;
      const float m = b1 * exp_avg[i] + one_minus_b1 * g;
      const float v = b2 * exp_avg_sq[i] + one_minus_b2 * g * g;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
      const float p = w[i] * decay;
      w[i] = p - step_size * (m / (std::sqrt(v) / bc2_sqrt + eps));  // torch's order
      if (master) store_param(param, param_dt, i, w[i]);
    }
  });
}

double sum_squares(const float* x, int64_t n) {
  // Fixed chunks, each summed in order into its own double, then the chunks in order: the result
  // does not depend on the thread count.
  const int64_t chunks = (n + kGrain - 1) / kGrain;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int64_t end = std::min(n, (c + 1) * kGrain);
      int64_t i = c * kGrain;
      for (; i + 8 <= end; i += 8)
        for (int l = 0; l < 8; ++l) lanes[l] += static_cast<double>(x[i + l]) * x[i + l];
      for (; i < end; ++i) lanes[0] += static_cast<double>(x[i]) * x[i];
      partial[c] = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    }
  });
  double s = 0;
  for (double p : partial) s += p;
  return s;
}

void sum_squares_into(const float* x, int64_t n, float* out) { *out = static_cast<float>(sum_squares(x, n)); }

void clip_coefficient(const float* sumsq, int64_t k, double max_norm, float* out) {
  double total = 0;
  for (int64_t i = 0; i < k; ++i) total += sumsq[i];
  const double norm = std::sqrt(total);
  out[0] = static_cast<float>(norm);
  out[1] = static_cast<float>(std::min(1.0, max_norm / (norm + 1e-6)));
}

void accumulate(float* acc, const float* x, int64_t n, double alpha) {
  for (int64_t i = 0; i < n; ++i) acc[i] = static_cast<float>(static_cast<double>(acc[i]) + alpha * static_cast<double>(x[i]));
}

void scale_inplace(float* y, int64_t n, float a) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] *= a;
  });
}

void softcap_inplace(float* y, int64_t n, float c) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = c * std::tanh(y[i] / c);
  });
}

}  // namespace spinlm
