// Fused log-prob kernels of the SPIN loss (docs/algorithm.md, docs/numerics.md) on the CPU.
#include <cmath>
#include <vector>

#include "../include/bf16.h"
#include "kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace spinlm {
namespace {

using simd::vf;
using simd::kLanes;

SPINLM_INLINE float to_f32(float x) { return x; }
SPINLM_INLINE float to_f32(uint16_t x) { return bf16_to_f32(x); }
SPINLM_INLINE void from_f32(float* p, float x) { *p = x; }
SPINLM_INLINE void from_f32(uint16_t* p, float x) { *p = f32_to_bf16(x); }

// A partial vector at the end of a row: the remaining elements, padded with -inf (bf16 0xFF80).
template <class T>
SPINLM_INLINE vf load_tail(const T* z, int64_t count) {
  T buf[kLanes];
  for (int i = 0; i < kLanes; ++i) from_f32(&buf[i], -INFINITY);
  for (int64_t i = 0; i < count; ++i) buf[i] = z[i];
  return simd::load(buf);
}

// A hint to bring the cache lines of next[i, i + 2 kLanes) into L2 (one per 64-byte line).
template <class T>
SPINLM_INLINE void prefetch_span(const T* next, int64_t i) {
  constexpr int64_t kPerLine = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t k = 0; k < 2 * kLanes; k += kPerLine) __builtin_prefetch(next + i + k, 0, 2);
}

// Row max then row sum of exp(z - max), both in 16-lane fp32. Returns logsumexp of the row. The exp
// pass is compute-bound on data the max pass left in cache, so it also prefetches `next` (the next
// row of this task, or null): the next row's max pass then reads L2, not memory (10-20% off the
// forward, bench/RESULTS.md; the same arithmetic, so the same results). A prefetch never faults,
// and its addresses stay inside the next row.
template <class T>
SPINLM_INLINE float row_lse(const T* z, int64_t v, const T* next) {
  const int64_t full = v - v % kLanes;
  vf m0 = simd::splat(-INFINITY), m1 = m0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= full; i += 2 * kLanes) {
    m0 = simd::vmax(m0, simd::load(z + i));
    m1 = simd::vmax(m1, simd::load(z + i + kLanes));
  }
  for (; i < full; i += kLanes) m0 = simd::vmax(m0, simd::load(z + i));
  if (full < v) m1 = simd::vmax(m1, load_tail(z + full, v - full));
  const float mx = simd::hmax(simd::vmax(m0, m1));
  const vf vmx = simd::splat(mx);
  vf s0 = simd::splat(0.0f), s1 = s0;
  for (i = 0; i + 2 * kLanes <= full; i += 2 * kLanes) {
    if (next) prefetch_span(next, i);
    s0 += simd::exp_neg(simd::load(z + i) - vmx);
    s1 += simd::exp_neg(simd::load(z + i + kLanes) - vmx);
  }
  for (; i < full; i += kLanes) s0 += simd::exp_neg(simd::load(z + i) - vmx);
  if (full < v) s1 += simd::exp_neg(load_tail(z + full, v - full) - vmx);
  // A NaN anywhere makes the sum NaN (vmax may have skipped it, exp does not).
  return mx + std::log(simd::hsum(s0 + s1));
}

template <class T>
SPINLM_INLINE void gather_rows(const T* logits, int64_t v, const int32_t* targets, float* logp,
                               float* lse, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t y = targets[r];
    if (y == kIgnoreIndex) {
      logp[r] = 0.0f;
      lse[r] = 0.0f;
      continue;
    }
    const T* z = logits + row_offset(r, v);
    const float l = row_lse(z, v, r + 1 < r1 ? z + v : nullptr);
    lse[r] = l;
    logp[r] = to_f32(z[y]) - l;
  }
}

SPINLM_CLONES void gather_rows_f32(const float* z, int64_t v, const int32_t* y, float* logp,
                                   float* lse, int64_t r0, int64_t r1) {
  gather_rows(z, v, y, logp, lse, r0, r1);
}
SPINLM_CLONES void gather_rows_bf16(const uint16_t* z, int64_t v, const int32_t* y, float* logp,
                                    float* lse, int64_t r0, int64_t r1) {
  gather_rows(z, v, y, logp, lse, r0, r1);
}

template <class T, class O>
SPINLM_INLINE void backward_rows(const T* logits, int64_t v, const int32_t* targets,
                                 const float* lse, const float* dlogp, O* dlogits, int64_t r0,
                                 int64_t r1) {
  const int64_t full = v - v % kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const T* z = logits + row_offset(r, v);
    O* dz = dlogits + row_offset(r, v);
    const int32_t y = targets[r];
    if (y == kIgnoreIndex) {
      for (int64_t j = 0; j < v; ++j) from_f32(&dz[j], 0.0f);
      continue;
    }
    const float zy = to_f32(z[y]);  // read before an in-place write overwrites it
    const float l = lse[r], g = dlogp[r];
    const vf vl = simd::splat(l), vng = simd::splat(-g);
    // (no prefetch in this single pass: the next row's lines measured the same for bf16, ~5% slower for f32)
    for (int64_t j = 0; j < full; j += kLanes)
      simd::store(dz + j, vng * simd::exp_neg(simd::load(z + j) - vl));
    for (int64_t j = full; j < v; ++j) {
      const float p = std::exp(to_f32(z[j]) - l);
      from_f32(&dz[j], -g * p);
    }
    from_f32(&dz[y], g * -std::expm1(zy - l));
  }
}

// One multiversioned entry per (input, output) dtype pair: target_clones needs plain functions.
#define SPINLM_BACKWARD_ROWS(T, O)                                                             \
  SPINLM_CLONES void backward_rows_t(const T* z, int64_t v, const int32_t* y, const float* lse, \
                                     const float* dlogp, O* dz, int64_t r0, int64_t r1) {       \
    backward_rows(z, v, y, lse, dlogp, dz, r0, r1);                                            \
  }
SPINLM_BACKWARD_ROWS(float, float)
SPINLM_BACKWARD_ROWS(float, uint16_t)
SPINLM_BACKWARD_ROWS(uint16_t, float)
SPINLM_BACKWARD_ROWS(uint16_t, uint16_t)
#undef SPINLM_BACKWARD_ROWS

// Rows per task: enough work to amortize a wake-up (~64k elements), at least one row.
int64_t row_grain(int64_t v) { return std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, v)); }

}  // namespace

void logprob_gather(const void* logits, DType dt, int64_t n, int64_t v, const int32_t* targets,
                    float* logp, float* lse) {
  parallel_for(n, row_grain(v), [&](int64_t r0, int64_t r1) {
    if (dt == DType::kBF16)
      gather_rows_bf16(static_cast<const uint16_t*>(logits), v, targets, logp, lse, r0, r1);
    else
      gather_rows_f32(static_cast<const float*>(logits), v, targets, logp, lse, r0, r1);
  });
}

void logprob_gather_backward(const void* logits, DType dt, int64_t n, int64_t v,
                             const int32_t* targets, const float* lse, const float* dlogp,
                             void* dlogits, DType out_dt) {
  parallel_for(n, row_grain(v), [&](int64_t r0, int64_t r1) {
    const bool in_bf16 = dt == DType::kBF16, out_bf16 = out_dt == DType::kBF16;
    if (in_bf16 && out_bf16)
      backward_rows_t(static_cast<const uint16_t*>(logits), v, targets, lse, dlogp,
                      static_cast<uint16_t*>(dlogits), r0, r1);
    else if (in_bf16)
      backward_rows_t(static_cast<const uint16_t*>(logits), v, targets, lse, dlogp,
                      static_cast<float*>(dlogits), r0, r1);
    else if (out_bf16)
      backward_rows_t(static_cast<const float*>(logits), v, targets, lse, dlogp,
                      static_cast<uint16_t*>(dlogits), r0, r1);
    else
      backward_rows_t(static_cast<const float*>(logits), v, targets, lse, dlogp,
                      static_cast<float*>(dlogits), r0, r1);
  });
}

void sequence_logprob(const float* logp, const int32_t* seg, int64_t n, int64_t num_seqs,
                      float* out) {
  std::vector<double> acc(static_cast<size_t>(num_seqs), 0.0);
  for (int64_t r = 0; r < n; ++r)
    if (seg[r] >= 0) acc[seg[r]] += logp[r];
  for (int64_t s = 0; s < num_seqs; ++s) out[s] = static_cast<float>(acc[s]);
}

void sequence_logprob_backward(const float* dseq, const int32_t* seg, int64_t n, int64_t num_seqs,
                               float* dlogp) {
  (void)num_seqs;
  for (int64_t r = 0; r < n; ++r) dlogp[r] = seg[r] >= 0 ? dseq[seg[r]] : 0.0f;
}

void spin_loss(const float* policy, const float* ref, const float* pair_mask, int64_t b, double beta,
               SpinLossType type, double nll_alpha, const float* answer_tokens, float grad_scale,
               float* per_pair, float* means, float* dseq) {
  int64_t counted = 0;
  for (int64_t i = 0; i < b; ++i) counted += !pair_mask || pair_mask[i] != 0.0f;
  const double inv_count = counted > 0 ? 1.0 / static_cast<double>(counted) : 0.0;
  double sums[7] = {0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < b; ++i) {
    if (pair_mask && pair_mask[i] == 0.0f) {
      for (int k = 0; k < 7; ++k) per_pair[k * b + i] = 0.0f;
      dseq[i] = 0.0f;
      dseq[b + i] = 0.0f;
      continue;
    }
    SpinPair p = spin_pair(policy[i], policy[b + i], ref[i], ref[b + i], beta, type, inv_count);
    if (nll_alpha != 0.0 && answer_tokens[i] > 0) {
      p.loss += nll_alpha * -static_cast<double>(policy[i]) / answer_tokens[i];
      p.dS_real += -nll_alpha / answer_tokens[i] * inv_count;
    }
    const double row[7] = {p.loss, p.reward_real, p.reward_gen, p.margin, p.accuracy, policy[i], policy[b + i]};
    for (int k = 0; k < 7; ++k) {
      per_pair[k * b + i] = static_cast<float>(row[k]);
      sums[k] += static_cast<float>(row[k]);  // the logged means average the stored per-pair values
    }
    // rounded to f32 first, then scaled in f32: the same bits as scaling the stored gradient afterwards
    const float d_real = static_cast<float>(p.dS_real), d_gen = static_cast<float>(p.dS_gen);
    dseq[i] = grad_scale == 1.0f ? d_real : d_real * grad_scale;
    dseq[b + i] = grad_scale == 1.0f ? d_gen : d_gen * grad_scale;
  }
  for (int k = 0; k < 7; ++k) means[k] = static_cast<float>(sums[k] * inv_count);
  means[7] = b > 0 ? static_cast<float>(static_cast<double>(counted) / static_cast<double>(b)) : 0.0f;
}

SPINLM_CLONES static double sum_floats(const float* p, int64_t count) {
  vf s0 = simd::splat(0.0f), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 4 * kLanes <= count; i += 4 * kLanes) {
    s0 += simd::load(p + i);
    s1 += simd::load(p + i + kLanes);
    s2 += simd::load(p + i + 2 * kLanes);
    s3 += simd::load(p + i + 3 * kLanes);
  }
  double s = simd::hsum(s0 + s1 + s2 + s3);
  for (; i < count; ++i) s += p[i];
  return s;
}

double stream_read(const void* data, int64_t bytes) {
  const float* p = static_cast<const float*>(data);
  const int64_t count = bytes / 4;
  const int parts = num_threads();
  std::vector<double> partial(parts, 0.0);
  parallel_for(parts, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      partial[k] = sum_floats(p + count * k / parts, count * (k + 1) / parts - count * k / parts);
  });
  double s = 0;
  for (double x : partial) s += x;
  return s;
}

SPINLM_CLONES static float exp_sum_l1(int64_t count) {
  alignas(64) float buf[1024];
  for (int i = 0; i < 1024; ++i) buf[i] = -static_cast<float>(i % 97) * 0.25f;
  vf s0 = simd::splat(0.0f), s1 = s0;
  const vf shift = simd::splat(-0.5f);
  for (int64_t done = 0; done < count; done += 1024)
    for (int i = 0; i < 1024; i += 2 * kLanes) {
      s0 += simd::exp_neg(simd::load(buf + i) + shift);
      s1 += simd::exp_neg(simd::load(buf + i + kLanes) + shift);
    }
  return simd::hsum(s0 + s1);
}

double exp_throughput(int64_t count) {
  const int parts = num_threads();
  std::vector<double> partial(parts, 0.0);
  parallel_for(parts, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) partial[k] = exp_sum_l1(count / parts);
  });
  double s = 0;
  for (double x : partial) s += x;
  return s;
}

}  // namespace spinlm
