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
// logits [n, v] (f32 or bf16), targets [n] -> logp[r] = z[r, y_r] - lse[r], lse[r] = logsumexp(z[r, :]).
// One read of each row from memory (a running max and sum per lane over L1-sized chunks). Ignored
// rows: logp = lse = 0.
void logprob_gather(const void* logits, DType dt, int64_t n, int64_t v, const int32_t* targets,
                    float* logp, float* lse);

// Backward of logprob_gather: dlogits[r, j] = dlogp[r] * (1[j = y_r] - softmax(z[r, :])_j), from the
// saved lse (no second reduction). The target column uses 1 - p_y = -expm1(logp_y) in fp32.
// Ignored rows are written as exact zeros. dlogits may alias logits (same dtype) to work in place.
void logprob_gather_backward(const void* logits, DType dt, int64_t n, int64_t v,
                             const int32_t* targets, const float* lse, const float* dlogp,
                             void* dlogits, DType out_dt);

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
// policy/ref f32 [2B] (real answers 0..B-1, generated B..2B-1) -> per_pair f32 [7, B] (loss, rewards
// real/generated, margin, accuracy, S(theta) real/generated; zero rows for uncounted pairs), means
// f32 [8] (the seven rows averaged over counted pairs in double, then the fraction of pairs counted),
// dseq f32 [2B] = grad_scale * d(mean loss)/dS in the same layout as policy.
void spin_loss(const float* policy, const float* ref, const float* pair_mask, int64_t b, double beta,
               SpinLossType type, double nll_alpha, const float* answer_tokens, float grad_scale,
               float* per_pair, float* means, float* dseq);

// Memory-bandwidth probe for benchmarks: sums `bytes` bytes read as floats on all threads.
// ---- memory-level kernels (tensor_ops.cc) ----
// Writes `count` copies of a 16- or 32-bit pattern (elem_bytes 2 or 4).
void fill_pattern(void* p, int64_t count, int elem_bytes, uint32_t pattern);
// f32 <-> bf16 (round to nearest even) or a same-dtype copy (memmove) of n elements.
void cast_values(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n);
// The CPU device's error word (native/include/op_errors.h): raise ORs bits in, take returns and clears.
void raise_op_error(uint32_t bits);
uint32_t take_op_errors();

// ---- sampling (sample.cc) ----
// Next token of each active row of logits f32 [B, V] as src/generate/sampler.ts defines it (Hugging
// Face order: temperature, top-k, top-p; float64 math; greedy = argmax, ties to the lowest id when
// temperature == 0 or top_k == 1). rng i32 [B, 4] holds each row's xoshiro128** state and advances by
// two draws per sampled (non-greedy, active) row. Inactive rows (active[b] == 0) get id 0. Only ids
// < limit (1 <= limit <= V) are ever chosen, greedy too: a padded vocabulary's rows past the tokenizer.
void sample_tokens(const float* logits, int64_t b, int64_t v, int64_t limit, int32_t* rng, const int32_t* active,
                   double temperature, int64_t top_k, double top_p, int32_t* out);

double stream_read(const void* data, int64_t bytes);

// Compute probe for benchmarks: `count` evaluations of the loss kernels' vector exp on L1-resident
// data, on all threads (the arithmetic floor of logprob_gather: one exp per logit). cephes = true
// measures simd::exp_neg instead, the exp the loss kernels used before (issue 13's reference floor).
double exp_throughput(int64_t count, bool cephes = false);

}  // namespace spinlm
