// CUDA kernel entry points: the same functions and signatures as native/cpu/kernels.h, in namespace
// spinlm::cuda, over device pointers. Each enqueues its kernels on the backend's stream (runtime.h)
// and returns at once. Index errors are found on the device: the offending row is skipped (its
// outputs NaN) and the op's bit is ORed into the device error word (docs/ops.md).
#pragma once
#include <cstdint>

#include "../cpu/kernels.h"

namespace spinlm::cuda {

using spinlm::DType;

void logprob_gather(const void* logits, DType dt, int64_t n, int64_t v, const int32_t* targets,
                    float* logp, float* lse);
void logprob_gather_backward(const void* logits, DType dt, int64_t n, int64_t v,
                             const int32_t* targets, const float* lse, const float* dlogp,
                             void* dlogits, DType out_dt);
// How logprobGather and its backward split the work (the same code for the GPU and the emulator):
// one block per row when there are rows enough to fill the device; for few rows with a huge
// vocabulary, `splits` blocks per row each take `chunk` columns (a multiple of 64), and a second
// kernel merges a row's partial log-sum-exps in a fixed order (deterministic).
struct GatherPlan {
  int64_t splits;
  int64_t chunk;
};
GatherPlan gather_plan(int64_t n, int64_t v, int sms);

// The LM head fused with logprob_gather: for each row r of h [n, hdim] (f32) the logits z = h_r w^T
// (w [v, hdim], f32 or bf16; softcap > 0: z -> softcap tanh(z / softcap)) are formed one vocabulary
// panel at a time (never [n, v]); lse[r] is summed online over the panels in a fixed order and
// logp[r] = z[y_r] - lse[r]. row_invariant: each row's results depend only on its h row, w and its target
// (not on n or the other rows; the GPU kernels always are but with compute_bf16). compute_bf16: h
// and w rounded to bf16 (products of bf16 values, f32 sums; the CPU: w must be bf16). Ignored rows: 0 and 0.
void head_logprob(const float* h, int64_t n, int64_t hdim, const void* w, DType wdt, int64_t v, const int32_t* targets,
                  float softcap, bool row_invariant, bool compute_bf16, float* logp, float* lse);

// Backward of head_logprob: g[r, j] = dlogp[r] (1[j = y_r] - exp(z[r, j] - lse[r])) (times
// 1 - tanh^2(z / softcap) under a softcap), recomputed panel by panel; dh [n, hdim] = g w (written),
// dw [v, hdim] += g^T h (when not null). Ignored rows contribute nothing. compute_bf16: h, w and g
// rounded to bf16 before the products (the logits' and dh = g w, dw = g^T h; f32 sums).
void head_logprob_backward(const float* h, int64_t n, int64_t hdim, const void* w, DType wdt, int64_t v,
                           const int32_t* targets, float softcap, const float* lse, const float* dlogp, float* dh,
                           float* dw, bool compute_bf16 = false);


void sequence_logprob(const float* logp, const int32_t* seg, int64_t n, int64_t num_seqs, float* out);
void sequence_logprob_backward(const float* dseq, const int32_t* seg, int64_t n, int64_t num_seqs,
                               float* dlogp);
void spin_loss(const float* policy, const float* ref, const float* pair_mask, int64_t b, double beta,
               SpinLossType type, double nll_alpha, const float* answer_tokens, float grad_scale,
               float* per_pair, float* means, float* dseq);

void fill_pattern(void* p, int64_t count, int elem_bytes, uint32_t pattern);
void cast_values(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n);

// Only ids < limit (1 <= limit <= V) are chosen (native/cpu/kernels.h).
void sample_tokens(const float* logits, int64_t b, int64_t v, int64_t limit, int32_t* rng, const int32_t* active,
                   double temperature, int64_t top_k, double top_p, int32_t* out);

}  // namespace spinlm::cuda
