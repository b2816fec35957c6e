// Causal grouped-query attention on the CPU. Per (sequence, head): S = scale Q K^T and O = P V, and in
// the backward dV, dP, dQ, dK, as strided cblas_sgemm calls with the row softmax between them. The
// (sequence, head) pairs are tasks on our pool, OpenBLAS on one thread meanwhile (BlasOnOneThread);
// heads sharing a kv head accumulate their dK/dV in head order within one task, so results are
// deterministic and independent of the thread count. An attention-logit soft-cap (softcap > 0) caps each
// row's scores before the mask (cap_row) and, in the backward, scales dS by 1 - tanh^2 (uncap_ds_row).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../include/bf16.h"
#include "attention_spans.h"
#include "model_kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace spinlm {
namespace {

struct Geometry {
  int64_t l, nh, nkv, hd;
  int64_t q_stride() const { return nh * hd; }   // between consecutive positions of one head
  int64_t kv_stride() const { return nkv * hd; }
  int64_t q_offset(int64_t b, int64_t h) const { return (b * l * nh + h) * hd; }
  int64_t kv_offset(int64_t b, int64_t h) const { return (b * l * nkv + h / (nh / nkv)) * hd; }
};

using attn::BlasOnOneThread;
using attn::gemm;

using simd::kLanes;
using simd::vf;

// row[j] = exp(row[j] - m) for j < n (masked keys at -inf give 0); returns the sum, in a fixed order.
SPINLM_INLINE double exp_row(float* row, int64_t n, float m) {
  const int64_t full = n - n % kLanes;
  const vf vm = simd::splat(m);
  vf vs = simd::splat(0.0f);
  for (int64_t j = 0; j < full; j += kLanes) {
    const vf p = simd::exp_neg(simd::load(row + j) - vm);
    simd::store(row + j, p);
    vs += p;
  }
  double sum = simd::hsum(vs);
  for (int64_t j = full; j < n; ++j) {
    row[j] = row[j] == -INFINITY ? 0.0f : std::exp(row[j] - m);
    sum += row[j];
  }
  return sum;
}

// Row i of the scores holds the keys 0..n-1 visible by causality (n = i + 1); `bias` is 0 for a key
// to attend to and -inf for a masked one. The row becomes the softmax over those keys (0 elsewhere);
// returns its log-sum-exp (-inf, with a zero row, when no key is visible).
SPINLM_CLONES float softmax_row(float* row, const float* bias, int64_t n, int64_t l) {
  const int64_t full = n - n % kLanes;
  vf vm = simd::splat(-INFINITY);
  for (int64_t j = 0; j < full; j += kLanes) {
    const vf x = simd::load(row + j) + simd::load(bias + j);
    simd::store(row + j, x);
    vm = simd::vmax(vm, x);
  }
  float m = simd::hmax(vm);
  for (int64_t j = full; j < n; ++j) {
    row[j] += bias[j];
    m = row[j] > m ? row[j] : m;
  }
  if (m == -INFINITY) {
    std::memset(row, 0, sizeof(float) * l);
    return -INFINITY;
  }
  const double sum = exp_row(row, n, m);
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  for (int64_t j = n; j < l; ++j) row[j] = 0.0f;
  return m + static_cast<float>(std::log(sum));
}

// The backward's probabilities from the saved lse: row[j] = exp(row[j] + bias[j] - lse) for j < n, 0 after.
SPINLM_CLONES void probs_row(float* row, const float* bias, int64_t n, int64_t l, float lse) {
  if (lse == -INFINITY) {
    std::memset(row, 0, sizeof(float) * l);
    return;
  }
  const int64_t full = n - n % kLanes;
  const vf vl = simd::splat(lse);
  for (int64_t j = 0; j < full; j += kLanes) simd::store(row + j, simd::exp_neg(simd::load(row + j) + simd::load(bias + j) - vl));
  for (int64_t j = full; j < n; ++j) row[j] = bias[j] == -INFINITY ? 0.0f : std::exp(row[j] - lse);
  for (int64_t j = n; j < l; ++j) row[j] = 0.0f;
}

// dS = P * (dP - delta) over a row.
SPINLM_CLONES void ds_row(float* dp, const float* p, float delta, int64_t l) {
  for (int64_t j = 0; j < l; ++j) dp[j] = p[j] * (dp[j] - delta);
}

// Gemma 2's attention-logit soft-capping (AttentionOpts.softcap = c > 0): a score s becomes
// c * tanh(s / c) before the mask (Hugging Face's eager attention). t (optional) keeps tanh(s / c) for
// the backward's d(capped)/ds = 1 - t^2. Masked keys are hidden after, so every entry here is finite.
SPINLM_INLINE void cap_row(float* row, int64_t n, float c, float* t) {
  for (int64_t j = 0; j < n; ++j) {
    const float th = std::tanh(row[j] / c);
    row[j] = c * th;
    if (t) t[j] = th;
  }
}

// dS *= 1 - t^2 over a row (the chain rule through the cap).
SPINLM_INLINE void uncap_ds_row(float* ds, const float* t, int64_t n) {
  for (int64_t j = 0; j < n; ++j) ds[j] *= 1.0f - t[j] * t[j];
}

SPINLM_INLINE float widen(float x) { return x; }
SPINLM_INLINE float widen(uint16_t x) { return bf16_to_f32(x); }

// b (and x below) f32, or bf16 widened as it is read (a bf16 KV cache)
template <typename T>
SPINLM_INLINE float dot(const float* a, const T* b, int64_t n) {
  vf acc = simd::splat(0.0f);
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) acc += simd::load(a + c) * simd::load(b + c);
  float d = simd::hsum(acc);
  for (; c < n; ++c) d += a[c] * widen(b[c]);
  return d;
}

template <typename T>
SPINLM_INLINE void axpy(float* y, float a, const T* x, int64_t n) {
  int64_t c = 0;
  const vf va = simd::splat(a);
  for (; c + kLanes <= n; c += kLanes) simd::store(y + c, simd::load(y + c) + va * simd::load(x + c));
  for (; c < n; ++c) y[c] += a * widen(x[c]);
}

// Scores of one query head against keys [j, j + 4): four dots of hd = 16 NV values, each summed as
// dot() sums it (lane-wise in c order, then hsum's tree, then the scalar tail none here), so the
// scores are bit for bit dot()'s; the four reductions share one hsum4.
template <int NV, typename T>
SPINLM_INLINE void dot4(const vf* qv, const T* k0, int64_t stride, float* out) {
  vf acc[4];
  for (int r = 0; r < 4; ++r) acc[r] = simd::splat(0.0f);
  for (int c = 0; c < NV; ++c)
    for (int r = 0; r < 4; ++r) acc[r] += qv[c] * simd::load(k0 + r * stride + c * kLanes);
  simd::hsum4(acc[0], acc[1], acc[2], acc[3], out);
}

// o[g] (hd = 16 NV values, g in [g0, g0 + G)) = sum over keys j of p[g, j] inv[g] v[j], the sums kept in
// registers across the keys: the same additions, in the same order, as axpy() into o (keys with p = 0
// skipped, as there).
template <int NV, int G, typename T>
SPINLM_INLINE void weighted_values(const float* sc, const float* inv, const T* v, int64_t stride, int64_t len, int64_t g0, float* o,
                                   int64_t hd) {
  vf acc[G][NV];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NV; ++c) acc[g][c] = simd::splat(0.0f);
  for (int64_t j = 0; j < len; ++j) {
    const T* vr = v + j * stride;
    for (int g = 0; g < G; ++g) {
      const float p = sc[(g0 + g) * len + j];
      if (p == 0.0f) continue;
      const vf va = simd::splat(p * inv[g0 + g]);
      for (int c = 0; c < NV; ++c) acc[g][c] = acc[g][c] + va * simd::load(vr + c * kLanes);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NV; ++c) simd::store(o + (g0 + g) * hd + c * kLanes, acc[g][c]);
}

// One (sequence, kv head) of decode attention for its `group` query heads at once, so each cached key
// and value row is read from memory once: scores over the first len keys, softmax, weighted values.
// q and o hold the group's heads back to back ([group, hd]); sc is scratch [group, len].
// The cache is f32 or bf16 (T). NV = hd / 16 for the register-blocked paths (hd = 64, 128), 0 for any
// hd (one dot and one axpy per key and head); both give the same bits.
template <int NV, typename T>
SPINLM_INLINE void decode_group(const float* q, const T* k_cache, const T* v_cache, const int32_t* mask, int64_t len,
                                int64_t stride, int64_t hd, int64_t group, float scale, float softcap, float* sc, float* o) {
  int64_t j = 0;
  if constexpr (NV > 0) {
    for (int64_t g = 0; g < group; ++g) {
      vf qv[NV];
      for (int c = 0; c < NV; ++c) qv[c] = simd::load(q + g * hd + c * kLanes);
      float* row = sc + g * len;
      for (j = 0; j + 4 <= len; j += 4) {
        dot4<NV>(qv, k_cache + j * stride, stride, row + j);
        for (int r = 0; r < 4; ++r) row[j + r] = mask && !mask[j + r] ? -INFINITY : row[j + r] * scale;
      }
    }
  }
  for (; j < len; ++j) {
    const bool off = mask && !mask[j];
    const T* kr = k_cache + j * stride;
    for (int64_t g = 0; g < group; ++g) sc[g * len + j] = off ? -INFINITY : dot(q + g * hd, kr, hd) * scale;
  }
  if (softcap > 0.0f)  // masked keys stay -inf (capped, they would be -softcap)
    for (int64_t jj = 0; jj < group * len; ++jj)
      if (sc[jj] != -INFINITY) sc[jj] = softcap * std::tanh(sc[jj] / softcap);
  std::vector<float> inv(static_cast<size_t>(group));
  for (int64_t g = 0; g < group; ++g) {
    float* row = sc + g * len;
    for (int64_t c = 0; c < hd; ++c) o[g * hd + c] = 0.0f;
    float m = -INFINITY;
    for (int64_t jj = 0; jj < len; ++jj) m = row[jj] > m ? row[jj] : m;
    if (m == -INFINITY) {
      for (int64_t jj = 0; jj < len; ++jj) row[jj] = 0.0f;
      inv[g] = 0.0f;
      continue;
    }
    inv[g] = static_cast<float>(1.0 / exp_row(row, len, m));
  }
  if constexpr (NV > 0) {
    // heads in pairs (16 accumulators at hd = 128), an odd one alone
    int64_t g0 = 0;
    for (; g0 + 2 <= group; g0 += 2) weighted_values<NV, 2>(sc, inv.data(), v_cache, stride, len, g0, o, hd);
    if (g0 < group) weighted_values<NV, 1>(sc, inv.data(), v_cache, stride, len, g0, o, hd);
  } else {
    for (int64_t jj = 0; jj < len; ++jj) {
      const T* vr = v_cache + jj * stride;
      for (int64_t g = 0; g < group; ++g) {
        const float p = sc[g * len + jj];
        if (p != 0.0f) axpy(o + g * hd, p * inv[g], vr, hd);
      }
    }
  }
}

template <typename T>
SPINLM_INLINE void decode_group_any(const float* q, const T* k, const T* v, const int32_t* mask, int64_t len, int64_t stride,
                                    int64_t hd, int64_t group, float scale, float softcap, float* sc, float* o) {
  if (hd == 64)
    decode_group<4>(q, k, v, mask, len, stride, hd, group, scale, softcap, sc, o);
  else if (hd == 128)
    decode_group<8>(q, k, v, mask, len, stride, hd, group, scale, softcap, sc, o);
  else
    decode_group<0>(q, k, v, mask, len, stride, hd, group, scale, softcap, sc, o);
}

SPINLM_CLONES void decode_group_f32(const float* q, const float* k, const float* v, const int32_t* mask, int64_t len, int64_t stride,
                                    int64_t hd, int64_t group, float scale, float softcap, float* sc, float* o) {
  decode_group_any(q, k, v, mask, len, stride, hd, group, scale, softcap, sc, o);
}

SPINLM_CLONES void decode_group_bf16(const float* q, const uint16_t* k, const uint16_t* v, const int32_t* mask, int64_t len,
                                     int64_t stride, int64_t hd, int64_t group, float scale, float softcap, float* sc, float* o) {
  decode_group_any(q, k, v, mask, len, stride, hd, group, scale, softcap, sc, o);
}

// The sliding window (0 = none): query i sees key j iff j <= i and i - j < window, so its first key is
// max(0, i - window + 1) (Hugging Face's sliding_window_overlay, on positions in the sequence).
SPINLM_INLINE int64_t first_key(int64_t i, int64_t window) { return window > 0 ? std::max<int64_t>(0, i - window + 1) : 0; }

// Keys before a row's window inside its block's columns: -inf, as a masked key's score.
SPINLM_INLINE void hide_before(float* row, int64_t n) {
  for (int64_t j = 0; j < n; ++j) row[j] = -INFINITY;
}

}  // namespace

// Queries go in blocks of kRowBlock rows: a block's rows see only the keys before its end, so the
// score products skip the upper triangle (5/8 of the full L x L work at L = 4 blocks).
constexpr int64_t kRowBlock = 64;

namespace {

// One (sequence, head) of the forward: out rows and lse of head h of sequence bi. s: scratch [l, l].
void attention_head(const Geometry& g, const float* q, const float* k, const float* v, const float* bias, int64_t bi,
                    int64_t h, float scale, int64_t window, float softcap, float* s, float* out, float* lse) {
  const int64_t l = g.l, qs = g.q_stride(), ks = g.kv_stride();
  const float* qbh = q + g.q_offset(bi, h);
  const float* kbh = k + g.kv_offset(bi, h);
  const float* vbh = v + g.kv_offset(bi, h);
  float* lse_bh = lse + (bi * g.nh + h) * l;
  for (int64_t r0 = 0; r0 < l; r0 += kRowBlock) {
    // the block's keys [k0, r1): column c of its scores is key k0 + c
    const int64_t r1 = std::min(l, r0 + kRowBlock), rows = r1 - r0, k0 = first_key(r0, window), keys = r1 - k0;
    float* sb = s + r0 * l;
    gemm(false, true, rows, keys, g.hd, scale, qbh + r0 * qs, qs, kbh + k0 * ks, ks, 0.0f, sb, l);
    for (int64_t i = r0; i < r1; ++i) {
      if (softcap > 0.0f) cap_row(s + i * l, i + 1 - k0, softcap, nullptr);  // before the mask, as HF
      hide_before(s + i * l, first_key(i, window) - k0);
      lse_bh[i] = softmax_row(s + i * l, bias + k0, i + 1 - k0, keys);
    }
    gemm(false, false, rows, g.hd, keys, 1.0f, sb, l, vbh + k0 * ks, ks, 0.0f, out + g.q_offset(bi, h) + r0 * qs, qs);
  }
}

// One (sequence, head) of the backward: dq rows of head h; adds this head's part of dK and dV to its
// kv head's rows. p, dp: scratch [l, l]; delta: scratch [l].
void attention_head_backward(const Geometry& g, const float* q, const float* k, const float* v, const float* out,
                             const float* lse, const float* dout, const float* bias, int64_t bi, int64_t h, float scale,
                             int64_t window, float softcap, float* p, float* dp, float* tc, float* delta, float* dq, float* dk,
                             float* dv) {
  const int64_t l = g.l, hd = g.hd, qs = g.q_stride(), ks = g.kv_stride();
  const float* qbh = q + g.q_offset(bi, h);
  const float* kbh = k + g.kv_offset(bi, h);
  const float* vbh = v + g.kv_offset(bi, h);
  const float* obh = out + g.q_offset(bi, h);
  const float* dobh = dout + g.q_offset(bi, h);
  const float* lse_bh = lse + (bi * g.nh + h) * l;
  float* dkb = dk + g.kv_offset(bi, h);
  float* dvb = dv + g.kv_offset(bi, h);
  for (int64_t r0 = 0; r0 < l; r0 += kRowBlock) {
    const int64_t r1 = std::min(l, r0 + kRowBlock), rows = r1 - r0, k0 = first_key(r0, window), keys = r1 - k0;
    float* pb = p + r0 * l;
    float* dpb = dp + r0 * l;
    const float* kb0 = kbh + k0 * ks;
    const float* vb0 = vbh + k0 * ks;
    // P = softmax(scale Q K^T) of the block (keys [k0, r1)), recomputed from the saved lse
    gemm(false, true, rows, keys, hd, scale, qbh + r0 * qs, qs, kb0, ks, 0.0f, pb, l);
    for (int64_t i = r0; i < r1; ++i) {
      if (softcap > 0.0f) cap_row(p + i * l, i + 1 - k0, softcap, tc + i * l);  // as the forward capped
      hide_before(p + i * l, first_key(i, window) - k0);
      probs_row(p + i * l, bias + k0, i + 1 - k0, keys, lse_bh[i]);
      double d = 0;  // delta_i = dO_i . O_i
      for (int64_t c = 0; c < hd; ++c) d += static_cast<double>(dobh[i * qs + c]) * obh[i * qs + c];
      delta[i] = static_cast<float>(d);
    }
    // dV[:keys] += P^T dO; dP = dO V[:keys]^T
    gemm(true, false, keys, hd, rows, 1.0f, pb, l, dobh + r0 * qs, qs, 1.0f, dvb + k0 * ks, ks);
    gemm(false, true, rows, keys, hd, 1.0f, dobh + r0 * qs, qs, vb0, ks, 0.0f, dpb, l);
    // dS = P * (dP - delta)
    for (int64_t i = r0; i < r1; ++i) ds_row(dp + i * l, p + i * l, delta[i], keys);
    // through the cap: d s = dS (1 - tanh(s / c)^2) (masked keys have P = 0, so dS = 0 there)
    if (softcap > 0.0f)
      for (int64_t i = r0; i < r1; ++i) uncap_ds_row(dp + i * l, tc + i * l, i + 1 - k0);
    // dQ = scale dS K[:keys]; dK[:keys] += scale dS^T Q
    gemm(false, false, rows, hd, keys, scale, dpb, l, kb0, ks, 0.0f, dq + g.q_offset(bi, h) + r0 * qs, qs);
    gemm(true, false, keys, hd, rows, scale, dpb, l, qbh + r0 * qs, qs, 1.0f, dkb + k0 * ks, ks);
  }
}

}  // namespace

// Both passes run tasks on the pool (BlasOnOneThread): the forward one per (sequence, head), the
// backward one per (sequence, kv head), whose query heads add to its dK and dV in head order. Each
// task is sequential, so no number depends on the thread count.
void attention(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
               int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
               float* lse) {
  if (spans) return attention_spans(q, k, v, key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap, out, lse);
  const Geometry g{l, nh, nkv, hd};
  std::vector<float> bias(static_cast<size_t>(b * l));
  for (int64_t i = 0; i < b * l; ++i) bias[i] = key_mask[i] ? 0.0f : -INFINITY;
  const BlasOnOneThread one;
  parallel_for(b * nh, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(static_cast<size_t>(l * l));
    for (int64_t t = t0; t < t1; ++t)
      attention_head(g, q, k, v, bias.data() + (t / nh) * l, t / nh, t % nh, scale, window, softcap, s.data(), out, lse);
  });
}

void attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask,
                        const int32_t* spans, const float* out, const float* lse, const float* dout, int64_t b, int64_t l,
                        int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* dq,
                        float* dk, float* dv) {
  if (spans)
    return attention_spans_backward(q, k, v, key_mask, spans, out, lse, dout, b, l, nh, nkv, hd, scale, window, softcap, dq, dk,
                                    dv);
  const Geometry g{l, nh, nkv, hd};
  std::vector<float> bias(static_cast<size_t>(b * l));
  for (int64_t i = 0; i < b * l; ++i) bias[i] = key_mask[i] ? 0.0f : -INFINITY;
  std::memset(dk, 0, sizeof(float) * b * l * nkv * hd);
  std::memset(dv, 0, sizeof(float) * b * l * nkv * hd);
  // one task per (sequence, kv head): its query heads in head order, each adding to the kv head's dK
  // and dV rows (no other task touches them)
  const int64_t group = nh / nkv;
  const BlasOnOneThread one;
  parallel_for(b * nkv, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> p(static_cast<size_t>(l * l)), dp(static_cast<size_t>(l * l)), delta(static_cast<size_t>(l));
    std::vector<float> tc(softcap > 0.0f ? static_cast<size_t>(l * l) : 0);  // tanh(s / c) of the capped scores
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / nkv;
      for (int64_t h = (t % nkv) * group; h < (t % nkv + 1) * group; ++h)
        attention_head_backward(g, q, k, v, out, lse, dout, bias.data() + bi * l, bi, h, scale, window, softcap, p.data(),
                                dp.data(), tc.data(), delta.data(), dq, dk, dv);
    }
  });
}

void attention_decode(const float* q, const void* k_cache, const void* v_cache, DType cache_dt,
                      const int32_t* lengths, const int32_t* key_mask, int64_t b, int64_t lmax,
                      int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out) {
  const int64_t group = nh / nkv;
  // one task per (sequence, kv head): its query heads h = kvh * group + g are contiguous in q and out
  parallel_for(b * nkv, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> sc(static_cast<size_t>(group * lmax));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t bi = w / nkv, kvh = w % nkv;
      const int64_t base = (bi * nkv + kvh) * lmax * hd;  // position 0 of this sequence and kv head
      const int64_t qoff = (bi * nh + kvh * group) * hd;
      // the query is position len - 1: its window is the cached positions [lo, len)
      const int64_t len = lengths[bi], lo = len > 0 ? first_key(len - 1, window) : 0, at = base + lo * hd;
      const int32_t* mask = key_mask ? key_mask + bi * lmax + lo : nullptr;
      if (cache_dt == DType::kBF16)
        decode_group_bf16(q + qoff, static_cast<const uint16_t*>(k_cache) + at, static_cast<const uint16_t*>(v_cache) + at, mask,
                          len - lo, hd, hd, group, scale, softcap, sc.data(), out + qoff);
      else
        decode_group_f32(q + qoff, static_cast<const float*>(k_cache) + at, static_cast<const float*>(v_cache) + at, mask, len - lo,
                         hd, hd, group, scale, softcap, sc.data(), out + qoff);
    }
  });
}

}  // namespace spinlm
