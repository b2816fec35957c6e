// Next-token choice on the device: the algorithm of native/cpu/sample.cc (and src/generate/sampler.ts),
// one block per row. Greedy rows: a block-wide argmax (ties to the lowest id). Sampled rows: one
// thread runs the exact host algorithm (a heap-based partial sort for top-k, float64 softmax and
// top-p, one xoshiro128** draw) over a per-row scratch slice, so a seed gives the same tokens as
// the CPU backend. Sampling is a per-token cost next to the model's forward pass. Only the first
// `limit` ids of a row (rows are v apart) are candidates: a padded vocabulary is never sampled.
#include <cmath>

#include "cuda_common.cuh"
#include "kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t rotl32(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

__device__ uint32_t next_u32(uint32_t* s) {
  const uint32_t r = rotl32(s[1] * 5u, 7) * 9u;
  const uint32_t t = s[1] << 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl32(s[3], 11);
  return r;
}

// a before b: larger logit first, ties by the lower id.
template <class P>
__device__ __forceinline__ bool before(P row, int32_t a, int32_t b) {
  return row[a] > row[b] || (row[a] == row[b] && a < b);
}

// Moves the root down a heap ordered so the `before`-first element is at the root.
template <class P, class I>
__device__ void sift_down(P row, I ids, int64_t start, int64_t end) {
  int64_t root = start;
  for (;;) {
    int64_t child = 2 * root + 1;
    if (child >= end) return;
    if (child + 1 < end && before(row, ids[child + 1], ids[child])) ++child;
    if (!before(row, ids[child], ids[root])) return;
    const int32_t t = ids[root];
    ids[root] = ids[child];
    ids[child] = t;
    root = child;
  }
}

__global__ void __launch_bounds__(kThreads) sample_kernel(SPIN_GP(const float) logits, int64_t v, int64_t limit,
                                                         SPIN_GP(int32_t) rng,
                                                         SPIN_GP(const int32_t) active, int greedy, double temperature,
                                                         int64_t top_k, double top_p, SPIN_GP(int32_t) out,
                                                         SPIN_GP(int32_t) ids_all, SPIN_GP(double) probs_all) {
  SPIN_SHARED(float, best_val, kThreads);
  SPIN_SHARED(int32_t, best_id, kThreads);
  const int64_t r = blockIdx.x;
  if (!active[r]) {
    if (threadIdx.x == 0) out[r] = 0;
    return;
  }
  const auto row = logits + row_offset(r, v);
  if (greedy) {
    float bv = -INFINITY;
    int32_t bi = -1;
    for (int64_t j = threadIdx.x; j < limit; j += kThreads) {
      const float x = row[j];
      if (bi < 0 || x > bv) {  // strictly greater: the lowest id of a tie within a thread
        bv = x;
        bi = static_cast<int32_t>(j);
      }
    }
    best_val[threadIdx.x] = bv;
    best_id[threadIdx.x] = bi;
    __syncthreads();
    for (unsigned s = kThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        const float ov = best_val[threadIdx.x + s];
        const int32_t oi = best_id[threadIdx.x + s];
        const float mv = best_val[threadIdx.x];
        const int32_t mi = best_id[threadIdx.x];
        // as the CPU's scan: the first index whose value no later value exceeds (NaN never wins)
        if (oi >= 0 && (mi < 0 || ov > mv || (ov == mv && oi < mi))) {
          best_val[threadIdx.x] = ov;
          best_id[threadIdx.x] = oi;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) out[r] = best_id[0] < 0 ? 0 : best_id[0];
    return;
  }
  if (threadIdx.x != 0) return;
  auto ids = ids_all + row_offset(r, v);
  auto probs = probs_all + row_offset(r, v);
  int64_t n = 0;
  for (int64_t i = 0; i < limit; ++i)
    if (row[i] > -INFINITY) ids[n++] = static_cast<int32_t>(i);
  if (n == 0) {
    int64_t best = 0;
    for (int64_t i = 1; i < limit; ++i)
      if (row[i] > row[best]) best = i;
    ids[n++] = static_cast<int32_t>(best);
  }
  const int64_t keep_k = top_k > 0 && top_k < n ? top_k : n;
  // heap-select the first keep_k in `before` order
  for (int64_t s = n / 2 - 1; s >= 0; --s) sift_down(row, ids, s, n);
  for (int64_t k = 0; k < keep_k; ++k) {
    // pop the root into position n - 1 - k, then reverse the popped tail below
    const int64_t end = n - k;
    const int32_t t = ids[0];
    ids[0] = ids[end - 1];
    ids[end - 1] = t;
    sift_down(row, ids, 0, end - 1);
  }
  // the popped elements sit at [n - keep_k, n) in reverse order: move them to the front in order
  for (int64_t k = 0; k < keep_k; ++k) probs[k] = ids[n - 1 - k];  // temporary (exact in a double)
  for (int64_t k = 0; k < keep_k; ++k) ids[k] = static_cast<int32_t>(probs[k]);
  n = keep_k;
  const double m = static_cast<double>(row[ids[0]]) / temperature;
  double z = 0;
  for (int64_t i = 0; i < n; ++i) {
    probs[i] = exp(static_cast<double>(row[ids[i]]) / temperature - m);
    z += probs[i];
  }
  for (int64_t i = 0; i < n; ++i) probs[i] /= z;
  if (top_p < 1) {
    double cum = 0;
    int64_t keep = 0;
    while (keep < n && (keep == 0 || cum < top_p)) cum += probs[keep++];
    n = keep;
    z = 0;
    for (int64_t i = 0; i < n; ++i) z += probs[i];
    for (int64_t i = 0; i < n; ++i) probs[i] /= z;
  }
  uint32_t st[4];
  for (int k = 0; k < 4; ++k) st[k] = static_cast<uint32_t>(rng[4 * r + k]);
  const double hi = static_cast<double>(next_u32(st) >> 5);
  const double lo = static_cast<double>(next_u32(st) >> 6);
  for (int k = 0; k < 4; ++k) rng[4 * r + k] = static_cast<int32_t>(st[k]);
  const double u = (hi * 67108864.0 + lo) / 9007199254740992.0;
  double cum = 0;
  for (int64_t i = 0; i < n; ++i) {
    cum += probs[i];
    if (u < cum) {
      out[r] = ids[i];
      return;
    }
  }
  out[r] = ids[n - 1];
}

}  // namespace

void sample_tokens(const float* logits, int64_t b, int64_t v, int64_t limit, int32_t* rng, const int32_t* active,
                   double temperature, int64_t top_k, double top_p, int32_t* out) {
  if (b == 0) return;
  const bool greedy = temperature == 0 || top_k == 1;
  int32_t* ids = nullptr;
  double* probs = nullptr;
  if (!greedy) {
    char* s = static_cast<char*>(scratch(static_cast<size_t>(b * v) * 12 + 16, "sampleTokens"));
    probs = reinterpret_cast<double*>(s);
    ids = reinterpret_cast<int32_t*>(s + static_cast<size_t>(b * v) * 8);
  }
  SPIN_LAUNCH(sample_kernel, dim3(static_cast<unsigned>(b)), dim3(kThreads), 0, stream(), logits, v, limit, rng, active,
              greedy ? 1 : 0, temperature, top_k, top_p, out, ids, probs);
  check_launch("sampleTokens");
}

}  // namespace spinlm::cuda
