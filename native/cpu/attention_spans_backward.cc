// The backward of attention with spans (attention_spans.cc has the layout and the forward). Not bitwise
// packing-invariant (tolerance against float64), but deterministic and independent of the thread count:
//   - delta_i = dO_i . O_i per (row, head, query), in double;
//   - tasks (row, head): query blocks of kBwdRows in order, each over the runs of key tiles it sees in key
//     order: P from the saved lse, dP = dO V^T, dS = P (dP - delta) (times 1 - tanh^2 with a soft-cap),
//     then dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K (cblas_sgemm, OpenBLAS on one thread);
//   - a kv head with one query head takes its dK, dV directly; with a group, each head writes its own
//     rows and the group's rows are summed in head order after (memory: 2 x the size of q).
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
constexpr int64_t kRunTiles = 8;  // key tiles per product at most (512 keys)

struct Grads {
  const float *q, *k, *v, *lse, *dout, *delta;
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
    if (c.softcap > 0.0f)
      for (int64_t j = j0; j < j1; ++j) t[j] = 0.0f;
    // visible entries: x = capped score + bias - lse (-inf when masked); the others -inf
    int64_t next = j0;
    auto visible = [&](int64_t a, int64_t e) {
      a = std::max(a, j0);
      e = std::min(e, j1);
      if (a >= e) return;
      for (int64_t j = next; j < a; ++j) x[j] = -INFINITY;
      if (c.softcap > 0.0f)  // as the forward capped
        for (int64_t j = a; j < e; ++j) {
          t[j] = std::tanh(x[j] / c.softcap);
          x[j] = c.softcap * t[j];
        }
      for (int64_t j = a; j < e; ++j) x[j] = x[j] + bias[j] - lse;
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
    if (c.softcap > 0.0f)
      for (j = j0; j < j1; ++j) d[j] = x[j] * (d[j] - dl) * (1.0f - t[j] * t[j]);
    else
      for (j = j0; j < j1; ++j) d[j] = x[j] * (d[j] - dl);
  }
}

}  // namespace

void attention_spans_backward(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans,
                              const float* out, const float* lse, const float* dout, int64_t b, int64_t l, int64_t nh, int64_t nkv,
                              int64_t hd, float scale, int64_t window, float softcap, float* dq, float* dk, float* dv) {
  const Call c(key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap);
  const int64_t qs = c.q_stride(), ks = c.kv_stride(), group = nh / nkv, tiles = c.tiles();
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
  // one task per (row, head): query blocks in order, each over the runs of key tiles it sees. dK and dV
  // go straight to the kv head's rows when it has one query head, else to the head's own rows (part),
  // summed in head order after.
  const int64_t hs = group > 1 ? hd : ks;  // between positions of a head's dK / dV rows
  std::vector<float> part(group > 1 ? static_cast<size_t>(2 * b * nh * l * hd) : 0);
  float* dkp = group > 1 ? part.data() : dk;
  float* dvp = group > 1 ? part.data() + b * nh * l * hd : dv;
  auto head_rows = [&](float* base, int64_t bi, int64_t h) { return group > 1 ? base + (bi * nh + h) * l * hd : base + c.kv_off(bi, h, 0); };
  const Grads g{q, k, v, lse, dout, delta.data()};
  const BlasOnOneThread one;
  parallel_for(b * nh, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int> need;
    std::vector<float> p, ds, tc;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / nh, h = t % nh, kvh = h / group;
      float* dkh = head_rows(dkp, bi, h);
      float* dvh = head_rows(dvp, bi, h);
      for (int64_t j = 0; j < l; ++j) {
        std::memset(dkh + j * hs, 0, sizeof(float) * hd);
        std::memset(dvh + j * hs, 0, sizeof(float) * hd);
      }
      for (int64_t r0 = 0; r0 < l; r0 += kBwdRows) {
        const int64_t r1 = std::min(l, r0 + kBwdRows), rows = r1 - r0;
        float* dqb = dq + ((bi * l + r0) * nh + h) * hd;
        const float* dob = dout + ((bi * l + r0) * nh + h) * hd;
        for (int64_t i = r0; i < r1; ++i) std::memset(dq + ((bi * l + i) * nh + h) * hd, 0, sizeof(float) * hd);
        c.tiles_seen(bi, r0, r1, need);
        for (const auto& [u0, u1] : attn::runs_of(need, tiles, kRunTiles)) {
          const int64_t j0 = u0 * kTile, j1 = std::min({u1 * kTile, l, r1}), kw = j1 - j0;
          if (kw <= 0) continue;
          if (static_cast<int64_t>(p.size()) < rows * kw) p.resize(rows * kw), ds.resize(rows * kw), tc.resize(rows * kw);
          block_grads(c, g, bi, h, r0, r1, j0, j1, p.data(), ds.data(), tc.data());
          // dV += P^T dO; dK += scale dS^T Q; dQ += scale dS K
          gemm(true, false, kw, hd, rows, 1.0f, p.data(), kw, dob, qs, 1.0f, dvh + j0 * hs, hs);
          gemm(true, false, kw, hd, rows, scale, ds.data(), kw, c.qrow(q, bi, h, r0), qs, 1.0f, dkh + j0 * hs, hs);
          gemm(false, false, rows, hd, kw, scale, ds.data(), kw, k + c.kv_off(bi, kvh, j0), ks, 1.0f, dqb, qs);
        }
      }
    }
  });
  if (group == 1) return;
  // dK, dV of each kv head: its query heads' rows summed in head order
  parallel_for(b * l, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bi = r / l, j = r % l;
      for (int64_t kvh = 0; kvh < nkv; ++kvh)
        for (int64_t x = 0; x < 2; ++x) {
          float* dst = (x ? dv : dk) + c.kv_off(bi, kvh, j);
          const float* src = (x ? dvp : dkp) + ((bi * nh + kvh * group) * l + j) * hd;
          for (int64_t d = 0; d < hd; ++d) {
            float sum = src[d];
            for (int64_t u = 1; u < group; ++u) sum += src[u * l * hd + d];
            dst[d] = sum;
          }
        }
    }
  });
}

}  // namespace spinlm
