// The log-prob / SPIN loss family on the GPU (docs/algorithm.md): fused log-softmax gather and its
// in-place backward (one block per row, or for few rows with a huge vocabulary several blocks per
// row whose partial log-sum-exps merge in a fixed order; 16-byte loads, warp-shuffle reductions),
// per-sequence sums in a fixed order, and the SPIN loss of a batch of pairs in one block. No float
// atomics anywhere: the same inputs give bit-identical outputs on every run.
#include "cuda_common.cuh"
#include "kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kRowThreads = 256;  // one block per row of logits
constexpr int kWarps = kRowThreads / 32;
constexpr float kNaN = __builtin_nanf("");

template <class T>
__global__ void __launch_bounds__(kRowThreads) logprob_gather_kernel(SPIN_GP(const T) logits, int64_t v,
                                                                     SPIN_GP(const int32_t) targets,
                                                                     SPIN_GP(float) logp, SPIN_GP(float) lse,
                                                                     SPIN_GP(uint32_t) err) {
  SPIN_SHARED(LseAcc, red, kWarps);
  const int64_t r = blockIdx.x;
  const int32_t y = targets[r];
  // Every thread takes the same branch: the whole block leaves before any barrier.
  if (y == kIgnoreIndex) {
    if (threadIdx.x == 0) logp[r] = lse[r] = 0.0f;
    return;
  }
  if (y < 0 || y >= v) {
    if (threadIdx.x == 0) {
      logp[r] = lse[r] = kNaN;
      atomicOr(err, static_cast<uint32_t>(kErrTargets));
    }
    return;
  }
  const auto row = logits + row_offset(r, v);
  LseAcc acc = lse_empty();
  row_foreach<T>(row, v, threadIdx.x, kRowThreads, [&](int64_t, float x) { lse_push(acc, x); });
  const LseAcc total = block_lse<kRowThreads>(acc, &red[0]);
  if (threadIdx.x == 0) {
    const float l = lse_value(total);
    lse[r] = l;
    logp[r] = to_f32(row[y]) - l;
  }
}

// The 16 bytes at p (aligned) as kN = 16 / sizeof(T) floats.
template <class T, class P, int kN>
__device__ __forceinline__ void load_run(P p, float (&x)[kN]) {
  if constexpr (sizeof(T) == 4) {
    const float4 q = ld_vec<float4>(p);
    x[0] = q.x;
    x[1] = q.y;
    x[2] = q.z;
    x[3] = q.w;
  } else {
    const uint4 q = ld_vec<uint4>(p);
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
    for (int k = 0; k < 4; ++k) {
      x[2 * k] = bf16_to_f32(static_cast<uint16_t>(w[k] & 0xffffu));
      x[2 * k + 1] = bf16_to_f32(static_cast<uint16_t>(w[k] >> 16));
    }
  }
}

// kN floats stored as O at p: 16-byte stores (two for 8 floats), or one 8-byte store for 4 bf16.
template <class O, class P, int kN>
__device__ __forceinline__ void store_run(P p, const float (&d)[kN]) {
  if constexpr (sizeof(O) == 4) {
    for (int k = 0; k < kN; k += 4) st_vec<float4>(p + k, float4{d[k], d[k + 1], d[k + 2], d[k + 3]});
  } else {
    uint32_t w[kN / 2];
    for (int k = 0; k < kN / 2; ++k) w[k] = f32_to_bf16(d[2 * k]) | static_cast<uint32_t>(f32_to_bf16(d[2 * k + 1])) << 16;
    if constexpr (kN == 8) st_vec<uint4>(p, uint4{w[0], w[1], w[2], w[3]});
    else st_vec<uint64_t>(p, static_cast<uint64_t>(w[0]) | static_cast<uint64_t>(w[1]) << 32);
  }
}

template <class T, class O>
__global__ void __launch_bounds__(kRowThreads) logprob_gather_backward_kernel(
    SPIN_GA(const T) logits, int64_t v, SPIN_GP(const int32_t) targets, SPIN_GP(const float) lse,
    SPIN_GP(const float) dlogp, int64_t chunk, SPIN_GA(O) out, SPIN_GP(uint32_t) err) {
  // Block (r, s) takes columns [s * chunk, s * chunk + len) of row r (one block per row: s = 0, chunk = v).
  const int64_t r = blockIdx.x, j0 = blockIdx.y * chunk, len = v - j0 < chunk ? v - j0 : chunk;
  const int32_t y = targets[r];
  auto orow = out + row_offset(r, v) + j0;
  const bool bad = y != kIgnoreIndex && (y < 0 || y >= v);
  if (y == kIgnoreIndex || bad) {
    const float fill = bad ? kNaN : 0.0f;
    for (int64_t j = threadIdx.x; j < len; j += kRowThreads) orow[j] = from_f32<O>(fill);
    if (bad && threadIdx.x == 0 && blockIdx.y == 0) atomicOr(err, static_cast<uint32_t>(kErrTargets));
    return;
  }
  const auto row = logits + row_offset(r, v) + j0;
  const float l = lse[r], g = dlogp[r];
  const int64_t yl = y - j0;  // the target's column within this block's span (may be outside it)
  const auto grad = [&](int64_t j, float x) { return j == yl ? g * -expm1f(x - l) : -g * expf(x - l); };
  // Each element is read and then written by the same thread, so out may be logits itself.
  // As row_foreach: a scalar head up to the loads' 16-byte alignment, 16-byte loads, a scalar tail; each
  // 16-byte load's results leave in 16-byte stores (8 for f32 logits into bf16) when out lines up.
  constexpr int kVec = 16 / sizeof(T);
  constexpr uintptr_t kStore = kVec * sizeof(O) < 16 ? kVec * sizeof(O) : 16;
  int64_t head = static_cast<int64_t>(((16 - SPIN_ADDR(row) % 16) % 16) / sizeof(T));
  if (head > len) head = len;
  if ((SPIN_ADDR(orow) + head * sizeof(O)) % kStore != 0) {  // out does not line up with the loads: scalar stores
    row_foreach<T>(row, len, threadIdx.x, kRowThreads, [&](int64_t j, float x) { orow[j] = from_f32<O>(grad(j, x)); });
    return;
  }
  for (int64_t j = threadIdx.x; j < head; j += kRowThreads) orow[j] = from_f32<O>(grad(j, to_f32(row[j])));
  const int64_t nvec = (len - head) / kVec;
  for (int64_t i = threadIdx.x; i < nvec; i += kRowThreads) {
    const int64_t j = head + i * kVec;
    float d[kVec];
    load_run<T>(row + j, d);
    for (int k = 0; k < kVec; ++k) d[k] = grad(j + k, d[k]);
    store_run<O>(orow + j, d);
  }
  for (int64_t j = head + nvec * kVec + threadIdx.x; j < len; j += kRowThreads) orow[j] = from_f32<O>(grad(j, to_f32(row[j])));
}

// Split vocabulary, pass 1: block (r, s) reduces columns [s * chunk, (s + 1) * chunk) of row r to a
// partial (max, sum), stored as two floats. Rows with an ignored or bad target are left to pass 2.
template <class T>
__global__ void __launch_bounds__(kRowThreads) logprob_partial_kernel(SPIN_GP(const T) logits, int64_t v, int64_t chunk,
                                                                      SPIN_GP(const int32_t) targets, SPIN_GP(float) partial) {
  SPIN_SHARED(LseAcc, red, kWarps);
  const int64_t r = blockIdx.x, s = blockIdx.y;
  const int32_t y = targets[r];
  if (y == kIgnoreIndex || y < 0 || y >= v) return;  // the whole block leaves before any barrier
  const int64_t j0 = s * chunk, len = v - j0 < chunk ? v - j0 : chunk;
  LseAcc acc = lse_empty();
  row_foreach<T>(logits + row_offset(r, v) + j0, len, threadIdx.x, kRowThreads, [&](int64_t, float x) { lse_push(acc, x); });
  const LseAcc total = block_lse<kRowThreads>(acc, &red[0]);
  if (threadIdx.x == 0) {
    const int64_t at = 2 * (r * gridDim.y + s);
    partial[at] = total.max;
    partial[at + 1] = total.sum;
  }
}

// Split vocabulary, pass 2: one thread per row merges the row's partials in order s = 0, 1, ...
template <class T>
__global__ void logprob_merge_kernel(SPIN_GP(const T) logits, int64_t n, int64_t v, int64_t splits, SPIN_GP(const int32_t) targets,
                                     SPIN_GP(const float) partial, SPIN_GP(float) logp, SPIN_GP(float) lse, SPIN_GP(uint32_t) err) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < n; r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t y = targets[r];
    if (y == kIgnoreIndex) {
      logp[r] = lse[r] = 0.0f;
      continue;
    }
    if (y < 0 || y >= v) {
      logp[r] = lse[r] = kNaN;
      atomicOr(err, static_cast<uint32_t>(kErrTargets));
      continue;
    }
    LseAcc acc = lse_empty();
    for (int64_t s = 0; s < splits; ++s) acc = lse_merge(acc, LseAcc{partial[2 * (r * splits + s)], partial[2 * (r * splits + s) + 1]});
    const float l = lse_value(acc);
    lse[r] = l;
    logp[r] = to_f32(logits[row_offset(r, v) + y]) - l;
  }
}

// One block per sequence: every block scans all rows (so each sees a bad segment and poisons its
// sum), adds its rows' log-probs in double per thread, then the threads in a fixed order.
constexpr int kSeqThreads = 256;
__global__ void __launch_bounds__(kSeqThreads) sequence_logprob_kernel(SPIN_GP(const float) logp, SPIN_GP(const int32_t) seg,
                                                                       int64_t n, int64_t num_seqs, SPIN_GP(float) out,
                                                                       SPIN_GP(uint32_t) err) {
  SPIN_SHARED(double, part, kSeqThreads / 32);
  const int64_t s = blockIdx.x;
  double acc = 0;
  bool bad = false;
  for (int64_t i = threadIdx.x; i < n; i += kSeqThreads) {
    const int32_t k = seg[i];
    if (k < -1 || k >= num_seqs) bad = true;
    else if (k == s) acc += static_cast<double>(logp[i]);
  }
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
  const int bad_any = __syncthreads_or(bad);  // the barrier also ORs every thread's flag
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kSeqThreads / 32; ++w) t += part[w];
    out[s] = bad_any ? kNaN : static_cast<float>(t);
    if (bad_any && s == 0) atomicOr(err, static_cast<uint32_t>(kErrSegments));
  }
}

__global__ void sequence_logprob_backward_kernel(SPIN_GP(const float) dseq, SPIN_GP(const int32_t) seg, int64_t n,
                                                 int64_t num_seqs, SPIN_GP(float) dlogp, SPIN_GP(uint32_t) err) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t k = seg[i];
    if (k < -1 || k >= num_seqs) {
      dlogp[i] = kNaN;
      atomicOr(err, static_cast<uint32_t>(kErrSegments));
    } else {
      dlogp[i] = k == -1 ? 0.0f : dseq[k];
    }
  }
}

// The SPIN loss of b pairs in one block: per-pair math in double (spin_math.h), the counted pairs and
// the seven column sums reduced in a fixed order through shared memory.
constexpr int kLossThreads = 256;
__global__ void __launch_bounds__(kLossThreads) spin_loss_kernel(
    SPIN_GP(const float) policy, SPIN_GP(const float) ref, SPIN_GP(const float) mask, int64_t b, double beta,
    int type, double nll_alpha, SPIN_GP(const float) answer_tokens, float grad_scale, SPIN_GP(float) per_pair,
    SPIN_GP(float) means, SPIN_GP(float) dseq) {
  SPIN_SHARED(double, red, kLossThreads);
  SPIN_SHARED(double, bcast, 1);
  const int tid = threadIdx.x;
  // 1. the number of counted pairs
  double c = 0;
  for (int64_t i = tid; i < b; i += kLossThreads) c += (!mask || mask[i] != 0.0f) ? 1.0 : 0.0;
  red[tid] = c;
  __syncthreads();
  for (int s = kLossThreads / 2; s > 0; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    __syncthreads();
  }
  if (tid == 0) bcast[0] = red[0];
  __syncthreads();
  const double counted = bcast[0];
  const double inv_count = counted > 0 ? 1.0 / counted : 0.0;
  // 2. per pair, then each row's sum of the stored (f32) values
  double sums[7] = {0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = tid; i < b; i += kLossThreads) {
    if (mask && mask[i] == 0.0f) {
      for (int k = 0; k < 7; ++k) per_pair[k * b + i] = 0.0f;
      dseq[i] = 0.0f;
      dseq[b + i] = 0.0f;
      continue;
    }
    SpinPair p = spin_pair(policy[i], policy[b + i], ref[i], ref[b + i], beta, static_cast<SpinLossType>(type), inv_count);
    if (nll_alpha != 0.0 && answer_tokens[i] > 0) {
      p.loss += nll_alpha * -static_cast<double>(policy[i]) / answer_tokens[i];
      p.dS_real += -nll_alpha / answer_tokens[i] * inv_count;
    }
    const double row[7] = {p.loss, p.reward_real, p.reward_gen, p.margin, p.accuracy, policy[i], policy[b + i]};
    for (int k = 0; k < 7; ++k) {
      per_pair[k * b + i] = static_cast<float>(row[k]);
      sums[k] += static_cast<float>(row[k]);
    }
    const float d_real = static_cast<float>(p.dS_real), d_gen = static_cast<float>(p.dS_gen);
    dseq[i] = grad_scale == 1.0f ? d_real : d_real * grad_scale;
    dseq[b + i] = grad_scale == 1.0f ? d_gen : d_gen * grad_scale;
  }
  for (int k = 0; k < 7; ++k) {
    __syncthreads();
    red[tid] = sums[k];
    __syncthreads();
    for (int s = kLossThreads / 2; s > 0; s >>= 1) {
      if (tid < s) red[tid] += red[tid + s];
      __syncthreads();
    }
    if (tid == 0) means[k] = static_cast<float>(red[0] * inv_count);
  }
  if (tid == 0) means[7] = b > 0 ? static_cast<float>(counted / static_cast<double>(b)) : 0.0f;
}

}  // namespace

GatherPlan gather_plan(int64_t n, int64_t v, int sms) {
  // Aim for 4 blocks per multiprocessor; a split block takes at least kMinChunk columns (each of its
  // 256 threads 16 or more values); the grid is (rows, splits).
  constexpr int64_t kMinChunk = 4096, kAlign = 64;
  const int64_t want = 4 * static_cast<int64_t>(sms < 1 ? 1 : sms);
  if (n <= 0 || n >= want || v < 2 * kMinChunk) return GatherPlan{1, v};
  int64_t splits = (want + n - 1) / n;
  const int64_t most = v / kMinChunk;
  if (splits > most) splits = most;
  int64_t chunk = (v + splits - 1) / splits;
  chunk = (chunk + kAlign - 1) / kAlign * kAlign;
  splits = (v + chunk - 1) / chunk;
  return splits <= 1 ? GatherPlan{1, v} : GatherPlan{splits, chunk};
}

template <class T>
static void gather_split(const T* logits, int64_t n, int64_t v, GatherPlan p, const int32_t* targets, float* logp, float* lse) {
  float* partial = static_cast<float*>(scratch(static_cast<size_t>(n * p.splits) * 2 * sizeof(float), "logprobGather"));
  SPIN_LAUNCH(logprob_partial_kernel<T>, dim3(static_cast<unsigned>(n), static_cast<unsigned>(p.splits)), dim3(kRowThreads), 0, stream(),
              logits, v, p.chunk, targets, partial);
  SPIN_LAUNCH(logprob_merge_kernel<T>, dim3(elementwise_blocks(n, 128)), dim3(128), 0, stream(), logits, n, v, p.splits, targets,
              static_cast<const float*>(partial), logp, lse, error_word());
}

void logprob_gather(const void* logits, DType dt, int64_t n, int64_t v, const int32_t* targets, float* logp, float* lse) {
  if (n == 0) return;
  const GatherPlan plan = gather_plan(n, v, sm_count());
  if (plan.splits > 1) {
    if (dt == DType::kBF16) gather_split(static_cast<const uint16_t*>(logits), n, v, plan, targets, logp, lse);
    else gather_split(static_cast<const float*>(logits), n, v, plan, targets, logp, lse);
  } else if (dt == DType::kBF16)
    SPIN_LAUNCH(logprob_gather_kernel<uint16_t>, dim3(static_cast<unsigned>(n)), dim3(kRowThreads), 0, stream(),
                static_cast<const uint16_t*>(logits), v, targets, logp, lse, error_word());
  else
    SPIN_LAUNCH(logprob_gather_kernel<float>, dim3(static_cast<unsigned>(n)), dim3(kRowThreads), 0, stream(),
                static_cast<const float*>(logits), v, targets, logp, lse, error_word());
  check_launch("logprobGather");
}

template <class T, class O>
static void gather_backward_as(const void* logits, int64_t n, int64_t v, const int32_t* targets, const float* lse,
                               const float* dlogp, void* out) {
  const GatherPlan p = gather_plan(n, v, sm_count());
  SPIN_LAUNCH((logprob_gather_backward_kernel<T, O>), dim3(static_cast<unsigned>(n), static_cast<unsigned>(p.splits)), dim3(kRowThreads), 0,
              stream(), static_cast<const T*>(logits), v, targets, lse, dlogp, p.chunk, static_cast<O*>(out), error_word());
}

void logprob_gather_backward(const void* logits, DType dt, int64_t n, int64_t v, const int32_t* targets,
                             const float* lse, const float* dlogp, void* dlogits, DType out_dt) {
  if (n == 0) return;
  const bool zb = dt == DType::kBF16, ob = out_dt == DType::kBF16;
  if (zb && ob) gather_backward_as<uint16_t, uint16_t>(logits, n, v, targets, lse, dlogp, dlogits);
  else if (zb) gather_backward_as<uint16_t, float>(logits, n, v, targets, lse, dlogp, dlogits);
  else if (ob) gather_backward_as<float, uint16_t>(logits, n, v, targets, lse, dlogp, dlogits);
  else gather_backward_as<float, float>(logits, n, v, targets, lse, dlogp, dlogits);
  check_launch("logprobGatherBackward");
}

void sequence_logprob(const float* logp, const int32_t* seg, int64_t n, int64_t num_seqs, float* out) {
  if (num_seqs == 0) return;
  SPIN_LAUNCH(sequence_logprob_kernel, dim3(static_cast<unsigned>(num_seqs)), dim3(kSeqThreads), 0, stream(), logp, seg, n,
              num_seqs, out, error_word());
  check_launch("sequenceLogprob");
}

void sequence_logprob_backward(const float* dseq, const int32_t* seg, int64_t n, int64_t num_seqs, float* dlogp) {
  if (n == 0) return;
  SPIN_LAUNCH(sequence_logprob_backward_kernel, dim3(elementwise_blocks(n, 256)), dim3(256), 0, stream(), dseq, seg, n,
              num_seqs, dlogp, error_word());
  check_launch("sequenceLogprobBackward");
}

void spin_loss(const float* policy, const float* ref, const float* pair_mask, int64_t b, double beta, SpinLossType type,
               double nll_alpha, const float* answer_tokens, float grad_scale, float* per_pair, float* means, float* dseq) {
  SPIN_LAUNCH(spin_loss_kernel, dim3(1), dim3(kLossThreads), 0, stream(), policy, ref, pair_mask, b, beta,
              static_cast<int>(type), nll_alpha, answer_tokens, grad_scale, per_pair, means, dseq);
  check_launch("spinLoss");
}

}  // namespace spinlm::cuda
