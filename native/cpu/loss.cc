// Fused log-prob kernels of the SPIN loss (docs/algorithm.md, docs/numerics.md) on the CPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../include/bf16.h"
#include "kernels.h"
#include "loss_rows.h"
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

// The loss kernels' exp: cheaper than exp_neg, used only here (simd.h says why two exps exist).
SPINLM_INLINE vf exp_loss(vf x) { return simd::exp_neg_deg5(x); }

constexpr int64_t kBlock = 2 * kLanes;  // 32 logits: the step of every loop below

// 32 consecutive logits as two 16-lane vectors. f32: in order. bf16: one 64-byte load split into the
// even-indexed elements (each 32-bit word's low half, shifted up) and the odd-indexed ones (the high
// half, masked): one instruction per 16 lanes, against a widening shuffle plus a shift.
SPINLM_INLINE void load_block(const float* p, vf& a, vf& b) {
  a = simd::load(p);
  b = simd::load(p + kLanes);
}
SPINLM_INLINE void load_block(const uint16_t* p, vf& a, vf& b) {
  simd::vu w;
  memcpy(&w, p, sizeof w);
  const simd::vu even = w << 16, odd = w & 0xFFFF0000u;
  memcpy(&a, &even, sizeof a);
  memcpy(&b, &odd, sizeof b);
}

// The last v % 32 logits of a row, widened, in order, padded with -inf to a whole block.
template <class T>
SPINLM_INLINE void load_tail(const T* z, int64_t count, float* block) {
  for (int64_t i = 0; i < kBlock; ++i) block[i] = i < count ? to_f32(z[i]) : -INFINITY;
}

// Forward: logsumexp of a row in one read. The row goes in chunks of kChunk logits, and each lane
// keeps its own running max M and its sum s of exp(z - M) (an online max: when a chunk raises a lane's
// max, that lane's sum is scaled by exp(M_old - M_new)); the lanes are combined at the end. The exp
// pass over chunk k runs on L1-resident data, and the same loop reads chunk k + 1 (taking its lane max;
// bf16: widening it into the other half of a double buffer) and prefetches 2 KiB beyond that read
// (the stream continues into the next row of the task, up to `end`). So the max costs one vmaxps per
// 16 logits inside a compute-bound loop instead of a second sweep, and bf16 is widened once.
// Chunk size and prefetch distance as measured: docs/performance.md.
constexpr int64_t kChunk = 2048;
template <class T>
constexpr int64_t kAhead = kChunk + 2048 / static_cast<int64_t>(sizeof(T));

// A new lane max m: scales the sums where a lane's max grew, and returns the value each lane subtracts
// before its exp (its max, or 0 while it has seen only -inf: exp(-inf - 0) = 0, and a NaN stays NaN).
SPINLM_INLINE vf raise_max(vf& M, vf m, vf& s0, vf& s1) {
  const vf grown = simd::vmax(M, m);
  const vf f = exp_loss(M - grown);  // -inf - -inf is NaN: those lanes (and equal ones) keep factor 1
  const vf one = simd::splat(1.0f);
  const vf factor = grown == M ? one : f;
  s0 *= factor;
  s1 *= factor;
  M = grown;
  return M == simd::splat(-INFINITY) ? simd::splat(0.0f) : M;
}

SPINLM_INLINE void exp_block(const float* x, vf ref, vf& s0, vf& s1) {
  s0 += exp_loss(simd::load(x) - ref);
  s1 += exp_loss(simd::load(x + kLanes) - ref);
}

// A hint to bring the lines of p[ahead, ahead + kBlock) into L1, those of them before p[avail] (the
// end of the task's rows): a prefetch never faults, but its addresses stay inside the buffer.
template <bool kWrite = false, class T>
SPINLM_INLINE void prefetch_block(const T* p, int64_t ahead, int64_t avail) {
  constexpr int64_t kPerLine = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t k = 0; k < kBlock; k += kPerLine)
    if (__builtin_expect(ahead + k < avail, 1)) __builtin_prefetch(p + ahead + k, kWrite, 3);
}

// Lane maxima of x[0, len) (len a multiple of kBlock), four chains.
SPINLM_INLINE vf max_blocks(const float* x, int64_t len) {
  vf m0 = simd::splat(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 2 * kBlock <= len; i += 2 * kBlock) {
    m0 = simd::vmax(m0, simd::load(x + i));
    m1 = simd::vmax(m1, simd::load(x + i + kLanes));
    m2 = simd::vmax(m2, simd::load(x + i + 2 * kLanes));
    m3 = simd::vmax(m3, simd::load(x + i + 3 * kLanes));
  }
  for (; i < len; i += kBlock) {
    m0 = simd::vmax(m0, simd::load(x + i));
    m1 = simd::vmax(m1, simd::load(x + i + kLanes));
  }
  return simd::vmax(simd::vmax(m0, m1), simd::vmax(m2, m3));
}

// Where chunk k's f32 values are read from: the logits themselves (f32), or a widened copy (bf16).
struct F32Chunks {
  const float* z;
  const float* chunk(int64_t c0, int64_t) const { return z + c0; }
  // lane max of chunk [c0, c0 + len) before the loop (the row's first chunk)
  vf stage(int64_t c0, int64_t len, int64_t) const { return max_blocks(z + c0, len); }
  // block i of chunk [c0, ...): lane max into ma, mb
  SPINLM_INLINE void stage_block(int64_t c0, int64_t i, int64_t, vf& ma, vf& mb) const {
    ma = simd::vmax(ma, simd::load(z + c0 + i));
    mb = simd::vmax(mb, simd::load(z + c0 + i + kLanes));
  }
};
struct BF16Chunks {
  const uint16_t* z;
  float* buf[2];  // chunk k widens into buf[k % 2]
  const float* chunk(int64_t, int64_t k) const { return buf[k & 1]; }
  vf stage(int64_t c0, int64_t len, int64_t k) const {
    for (int64_t i = 0; i < len; i += kBlock) {
      vf a, b;
      load_block(z + c0 + i, a, b);
      simd::store(buf[k & 1] + i, a);
      simd::store(buf[k & 1] + i + kLanes, b);
    }
    return max_blocks(buf[k & 1], len);
  }
  SPINLM_INLINE void stage_block(int64_t c0, int64_t i, int64_t k, vf& ma, vf& mb) const {
    vf a, b;
    load_block(z + c0 + i, a, b);
    simd::store(buf[k & 1] + i, a);
    simd::store(buf[k & 1] + i + kLanes, b);
    ma = simd::vmax(ma, a);
    mb = simd::vmax(mb, b);
  }
};

template <class T, class Chunks>
SPINLM_INLINE float row_lse(const T* z, int64_t v, const T* end, const Chunks& src) {
  const int64_t body = v - v % kBlock, nchunks = (body + kChunk - 1) / kChunk;
  alignas(64) float tail[kBlock];
  vf mtail = simd::splat(-INFINITY);
  if (body < v) {
    load_tail(z + body, v - body, tail);
    mtail = simd::vmax(simd::load(tail), simd::load(tail + kLanes));
  }
  vf M = simd::splat(-INFINITY), s0 = simd::splat(0.0f), s1 = s0;
  vf mnext = nchunks > 0 ? src.stage(0, std::min(kChunk, body), 0) : mtail;
  if (nchunks == 1) mnext = simd::vmax(mnext, mtail);
  vf ref = raise_max(M, mnext, s0, s1);
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t c0 = k * kChunk, len = std::min(kChunk, body - c0);
    const int64_t nlen = k + 1 < nchunks ? std::min(kChunk, body - c0 - kChunk) : 0;
    const float* x = src.chunk(c0, k);
    vf ma = simd::splat(-INFINITY), mb = ma;
    int64_t i = 0;
    const int64_t avail = end - (z + c0);
    for (; i < nlen; i += kBlock) {  // exp of chunk k, max (and widening) of chunk k + 1
      prefetch_block(z + c0 + i, kAhead<T>, avail - i);
      src.stage_block(c0 + kChunk, i, k + 1, ma, mb);
      exp_block(x + i, ref, s0, s1);
    }
    for (; i < len; i += kBlock) {
      prefetch_block(z + c0 + i, kAhead<T>, avail - i);
      exp_block(x + i, ref, s0, s1);
    }
    if (k + 1 < nchunks) {
      vf m = simd::vmax(ma, mb);
      if (k + 2 == nchunks) m = simd::vmax(m, mtail);
      ref = raise_max(M, m, s0, s1);
    }
  }
  if (body < v) exp_block(tail, ref, s0, s1);
  // lse = mx + log(sum over lanes of s_j exp(M_j - mx))
  const float mx = simd::hmax(M);
  if (mx == -INFINITY) return NAN;  // a row of -inf: NaN, as the float64 reference gives
  const vf w = exp_loss(M - simd::splat(mx));
  // A NaN anywhere makes its lane's sum NaN (the max may have skipped it, the exp does not).
  return mx + std::log(simd::hsum((s0 + s1) * w));
}

SPINLM_INLINE float row_lse(const float* z, int64_t v, const float* end) {
  return row_lse(z, v, end, F32Chunks{z});
}
SPINLM_INLINE float row_lse(const uint16_t* z, int64_t v, const uint16_t* end) {
  alignas(64) float buf[2][kChunk];
  return row_lse(z, v, end, BF16Chunks{z, {buf[0], buf[1]}});
}

template <class T>
SPINLM_INLINE void gather_rows(const T* logits, int64_t v, const int32_t* targets, float* logp,
                               float* lse, int64_t r0, int64_t r1) {
  const T* end = logits + row_offset(r1, v);
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t y = targets[r];
    if (y == kIgnoreIndex) {
      logp[r] = 0.0f;
      lse[r] = 0.0f;
      continue;
    }
    const T* z = logits + row_offset(r, v);
    const float l = row_lse(z, v, end);
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

// Backward stores. bf16 is rounded to nearest even into the high half of each 32-bit lane, NaN
// quieted: the bits of simd::store's bf16 form (bf16.h's f32_to_bf16), whose narrowing is left to
// the caller (NaN found by x != x: one compare where the integer test takes two).
SPINLM_INLINE simd::vu round_bf16_high(vf x) {
  simd::vu u;
  memcpy(&u, &x, sizeof u);
  const simd::vi is_nan = x != x;
  const simd::vu rounded = u + (0x7fffu + ((u >> 16) & 1u));
  return is_nan ? (u | 0x00400000u) : rounded;
}
typedef uint16_t vh32 __attribute__((vector_size(64)));
// Writes the 32 values of one block: in order (a = elements 0-15, b = 16-31), or as load_block's
// bf16 split left them (a = even-indexed, b = odd-indexed elements): then put back in order.
SPINLM_INLINE void store_block(float* p, vf a, vf b, bool split) {
  if (!split) {
    simd::store(p, a);
    simd::store(p + kLanes, b);
    return;
  }
  const simd::vi lo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
  const simd::vi hi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  simd::store(p, __builtin_shuffle(a, b, lo));
  simd::store(p + kLanes, __builtin_shuffle(a, b, hi));
}
SPINLM_INLINE void store_block(uint16_t* p, vf a, vf b, bool split) {
  const simd::vu ra = round_bf16_high(a), rb = round_bf16_high(b);
  if (split) {  // word i of the block holds elements 2i (low half) and 2i + 1 (high half)
    const simd::vu w = (rb & 0xFFFF0000u) | (ra >> 16);
    memcpy(p, &w, sizeof w);
    return;
  }
  vh32 ha, hb;
  memcpy(&ha, &ra, sizeof ha);
  memcpy(&hb, &rb, sizeof hb);
  const vh32 high_halves = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31,
                            33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  const vh32 h = __builtin_shuffle(ha, hb, high_halves);
  memcpy(p, &h, sizeof h);
}

// Backward: one pass that reads z and writes dz. It is bound by memory (f32) or by the exp and the
// bf16 conversions (bf16), and it prefetches the logits 4 KiB on (into a separate output, that
// output's lines too: a plain prefetch, as x86-64-v4 has no PREFETCHW): without it the loop
// stalled on its reads, in place most of all (docs/performance.md). Each element's arithmetic is
// that of the element-by-element loop; bf16 logits are split into even/odd halves and put back in
// order by store_block.
template <class T>
constexpr int64_t kBackAhead = 4096 / static_cast<int64_t>(sizeof(T));  // 4 KiB on
template <class T, class O>
SPINLM_INLINE void backward_rows(const T* logits, int64_t v, const int32_t* targets,
                                 const float* lse, const float* dlogp, O* dlogits, int64_t r0,
                                 int64_t r1) {
  constexpr bool split = sizeof(T) == 2;  // bf16 logits come as even/odd halves
  const int64_t full = v - v % kBlock;
  const T* z_end = logits + row_offset(r1, v);
  const bool in_place = static_cast<const void*>(logits) == static_cast<const void*>(dlogits);
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
    const int64_t avail = z_end - z;  // the same count for dz
    for (int64_t j = 0; j < full; j += kBlock) {
      prefetch_block(z + j, kBackAhead<T>, avail - j);
      if (!in_place) prefetch_block<true>(dz + j, kBackAhead<T>, avail - j);
      vf a, b;
      load_block(z + j, a, b);
      store_block(dz + j, vng * exp_loss(a - vl), vng * exp_loss(b - vl), split);
    }
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

SPINLM_CLONES float row_logsumexp_f32(const float* z, int64_t v) { return row_lse(z, v, z + v); }

SPINLM_CLONES void row_softmax_grad_f32(float* z, int64_t v, float l, float g) {
  const int64_t full = v - v % kBlock;
  const vf vl = simd::splat(l), vng = simd::splat(-g);
  for (int64_t j = 0; j < full; j += kBlock) {
    simd::store(z + j, vng * exp_loss(simd::load(z + j) - vl));
    simd::store(z + j + kLanes, vng * exp_loss(simd::load(z + j + kLanes) - vl));
  }
  for (int64_t j = full; j < v; ++j) z[j] = -g * std::exp(z[j] - l);
}

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

float row_logsumexp(const float* z, int64_t v) { return row_logsumexp_f32(z, v); }
void row_softmax_grad(float* z, int64_t v, float l, float g) { row_softmax_grad_f32(z, v, l, g); }

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

// The exp floor: `count` exps of L1-resident values in [-24.5, -0.5], summed (the forward's inner loop
// without its loads from memory). Cephes = simd::exp_neg, the exp these kernels used before
// exp_neg_deg5 (issue 13's reference floor), kept measurable for the ratio against it.
template <bool kCephes>
SPINLM_INLINE float exp_sum_l1(int64_t count) {
  alignas(64) float buf[1024];
  for (int i = 0; i < 1024; ++i) buf[i] = -static_cast<float>(i % 97) * 0.25f;
  vf s0 = simd::splat(0.0f), s1 = s0;
  const vf shift = simd::splat(-0.5f);
  for (int64_t done = 0; done < count; done += 1024)
    for (int i = 0; i < 1024; i += 2 * kLanes) {
      const vf x0 = simd::load(buf + i) + shift, x1 = simd::load(buf + i + kLanes) + shift;
      s0 += kCephes ? simd::exp_neg(x0) : exp_loss(x0);
      s1 += kCephes ? simd::exp_neg(x1) : exp_loss(x1);
    }
  return simd::hsum(s0 + s1);
}
SPINLM_CLONES static float exp_sum_l1_loss(int64_t count) { return exp_sum_l1<false>(count); }
SPINLM_CLONES static float exp_sum_l1_cephes(int64_t count) { return exp_sum_l1<true>(count); }

double exp_throughput(int64_t count, bool cephes) {
  const int parts = num_threads();
  std::vector<double> partial(parts, 0.0);
  parallel_for(parts, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      partial[k] = cephes ? exp_sum_l1_cephes(count / parts) : exp_sum_l1_loss(count / parts);
  });
  double s = 0;
  for (double x : partial) s += x;
  return s;
}

}  // namespace spinlm
