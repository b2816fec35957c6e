// CUDA optimizer kernels: the signatures of native/cpu/optim_kernels.h in namespace spinlm::cuda.
// Reductions (sum of squares) run in a fixed order over a fixed grid: bit-identical run to run.
#pragma once
#include <cstdint>

#include "../cpu/optim_kernels.h"
#include "kernels.h"

namespace spinlm::cuda {

using spinlm::AdamwHyper;
using spinlm::RmspropHyper;

void rmsprop_step(void* param, DType param_dt, float* master, const float* grad, float* square_avg,
                  int64_t n, const RmspropHyper& h, const float* grad_scale);
void adamw_step(void* param, DType param_dt, float* master, const float* grad, float* exp_avg,
                float* exp_avg_sq, int64_t n, const AdamwHyper& h, const float* grad_scale);
void sum_squares_into(const float* x, int64_t n, float* out);
void clip_coefficient(const float* sumsq, int64_t k, double max_norm, float* out);
void accumulate(float* acc, const float* x, int64_t n, double alpha);
void scale_inplace(float* y, int64_t n, float a);
void softcap_inplace(float* y, int64_t n, float c);

}  // namespace spinlm::cuda
