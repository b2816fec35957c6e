// Optimizer kernels: fused RMSProp / AdamW steps (gradient times the on-device clip coefficient,
// master weights in f32, bf16 parameters rewritten from them), the sum of squares in a fixed order
// (a fixed grid of partial double sums, then one block adds them in order), the clip coefficient,
// and the metric accumulate / scale.
#include <cmath>

#include "cuda_common.cuh"
#include "optim_kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSumBlocks = 256;  // fixed: the reduction order does not depend on the device

__device__ __forceinline__ void store_param(SPIN_GP(void) param, int is_bf16, int64_t i, float w) {
#ifdef SPINLM_CUDA_EMU
  if (is_bf16) param.as<uint16_t>()[i] = f32_to_bf16(w);
  else param.as<float>()[i] = w;
#else
  if (is_bf16) static_cast<uint16_t*>(param)[i] = f32_to_bf16(w);
  else static_cast<float*>(param)[i] = w;
#endif
}

__global__ void rmsprop_kernel(SPIN_GA(void) param, int is_bf16, SPIN_GA(float) w, SPIN_GP(const float) grad,
                               SPIN_GP(float) square_avg, int64_t n, float lr, float alpha, float one_minus_alpha, float eps,
                               float wd, SPIN_GP(const float) clip, int has_master) {
  const float scale = clip ? clip[1] : 1.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads) {
    float g = grad[i] * scale;
    if (wd != 0.0f) g += wd * w[i];
    const float v = alpha * square_avg[i] + one_minus_alpha * g * g;
    square_avg[i] = v;
    const float nw = w[i] - lr * (g / (sqrtf(v) + eps));
    w[i] = nw;
    if (has_master) store_param(param, is_bf16, i, nw);
  }
}

__global__ void adamw_kernel(SPIN_GA(void) param, int is_bf16, SPIN_GA(float) w, SPIN_GP(const float) grad,
                             SPIN_GP(float) exp_avg, SPIN_GP(float) exp_avg_sq, int64_t n, float step_size, float bc2_sqrt,
                             float decay, float b1, float b2, float one_minus_b1, float one_minus_b2, float eps,
                             SPIN_GP(const float) clip, int has_master) {
  const float scale = clip ? clip[1] : 1.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float g = grad[i] * scale;
    const float m = b1 * exp_avg[i] + one_minus_b1 * g;
    const float v = b2 * exp_avg_sq[i] + one_minus_b2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const float p = w[i] * decay;
    const float nw = p - step_size * (m / (sqrtf(v) / bc2_sqrt + eps));
    w[i] = nw;
    if (has_master) store_param(param, is_bf16, i, nw);
  }
}

__global__ void __launch_bounds__(kThreads) sum_squares_partial_kernel(SPIN_GP(const float) x, int64_t n, SPIN_GP(double) partial) {
  SPIN_SHARED(double, part, kThreads / 32);
  double acc = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(kSumBlocks) * kThreads)
    acc += static_cast<double>(x[i]) * x[i];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kThreads / 32; ++w) t += part[w];
    partial[blockIdx.x] = t;
  }
}

__global__ void sum_partials_kernel(SPIN_GP(const double) partial, SPIN_GP(float) out) {
  if (threadIdx.x == 0) {
    double t = 0;
    for (int i = 0; i < kSumBlocks; ++i) t += partial[i];
    out[0] = static_cast<float>(t);
  }
}

__global__ void clip_kernel(SPIN_GP(const float) sumsq, int64_t k, double max_norm, SPIN_GP(float) out) {
  if (threadIdx.x == 0) {
    double total = 0;
    for (int64_t i = 0; i < k; ++i) total += sumsq[i];
    const double norm = sqrt(total);
    out[0] = static_cast<float>(norm);
    const double c = max_norm / (norm + 1e-6);
    out[1] = static_cast<float>(c < 1.0 ? c : 1.0);
  }
}

__global__ void accumulate_kernel(SPIN_GP(float) acc, SPIN_GP(const float) x, int64_t n, double alpha) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads)
    acc[i] = static_cast<float>(static_cast<double>(acc[i]) + alpha * static_cast<double>(x[i]));
}

__global__ void scale_kernel(SPIN_GP(float) y, int64_t n, float a) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads)
    y[i] = y[i] * a;
}

// y = c tanh(y / c): tanhf is within 2 ulp (relative, so c tanh(y / c) ~ y near 0), +-inf -> +-c, NaN stays.
__global__ void softcap_kernel(SPIN_GP(float) y, int64_t n, float c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads)
    y[i] = c * tanhf(y[i] / c);
}

}  // namespace

void rmsprop_step(void* param, DType dt, float* master, const float* grad, float* square_avg, int64_t n, const RmspropHyper& h,
                  const float* grad_scale) {
  if (n == 0) return;
  float* w = master ? master : static_cast<float*>(param);
  SPIN_LAUNCH(rmsprop_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, stream(), param, dt == DType::kBF16 ? 1 : 0, w,
              // 1 - alpha formed in double, as the CPU kernels and torch do (1 - float(alpha) is off by ~1e-6)
              grad, square_avg, n, static_cast<float>(h.lr), static_cast<float>(h.alpha), static_cast<float>(1.0 - h.alpha),
              static_cast<float>(h.eps),
              static_cast<float>(h.weight_decay), grad_scale ? grad_scale - 1 : nullptr, master ? 1 : 0);
  check_launch("rmspropStep");
}

void adamw_step(void* param, DType dt, float* master, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                const AdamwHyper& h, const float* grad_scale) {
  if (n == 0) return;
  float* w = master ? master : static_cast<float*>(param);
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(h.step));
  SPIN_LAUNCH(adamw_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, stream(), param, dt == DType::kBF16 ? 1 : 0, w,
              grad, exp_avg, exp_avg_sq, n, static_cast<float>(h.lr / bc1), static_cast<float>(std::sqrt(bc2)),
              static_cast<float>(1.0 - h.lr * h.weight_decay), static_cast<float>(h.beta1), static_cast<float>(h.beta2),
              // 1 - beta formed in double (1 - float(0.999) is off by 1.3e-5 relative: native/cpu/optim.cc)
              static_cast<float>(1.0 - h.beta1), static_cast<float>(1.0 - h.beta2), static_cast<float>(h.eps), grad_scale ? grad_scale - 1 : nullptr, master ? 1 : 0);
  check_launch("adamwStep");
}

void sum_squares_into(const float* x, int64_t n, float* out) {
  double* partial = static_cast<double*>(scratch(kSumBlocks * sizeof(double), "sumSquares"));
  SPIN_LAUNCH(sum_squares_partial_kernel, dim3(kSumBlocks), dim3(kThreads), 0, stream(), n ? x : nullptr, n, partial);
  SPIN_LAUNCH(sum_partials_kernel, dim3(1), dim3(32), 0, stream(), static_cast<const double*>(partial), out);
  check_launch("sumSquares");
}

void clip_coefficient(const float* sumsq, int64_t k, double max_norm, float* out) {
  SPIN_LAUNCH(clip_kernel, dim3(1), dim3(32), 0, stream(), k ? sumsq : nullptr, k, max_norm, out);
  check_launch("clipCoefficient");
}

void accumulate(float* acc, const float* x, int64_t n, double alpha) {
  if (n == 0) return;
  SPIN_LAUNCH(accumulate_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, stream(), acc, x, n, alpha);
  check_launch("accumulate");
}

void scale_inplace(float* y, int64_t n, float a) {
  if (n == 0) return;
  SPIN_LAUNCH(scale_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, stream(), y, n, a);
  check_launch("scaleInPlace");
}

void softcap_inplace(float* y, int64_t n, float c) {
  if (n == 0) return;
  SPIN_LAUNCH(softcap_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, stream(), y, n, c);
  check_launch("softcapInPlace");
}

}  // namespace spinlm::cuda
