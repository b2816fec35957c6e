// CPU kernel entry points. Plain pointers and 64-bit sizes; the N-API layer (addon.cc) validates
// shapes, dtypes, bounds and target ranges before calling, so kernels assume valid input.
// The CUDA backend implements the same signatures (native/cuda) with the math of native/include.
#pragma once
#include <cstdint>

#include "../include/spin_math.h"

namespace spinlm {

enum class DType : int32_t { kF32 = 0, kBF16 = 1, kI32 = 2 };
inline int64_t dtype_size(DType d) { return d == DType::kBF16 ? 2 : 4; }

// Index of the first target outside [0, v) other than kIgnoreIndex, or -1 if all are valid.
int64_t first_bad_target(const int32_t* targets, int64_t n, int64_t v);

// logits [n, v] (f32 or bf16), targets [n] -> logp[r] = z[r, y_r] - lse[r], lse[r] = logsumexp(z[r, :]).
// One read of each row from memory (max then sum of exp from cache). Ignored rows: logp = lse = 0.
void logprob_gather(const void* logits, DType dt, int64_t n, int64_t v, const int32_t* targets,
                    float* logp, float* lse);

// Backward of logprob_gather: dlogits[r, j] = dlogp[r] * (1[j = y_r] - softmax(z[r, :])_j), from the
// saved lse (no second reduction). The target column uses 1 - p_y = -expm1(logp_y) in fp32.
// Ignored rows are written as exact zeros. dlogits may alias logits (same dtype) to work in place.
void logprob_gather_backward(const void* logits, DType dt, int64_t n, int64_t v,
                             const int32_t* targets, const float* lse, const float* dlogp,
                             void* dlogits, DType out_dt);

// Per-sequence sums: out[s] = sum of logp[r] over rows with seg[r] == s (seg = -1: in no sequence).
// Accumulates in double, in row order: deterministic, so policy and reference agree bit for bit.
void sequence_logprob(const float* logp, const int32_t* seg, int64_t n, int64_t num_seqs, float* out);

// Backward: dlogp[r] = dseq[seg[r]] (0 for seg = -1).
void sequence_logprob_backward(const float* dseq, const int32_t* seg, int64_t n, int64_t num_seqs,
                               float* dlogp);

// SPIN loss per pair from summed log-probs [b] of policy/reference on real/generated answers.
// out is [7, b]: loss, reward_real, reward_gen, margin, accuracy, dS_real, dS_gen (spin_math.h).
// pair_mask [b] (nullptr = all pairs count): pairs with mask 0 (no tokens, or dropped because the
// generated answer equals the real one) get all-zero rows; the gradients are of the mean loss over
// the counted pairs, and a batch with no counted pair has zero loss and zero gradients.
// nll_alpha > 0 adds alpha * (-S(theta, y) / real_tokens[i]) to each pair's loss (the mean token NLL
// of the real answer, as iterative RPO adds it); real_tokens [b] is then required.
void spin_loss(const float* policy_real, const float* policy_gen, const float* ref_real,
               const float* ref_gen, const float* pair_mask, int64_t b, double beta,
               SpinLossType type, double nll_alpha, const float* real_tokens, float* out);

// Memory-bandwidth probe for benchmarks: sums `bytes` bytes read as floats on all threads.
double stream_read(const void* data, int64_t bytes);

// Compute probe for benchmarks: `count` evaluations of the kernels' vector exp on L1-resident data,
// on all threads (the arithmetic floor of logprob_gather: one exp per logit).
double exp_throughput(int64_t count);

}  // namespace spinlm
