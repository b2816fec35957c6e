// What the CPU attention kernels share: cblas_sgemm on row-major strided operands, OpenBLAS held on one
// thread while our pool runs attention's tasks (attention.cc, attention_spans*.cc), and the spans
// geometry (what each query sees, which key tiles a query block sees) of attention_spans.cc and
// attention_spans_backward.cc.
#pragma once
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace spinlm::attn {

inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

// OpenBLAS on one thread while our pool runs the (sequence, head) tasks, each task's products on the
// task's own thread. A block's products are small (64 rows against at most L keys, hd deep): threading
// each call inside OpenBLAS cost more than the call (attention ran at ~5 GFLOP/s, bench/RESULTS.md);
// tasks over (sequence, head) keep both cores busy with no wake-up per call. Restored on exit.
class BlasOnOneThread {
 public:
  BlasOnOneThread() : prev_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~BlasOnOneThread() { openblas_set_num_threads(prev_); }
  BlasOnOneThread(const BlasOnOneThread&) = delete;
  BlasOnOneThread& operator=(const BlasOnOneThread&) = delete;

 private:
  int prev_;
};

constexpr int64_t kTile = 64;   // keys per tile (what a block skips or computes)

// What query i sees: keys [a0, a1) (before the hidden stretch; empty if a0 >= a1) and [b0, b1 = i + 1).
struct Visible {
  int64_t a0, a1, b0, b1;
  int64_t first() const { return a0 < a1 ? a0 : b0; }
};

inline Visible visible_of(const int32_t* span, int64_t i, int64_t window) {
  const int64_t lo = span[0], hlo = span[1], hhi = span[2], hidden = hhi - hlo;
  Visible v{lo, hlo, hhi, i + 1};
  if (window > 0) {
    v.a0 = std::max(lo, i - window + 1 - hidden);
    v.b0 = std::max(hhi, i - window + 1);
  }
  return v;
}

struct Call {
  int64_t b, l, nh, nkv, hd;
  float scale;
  int64_t window;
  float softcap;
  std::vector<Visible> vis;  // [b * l]
  std::vector<float> bias;   // [b * l]: 0 for a key to attend to, -inf for a masked one
  int64_t q_stride() const { return nh * hd; }
  int64_t kv_stride() const { return nkv * hd; }
  const float* qrow(const float* q, int64_t bi, int64_t h, int64_t i) const { return q + ((bi * l + i) * nh + h) * hd; }
  int64_t kv_off(int64_t bi, int64_t kvh, int64_t j) const { return ((bi * l + j) * nkv + kvh) * hd; }
  int64_t tiles() const { return (l + kTile - 1) / kTile; }

  Call(const int32_t* key_mask, const int32_t* spans, int64_t b_, int64_t l_, int64_t nh_, int64_t nkv_, int64_t hd_, float scale_,
       int64_t window_, float softcap_)
      : b(b_), l(l_), nh(nh_), nkv(nkv_), hd(hd_), scale(scale_), window(window_), softcap(softcap_), vis(b_ * l_), bias(b_ * l_) {
    for (int64_t r = 0; r < b * l; ++r) {
      vis[r] = visible_of(spans + 3 * r, r % l, window);
      bias[r] = key_mask[r] ? 0.0f : -INFINITY;
    }
  }

  // need[t] = 1 for the key tiles that some query of [r0, r1) of row bi sees (a difference array).
  void tiles_seen(int64_t bi, int64_t r0, int64_t r1, std::vector<int>& need) const {
    need.assign(tiles() + 1, 0);
    auto mark = [&](int64_t x0, int64_t x1) {
      if (x0 >= x1) return;
      ++need[x0 / kTile];
      --need[(x1 - 1) / kTile + 1];
    };
    for (int64_t i = r0; i < r1; ++i) {
      const Visible& v = vis[bi * l + i];
      mark(v.a0, v.a1);
      mark(v.b0, v.b1);
    }
    for (int64_t t = 1; t <= tiles(); ++t) need[t] += need[t - 1];
  }
};

// Runs [t0, t1) of consecutive seen tiles, each at most max_tiles long.
inline std::vector<std::pair<int64_t, int64_t>> runs_of(const std::vector<int>& need, int64_t tiles, int64_t max_tiles) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t t = 0; t < tiles; ++t) {
    if (!need[t]) continue;
    if (!runs.empty() && runs.back().second == t && t - runs.back().first < max_tiles) runs.back().second = t + 1;
    else runs.emplace_back(t, t + 1);
  }
  return runs;
}

}  // namespace spinlm::attn
