// Optimizer kernels: one fused elementwise pass per parameter tensor. The master weights and states
// are fp32; the parameter the model computes with may be f32 (then it is the master itself) or bf16
// (rewritten from the updated master, round to nearest even). `grad_scale` (a device scalar, or
// nullptr for 1) multiplies the gradient first: that is how gradient clipping is applied without a
// round trip to the host.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace spinlm {

struct RmspropHyper {
  double lr, alpha, eps, weight_decay;
};
struct AdamwHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1 on the first step (bias correction)
};

// torch.optim.RMSprop (not centered, no momentum):
//   g += wd * p; v = alpha v + (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps)
void rmsprop_step(void* param, DType param_dt, float* master, const float* grad, float* square_avg,
                  int64_t n, const RmspropHyper& h, const float* grad_scale);

// torch.optim.AdamW: p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//   p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
void adamw_step(void* param, DType param_dt, float* master, const float* grad, float* exp_avg,
                float* exp_avg_sq, int64_t n, const AdamwHyper& h, const float* grad_scale);

// Sum of squares of x[0..n) in double, in a fixed order: the same for any thread count.
double sum_squares(const float* x, int64_t n);

// *out = sum_squares(x, n) rounded to f32 (one element of the per-tensor sums of squares).
void sum_squares_into(const float* x, int64_t n, float* out);

// From per-tensor sums of squares [k]: out f32 [2] = [total norm, min(1, max_norm / (norm + 1e-6))],
// as torch.nn.utils.clip_grad_norm_ computes them (max_norm = inf: coefficient 1).
void clip_coefficient(const float* sumsq, int64_t k, double max_norm, float* out);

// acc[i] += alpha * x[i] (double math, f32 storage): metrics accumulated on the device.
void accumulate(float* acc, const float* x, int64_t n, double alpha);

// y[i] = y[i] * a (in place, f32).
void scale_inplace(float* y, int64_t n, float a);

// y[i] = c tanh(y[i] / c) (in place, f32; c > 0): the soft-cap of logits. +-inf -> +-c, NaN stays NaN,
// and c tanh(y / c) ~ y for small |y| (tanh keeps its relative accuracy near 0).
void softcap_inplace(float* y, int64_t n, float c);

}  // namespace spinlm
