// The backward of attention with spans (attention_spans.cc has the layout and the forward). Not bitwise
// packing-invariant (tolerance against float64), but deterministic and independent of the thread count:
//   - delta_i = dO_i . O_i per (row, head, query), in double;
//   - dQ: tasks (row, head, query block of kBwdRows); over the runs of key tiles the block sees, in key
//     order: P from the saved lse, dP = dO V^T, dS = P (dP - delta) (times 1 - tanh^2 with a soft-cap),
//     dQ += scale dS K;
//   - dK, dV: tasks (row, kv head, key tile); over the kv head's query heads in head order and, per head,
//     the query blocks that see the tile in block order: the same P and dS, dV += P^T dO, dK += scale dS^T Q.
// So P and dP are computed twice (once per pass), the price of tasks that own their outputs (no
// reduction across threads). Products by cblas_sgemm, OpenBLAS on one thread meanwhile.
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

using attn::BlasOnOneThread;
using attn::Call;
using attn::gemm;
using attn::kTile;
using attn::Visible;
using simd::kLanes;
using simd::vf;

constexpr int64_t kBwdRows = 64;  // queries per backward block
constexpr int64_t kRunTiles = 4;  // key tiles per dQ product (256 keys)

struct Grads {
  const float *q, *k, *v, *lse, *dout, *delta;
  float *dq, *dk, *dv;
};

// Rows [r0, r1) of head h against keys [j0, j1): p = the probabilities (0 off each query's visible
// keys), ds = dS (through the cap). p, ds, tc: scratch [r1 - r0, j1 - j0].
SPINLM_CLONES void block_grads(const Call& c, const Grads& g, int64_t bi, int64_t h, int64_t r0, int64_t r1, int64_t j0, int64_t j1,
                               float* p, float* ds, float* tc) {
  const int64_t rows = r1 - r0, kw = j1 - j0, hd = c.hd, qs = c.q_stride(), ks = c.kv_stride(), kvh = h / (c.nh / c.nkv);
  const float* kj = g.k + c.kv_off(bi, kvh, j0);
  const float* vj = g.v + c.kv_off(bi, kvh, j0);
  const float* dor = g.dout + ((bi * c.l + r0) * c.nh + h) * hd;
  gemm(false, true, rows, kw, hd, c.scale, c.qrow(g.q, bi, h, r0), qs, kj, ks, 0.0f, p, kw);
  gemm(false, true, rows, kw, hd, 1.0f, dor, qs, vj, ks, 0.0f, ds, kw);  // dP = dO V^T
  const float* bias = c.bias.data() + bi * c.l;
  const float* lse_h = g.lse + (bi * c.nh + h) * c.l;
  const float* delta_h = g.delta + (bi * c.nh + h) * c.l;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r0 + r;
    float* x = p + r * kw - j0;  // x[j] for key j
    float* t = tc + r * kw - j0;
    float* d = ds + r * kw - j0;
    const float lse = lse_h[i];
    const Visible& vis = c.vis[bi * c.l + i];
    if (lse == -INFINITY) {
      std::memset(p + r * kw, 0, sizeof(float) * kw);
      std::memset(ds + r * kw, 0, sizeof(float) * kw);
      continue;
    }
    for (int64_t j = j0; j < j1; ++j) t[j] = 0.0f;
    // visible entries: x = capped score + bias - lse (-inf when masked); the others -inf
    int64_t next = j0;
    auto visible = [&](int64_t a, int64_t e) {
      a = std::max(a, j0);
      e = std::min(e, j1);
      if (a >= e) return;
      for (int64_t j = next; j < a; ++j) x[j] = -INFINITY;
      for (int64_t j = a; j < e; ++j) {
        float s = x[j];
        if (c.softcap > 0.0f) {  // as the forward capped
          t[j] = std::tanh(s / c.softcap);
          s = c.softcap * t[j];
        }
        x[j] = s + bias[j] - lse;
      }
      next = e;
    };
    if (vis.a0 < vis.a1) visible(vis.a0, vis.a1);
    visible(vis.b0, vis.b1);
    for (int64_t j = next; j < j1; ++j) x[j] = -INFINITY;
    int64_t j = j0;
    for (; j + kLanes <= j1; j += kLanes) simd::store(x + j, simd::exp_neg(simd::load(x + j)));
    for (; j < j1; ++j) x[j] = std::exp(x[j]);
    // dS = P (dP - delta), through the cap: times 1 - tanh^2 (t = 0 off the visible keys, where P = 0)
    const float dl = delta_h[i];
    for (j = j0; j < j1; ++j) d[j] = x[j] * (d[j] - dl) * (1.0f - t[j] * t[j]);
  }
}

}  // namespace

void attention_spans_backward(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans,
                              const float* out, const float* lse, const float* dout, int64_t b, int64_t l, int64_t nh, int64_t nkv,
                              int64_t hd, float scale, int64_t window, float softcap, float* dq, float* dk, float* dv) {
  const Call c(key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap);
  const int64_t qs = c.q_stride(), ks = c.kv_stride(), group = nh / nkv, tiles = c.tiles();
  const int64_t blocks = (l + kBwdRows - 1) / kBwdRows;
  std::vector<float> delta(static_cast<size_t>(b * nh * l));
  parallel_for(b * nh, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t i = 0; i < l; ++i) {
        const int64_t at = ((t / nh * l + i) * nh + t % nh) * hd;
        double d = 0;
        for (int64_t x = 0; x < hd; ++x) d += static_cast<double>(dout[at + x]) * out[at + x];
        delta[t * l + i] = static_cast<float>(d);
      }
  });
  // seen[(bi * blocks + block) * (tiles + 1) + tile]: the key tiles each query block sees
  std::vector<int> seen(static_cast<size_t>(b * blocks * (tiles + 1)));
  parallel_for(b * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int> need;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = (t % blocks) * kBwdRows;
      c.tiles_seen(t / blocks, r0, std::min(l, r0 + kBwdRows), need);
      std::copy(need.begin(), need.end(), seen.begin() + t * (tiles + 1));
    }
  });
  const Grads g{q, k, v, lse, dout, delta.data(), dq, dk, dv};
  const BlasOnOneThread one;
  // dQ per (row, head, query block)
  parallel_for(b * nh * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> p, ds, tc;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / (nh * blocks), h = t / blocks % nh, r0 = (t % blocks) * kBwdRows, r1 = std::min(l, r0 + kBwdRows);
      float* dqb = dq + ((bi * l + r0) * nh + h) * hd;
      for (int64_t i = r0; i < r1; ++i) std::memset(dq + ((bi * l + i) * nh + h) * hd, 0, sizeof(float) * hd);
      const std::vector<int> need(seen.begin() + (bi * blocks + t % blocks) * (tiles + 1),
                                  seen.begin() + (bi * blocks + t % blocks + 1) * (tiles + 1));
      for (const auto& [u0, u1] : attn::runs_of(need, tiles, kRunTiles)) {
        const int64_t j0 = u0 * kTile, j1 = std::min({u1 * kTile, l, r1}), n = (r1 - r0) * (j1 - j0);
        if (j0 >= j1) continue;
        if (static_cast<int64_t>(p.size()) < n) p.resize(n), ds.resize(n), tc.resize(n);
        block_grads(c, g, bi, h, r0, r1, j0, j1, p.data(), ds.data(), tc.data());
        gemm(false, false, r1 - r0, hd, j1 - j0, scale, ds.data(), j1 - j0, k + c.kv_off(bi, h / group, j0), ks, 1.0f, dqb, qs);
      }
    }
  });
  // dK, dV per (row, kv head, key tile)
  parallel_for(b * nkv * tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> p(kBwdRows * kTile), ds(kBwdRows * kTile), tc(kBwdRows * kTile);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / (nkv * tiles), kvh = t / tiles % nkv, kt = t % tiles, j0 = kt * kTile, j1 = std::min(l, j0 + kTile);
      float* dkt = dk + c.kv_off(bi, kvh, j0);
      float* dvt = dv + c.kv_off(bi, kvh, j0);
      for (int64_t j = j0; j < j1; ++j) {
        std::memset(dk + c.kv_off(bi, kvh, j), 0, sizeof(float) * hd);
        std::memset(dv + c.kv_off(bi, kvh, j), 0, sizeof(float) * hd);
      }
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int64_t qb = 0; qb < blocks; ++qb) {
          if (!seen[(bi * blocks + qb) * (tiles + 1) + kt]) continue;
          const int64_t r0 = qb * kBwdRows, r1 = std::min(l, r0 + kBwdRows), kw = j1 - j0;
          block_grads(c, g, bi, h, r0, r1, j0, j1, p.data(), ds.data(), tc.data());
          const float* dor = dout + ((bi * l + r0) * nh + h) * hd;
          gemm(true, false, kw, hd, r1 - r0, 1.0f, p.data(), kw, dor, qs, 1.0f, dvt, ks);
          gemm(true, false, kw, hd, r1 - r0, scale, ds.data(), kw, c.qrow(q, bi, h, r0), qs, 1.0f, dkt, ks);
        }
    }
  });
}

}  // namespace spinlm
