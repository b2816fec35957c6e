// Causal grouped-query attention on the CPU. Per (sequence, head): S = scale Q K^T and O = P V, and in
// the backward dV, dP, dQ, dK, as strided cblas_sgemm calls on the calling thread (OpenBLAS threads
// them); the row softmax between them runs on our pool. Heads sharing a kv head accumulate their dK/dV
// in head order, so results are deterministic.
#include <cblas.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "model_kernels.h"
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

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

// Key j is visible to query i: causal and not masked out.
inline bool visible(const int32_t* mask_row, int64_t i, int64_t j) { return j <= i && mask_row[j] != 0; }

}  // namespace

void attention(const float* q, const float* k, const float* v, const int32_t* key_mask, int64_t b,
               int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, float* out, float* lse) {
  const Geometry g{l, nh, nkv, hd};
  std::vector<float> s(static_cast<size_t>(l * l));
  for (int64_t bi = 0; bi < b; ++bi) {
    const int32_t* mask = key_mask + bi * l;
    for (int64_t h = 0; h < nh; ++h) {
      gemm(false, true, l, l, hd, scale, q + g.q_offset(bi, h), g.q_stride(), k + g.kv_offset(bi, h),
           g.kv_stride(), 0.0f, s.data(), l);
      float* lse_bh = lse + (bi * nh + h) * l;
      parallel_for(l, 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          float* row = s.data() + i * l;
          float m = -INFINITY;
          for (int64_t j = 0; j <= i; ++j)
            if (mask[j] && row[j] > m) m = row[j];
          if (m == -INFINITY) {  // no visible key: zero output, lse -inf
            std::memset(row, 0, sizeof(float) * l);
            lse_bh[i] = -INFINITY;
            continue;
          }
          double sum = 0;
          for (int64_t j = 0; j < l; ++j) {
            const float p = visible(mask, i, j) ? std::exp(row[j] - m) : 0.0f;
            row[j] = p;
            sum += p;
          }
          const float inv = static_cast<float>(1.0 / sum);
          for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
          lse_bh[i] = m + static_cast<float>(std::log(sum));
        }
      });
      gemm(false, false, l, hd, l, 1.0f, s.data(), l, v + g.kv_offset(bi, h), g.kv_stride(), 0.0f,
           out + g.q_offset(bi, h), g.q_stride());
    }
  }
}

void attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask,
                        const float* out, const float* lse, const float* dout, int64_t b, int64_t l,
                        int64_t nh, int64_t nkv, int64_t hd, float scale, float* dq, float* dk,
                        float* dv) {
  const Geometry g{l, nh, nkv, hd};
  std::memset(dk, 0, sizeof(float) * b * l * nkv * hd);
  std::memset(dv, 0, sizeof(float) * b * l * nkv * hd);
  std::vector<float> p(static_cast<size_t>(l * l)), dp(static_cast<size_t>(l * l));
  std::vector<float> delta(static_cast<size_t>(l));
  for (int64_t bi = 0; bi < b; ++bi) {
    const int32_t* mask = key_mask + bi * l;
    for (int64_t h = 0; h < nh; ++h) {
      const float* qbh = q + g.q_offset(bi, h);
      const float* kbh = k + g.kv_offset(bi, h);
      const float* vbh = v + g.kv_offset(bi, h);
      const float* obh = out + g.q_offset(bi, h);
      const float* dobh = dout + g.q_offset(bi, h);
      const float* lse_bh = lse + (bi * nh + h) * l;
      // P = softmax(scale Q K^T) recomputed from the saved lse
      gemm(false, true, l, l, hd, scale, qbh, g.q_stride(), kbh, g.kv_stride(), 0.0f, p.data(), l);
      parallel_for(l, 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          float* row = p.data() + i * l;
          const float li = lse_bh[i];
          for (int64_t j = 0; j < l; ++j)
            row[j] = (li != -INFINITY && visible(mask, i, j)) ? std::exp(row[j] - li) : 0.0f;
          double d = 0;  // delta_i = dO_i . O_i
          for (int64_t c = 0; c < hd; ++c) d += static_cast<double>(dobh[i * g.q_stride() + c]) * obh[i * g.q_stride() + c];
          delta[i] = static_cast<float>(d);
        }
      });
      // dV += P^T dO; dP = dO V^T
      gemm(true, false, l, hd, l, 1.0f, p.data(), l, dobh, g.q_stride(), 1.0f, dv + g.kv_offset(bi, h), g.kv_stride());
      gemm(false, true, l, l, hd, 1.0f, dobh, g.q_stride(), vbh, g.kv_stride(), 0.0f, dp.data(), l);
      // dS = P * (dP - delta)
      parallel_for(l, 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = 0; j < l; ++j) dp[i * l + j] = p[i * l + j] * (dp[i * l + j] - delta[i]);
      });
      // dQ = scale dS K; dK += scale dS^T Q
      gemm(false, false, l, hd, l, scale, dp.data(), l, kbh, g.kv_stride(), 0.0f, dq + g.q_offset(bi, h), g.q_stride());
      gemm(true, false, l, hd, l, scale, dp.data(), l, qbh, g.q_stride(), 1.0f, dk + g.kv_offset(bi, h), g.kv_stride());
    }
  }
}

void attention_decode(const float* q, const float* k_cache, const float* v_cache,
                      const int32_t* lengths, const int32_t* key_mask, int64_t b, int64_t lmax,
                      int64_t nh, int64_t nkv, int64_t hd, float scale, float* out) {
  const int64_t group = nh / nkv;
  parallel_for(b * nh, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> sc(static_cast<size_t>(lmax));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t bi = w / nh, h = w % nh, kvh = h / group;
      const float* qv = q + w * hd;
      float* o = out + w * hd;
      const int64_t len = lengths[bi];
      float m = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        if (key_mask && !key_mask[bi * lmax + j]) {
          sc[j] = -INFINITY;
          continue;
        }
        const float* kv = k_cache + ((bi * lmax + j) * nkv + kvh) * hd;
        float d = 0;
        for (int64_t c = 0; c < hd; ++c) d += qv[c] * kv[c];
        sc[j] = d * scale;
        if (sc[j] > m) m = sc[j];
      }
      for (int64_t c = 0; c < hd; ++c) o[c] = 0.0f;
      if (m == -INFINITY) continue;
      double sum = 0;
      for (int64_t j = 0; j < len; ++j) {
        sc[j] = sc[j] == -INFINITY ? 0.0f : std::exp(sc[j] - m);
        sum += sc[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < len; ++j) {
        if (sc[j] == 0.0f) continue;
        const float pj = sc[j] * inv;
        const float* vv = v_cache + ((bi * lmax + j) * nkv + kvh) * hd;
        for (int64_t c = 0; c < hd; ++c) o[c] += pj * vv[c];
      }
    }
  });
}

}  // namespace spinlm
