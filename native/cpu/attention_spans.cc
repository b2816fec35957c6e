// Attention with spans (AttentionOpts.spans, issue 27's pair and packing layout) on the CPU: query i of
// row b sees keys [a0, a1) U [b0, i] with key mask 1, where [a0, a1) is what it sees before its hidden
// stretch [hideLo, hideHi) and [b0, i] after it (both cut by the window, counted without the hidden
// stretch). Work and memory go with the visible (query, key) pairs: queries go in blocks, keys in tiles
// of kTile, and a block computes only the tiles some of its queries see (never an L x L matrix).
//
// Forward (docs/ops.md "Attention spans"): a query's out and lse depend only on its visible keys' values
// and their offsets from its lo, bit for bit, whatever is packed with it (packing invariance):
//   - score (i, j) = scale * sum over d = 0, 1, ... hd - 1 in that order, one multiply-add per step in
//     its own vector lane (lanes over keys: K is transposed once per call), the same code for every key;
//   - max over the visible keys (exact in any order); p = exp_neg(s - max), elementwise;
//   - sum of p in 16 lanes aligned to lo (lane t adds keys lo + t, lo + t + 16, ... in increasing order,
//     invisible keys adding an exact 0), then simd::hsum's fixed tree;
//   - out = (sum over keys in increasing order of p v, one multiply-add per key in the lane of d) / sum:
//     keys before lo or hidden add an exact 0, so the sum is over the visible keys in order.
// Tasks on the pool: (row, head, query block), each owning its out rows and lse.
//
// Backward: attention_spans_backward.cc.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_spans.h"
#include "model_kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace spinlm {
namespace {

using simd::kLanes;
using simd::vf;
using simd::vf8;
using attn::Call;
using attn::kTile;
using attn::runs_of;
using attn::Visible;

constexpr int64_t kFwdRows = 48;  // queries per forward block: 8 register tiles of 6
constexpr int64_t kPad = 16;      // floats before and after a score row

SPINLM_INLINE vf8 load8(const float* p) {
  vf8 v;
  memcpy(&v, p, sizeof v);
  return v;
}
SPINLM_INLINE void store8(float* p, vf8 v) { memcpy(p, &v, sizeof v); }
SPINLM_INLINE vf8 splat8(float x) { return vf8{} + x; }
// *p in every lane: a load and a broadcast (splat8 adds 0 first; vf8{x, x, ...} compiles to insert
// chains inside the target clones)
SPINLM_INLINE vf8 bcast8(const float* p) {
  vf8 v = {};
  v[0] = *p;
  return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
}

// ---- forward ----

constexpr int kScoreRows = 6;  // queries per score register tile: 6 x 16 keys, 12 ymm accumulators

// Scores of kScoreRows queries (rows qr) against 16 keys of the transposed K (kt at the first key,
// rows of lp floats): s[r][j] = scale * (sum over d in order of q[r][d] k[j][d]).
SPINLM_INLINE void score_tile(const float* const* qr, const float* kt, int64_t lp, int64_t hd, float scale, float* const* s) {
  vf8 acc[kScoreRows][2];
  for (int r = 0; r < kScoreRows; ++r) acc[r][0] = acc[r][1] = splat8(0.0f);
  for (int64_t d = 0; d < hd; ++d) {
    const vf8 k0 = load8(kt + d * lp), k1 = load8(kt + d * lp + 8);
    for (int r = 0; r < kScoreRows; ++r) {
      const vf8 x = bcast8(qr[r] + d);
      acc[r][0] += x * k0;
      acc[r][1] += x * k1;
    }
  }
  const vf8 sc = splat8(scale);
  for (int r = 0; r < kScoreRows; ++r) {
    store8(s[r], acc[r][0] * sc);
    store8(s[r] + 8, acc[r][1] * sc);
  }
}

// out[r][d0, d0 + 8W) = inv[r] * (sum over keys j of the runs, in increasing order, of p[r][j] v[j][d]).
template <int R, int W>
SPINLM_INLINE void values_tile(const float* const* p, const float* v, int64_t ks, const std::pair<int64_t, int64_t>* runs, size_t nruns,
                               int64_t d0, const float* inv, float* const* out, int rows) {
  vf8 acc[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) acc[r][w] = splat8(0.0f);
  for (size_t u = 0; u < nruns; ++u)
    for (int64_t j = runs[u].first; j < runs[u].second; ++j) {
      vf8 vv[W];
      for (int w = 0; w < W; ++w) vv[w] = load8(v + j * ks + d0 + 8 * w);
      for (int r = 0; r < R; ++r) {
        const vf8 x = bcast8(p[r] + j);
        for (int w = 0; w < W; ++w) acc[r][w] += x * vv[w];
      }
    }
  for (int r = 0; r < rows; ++r)
    for (int w = 0; w < W; ++w) store8(out[r] + d0 + 8 * w, acc[r][w] * splat8(inv[r]));
}

// Any hd (not a multiple of 8): the same sums one d at a time. std::fma, not acc += p * v: GCC
// vectorizes that loop as an in-order reduction (products by vmulps, then the adds one by one) with a
// contracted fma tail, so a key's rounding would depend on where its run starts (packing invariance
// broke at hd 12, test/attention_spans_cpu.test.ts); an explicit fma has one form everywhere.
void values_any(const float* p, const float* v, int64_t ks, const std::pair<int64_t, int64_t>* runs, size_t nruns, int64_t hd,
                float inv, float* out) {
  for (int64_t d = 0; d < hd; ++d) {
    float acc = 0.0f;
    for (size_t u = 0; u < nruns; ++u)
      for (int64_t j = runs[u].first; j < runs[u].second; ++j) acc = std::fma(p[j], v[j * ks + d], acc);
    out[d] = acc * inv;
  }
}

// One query's row of scores x (x[j] for key j, valid on [rs - kPad, re + kPad)) becomes its
// probabilities times the sum (p = exp(s - max), 0 off its visible keys); returns the lse, sets inv.
SPINLM_CLONES float softmax_spans(float* x, const Visible& v, int64_t lo, const float* bias, float softcap, int64_t rs, int64_t re,
                                  float* inv) {
  float m = -INFINITY;
  auto keep = [&](int64_t j0, int64_t j1) {  // elementwise, then the max (exact in any order)
    if (softcap > 0.0f)
      for (int64_t j = j0; j < j1; ++j) x[j] = softcap * std::tanh(x[j] / softcap);  // before the mask, as HF
    int64_t j = j0;
    vf vm = simd::splat(-INFINITY);
    for (; j + kLanes <= j1; j += kLanes) {
      const vf y = simd::load(x + j) + simd::load(bias + j);
      simd::store(x + j, y);
      vm = simd::vmax(vm, y);
    }
    const float mv = simd::hmax(vm);
    m = mv > m ? mv : m;
    for (; j < j1; ++j) {
      x[j] += bias[j];
      m = x[j] > m ? x[j] : m;
    }
  };
  auto hide = [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) x[j] = -INFINITY;
  };
  const int64_t f = v.first(), e = v.b1;
  if (v.a0 < v.a1) keep(v.a0, v.a1);
  keep(v.b0, v.b1);
  if (m == -INFINITY) {
    std::memset(x + rs - kPad, 0, sizeof(float) * (re - rs + 2 * kPad));
    *inv = 0.0f;
    return -INFINITY;
  }
  hide(rs - kPad, f);
  if (v.a0 < v.a1) hide(v.a1, v.b0);
  hide(e, re + kPad);
  const vf vm = simd::splat(m), zero = simd::splat(0.0f);
  for (int64_t c = rs - kPad; c < re + kPad; c += kLanes)
    simd::store(x + c, c + kLanes <= f || c >= e ? zero : simd::exp_neg(simd::load(x + c) - vm));
  vf vs = zero;  // lanes aligned to lo
  for (int64_t c = lo + (f - lo) / kLanes * kLanes; c < e; c += kLanes) vs += simd::load(x + c);
  const double sum = simd::hsum(vs);
  *inv = static_cast<float>(1.0 / sum);
  return m + static_cast<float>(std::log(sum));
}

// One (row, head, query block) of the forward. kt: K transposed [b, nkv, hd, lp]; s: scratch.
SPINLM_CLONES void forward_block(const Call& c, const float* q, const float* kt, int64_t lp, const float* v, int64_t bi, int64_t h,
                                 int64_t r0, const int32_t* spans, std::vector<int>& need, std::vector<float>& s, float* out,
                                 float* lse) {
  const int64_t r1 = std::min(c.l, r0 + kFwdRows), rows = r1 - r0, hd = c.hd, kvh = h / (c.nh / c.nkv);
  float* lse_h = lse + (bi * c.nh + h) * c.l;
  c.tiles_seen(bi, r0, r1, need);
  const auto runs = runs_of(need, c.tiles(), c.tiles());
  if (runs.empty()) {  // no query of the block sees a key
    for (int64_t i = r0; i < r1; ++i) {
      lse_h[i] = -INFINITY;
      std::memset(out + ((bi * c.l + i) * c.nh + h) * hd, 0, sizeof(float) * hd);
    }
    return;
  }
  const int64_t rs = runs.front().first * kTile, re = runs.back().second * kTile, width = re - rs + 2 * kPad;
  if (static_cast<int64_t>(s.size()) < kFwdRows * width) s.resize(kFwdRows * width);
  float* x[kFwdRows];  // x[r][j]: row r's score of key j
  const float* qr[kFwdRows];
  for (int64_t r = 0; r < kFwdRows; ++r) {
    x[r] = s.data() + r * width + kPad - rs;
    qr[r] = c.qrow(q, bi, h, r0 + std::min(r, rows - 1));  // rows past the block repeat its last (unused)
  }
  const float* ktk = kt + (bi * c.nkv + kvh) * hd * lp;
  // [f, e) per row: from its first visible key to itself; a register tile skips the 16-key chunks
  // outside its rows' union (their entries are hidden by softmax_spans, as all invisible ones)
  int64_t f[kFwdRows], e[kFwdRows];
  for (int64_t r = 0; r < kFwdRows; ++r) {
    const int64_t i = r0 + std::min(r, rows - 1);
    f[r] = c.vis[bi * c.l + i].first();
    e[r] = i + 1;
  }
  auto span_of = [&](int64_t r, int64_t n) {
    return std::make_pair(*std::min_element(f + r, f + r + n), *std::max_element(e + r, e + r + n));
  };
  for (int64_t r = 0; r < rows; r += kScoreRows) {
    const auto [gf, ge] = span_of(r, kScoreRows);
    float* sr[kScoreRows];
    for (const auto& [t0, t1] : runs)
      for (int64_t j = std::max(t0 * kTile, gf / 16 * 16); j < std::min(t1 * kTile, ge); j += 16) {
        for (int u = 0; u < kScoreRows; ++u) sr[u] = x[r + u] + j;
        score_tile(qr + r, ktk + j, lp, hd, c.scale, sr);
      }
  }
  float inv[kFwdRows];
  float* orow[kFwdRows];
  for (int64_t r = 0; r < kFwdRows; ++r) {
    const int64_t i = r0 + std::min(r, rows - 1);
    orow[r] = out + ((bi * c.l + i) * c.nh + h) * hd;
    if (r < rows)
      lse_h[i] = softmax_spans(x[r], c.vis[bi * c.l + i], spans[3 * (bi * c.l + i)], c.bias.data() + bi * c.l, c.softcap, rs, re,
                               inv + r);
  }
  // values: per register tile, the seen keys from its rows' first visible key to its last query (the
  // keys skipped have p = 0 for every row of the tile: leading or trailing zeros of each sum)
  const float* vh = v + c.kv_off(bi, kvh, 0);
  const int64_t ks = c.kv_stride();
  std::vector<std::pair<int64_t, int64_t>> vr;
  auto clip = [&](int64_t gf, int64_t ge) {
    vr.clear();
    for (const auto& [t0, t1] : runs)
      if (std::max(t0 * kTile, gf) < std::min(t1 * kTile, ge)) vr.emplace_back(std::max(t0 * kTile, gf), std::min(t1 * kTile, ge));
  };
  if (hd % 8) {
    for (int64_t r = 0; r < rows; ++r) {
      clip(f[r], e[r]);
      values_any(x[r], vh, ks, vr.data(), vr.size(), hd, inv[r], orow[r]);
    }
    return;
  }
  for (int64_t r = 0; r < rows; r += 3) {
    const int n = static_cast<int>(std::min<int64_t>(3, rows - r));
    const auto [gf, ge] = span_of(r, 3);
    clip(gf, ge);
    int64_t d0 = 0;
    for (; d0 + 32 <= hd; d0 += 32) values_tile<3, 4>(x + r, vh, ks, vr.data(), vr.size(), d0, inv + r, orow + r, n);
    for (; d0 + 16 <= hd; d0 += 16) values_tile<3, 2>(x + r, vh, ks, vr.data(), vr.size(), d0, inv + r, orow + r, n);
    for (; d0 < hd; d0 += 8) values_tile<3, 1>(x + r, vh, ks, vr.data(), vr.size(), d0, inv + r, orow + r, n);
  }
}

}  // namespace

void attention_spans(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
                     int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
                     float* lse) {
  const Call c(key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap);
  // K transposed per (row, kv head): [hd, lp], keys padded with zeros to whole tiles
  const int64_t lp = c.tiles() * kTile;
  std::vector<float> kt(static_cast<size_t>(b * nkv * hd * lp), 0.0f);
  parallel_for(b * nkv, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / nkv, kvh = t % nkv;
      float* dst = kt.data() + t * hd * lp;
      for (int64_t j = 0; j < l; ++j) {
        const float* src = k + c.kv_off(bi, kvh, j);
        for (int64_t d = 0; d < hd; ++d) dst[d * lp + j] = src[d];
      }
    }
  });
  const int64_t blocks = (l + kFwdRows - 1) / kFwdRows;
  parallel_for(b * nh * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int> need;
    std::vector<float> s;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / blocks;
      forward_block(c, q, kt.data(), lp, v, bh / nh, bh % nh, (t % blocks) * kFwdRows, spans, need, s, out, lse);
    }
  });
}

}  // namespace spinlm
