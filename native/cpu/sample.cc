// Next-token choice on the device (CPU): the exact algorithm of src/generate/sampler.ts, so a seed
// gives the same text as the host sampler did. Per row: greedy = argmax (ties to the lowest id);
// otherwise the finite-above--inf ids sorted by logit (ties by id), top-k, softmax of logit / T in
// float64, top-p (keep ids while the mass before them is < top_p), renormalize, and one uniform draw
// u in [0, 1) from the row's xoshiro128** stream (two 32-bit outputs: 27 + 26 bits, as Rng.next()).
// Only the first `limit` ids of a row are candidates (rows are V apart): a model's padded vocabulary
// past its tokenizer is never sampled.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace spinlm {
namespace {

uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

// xoshiro128** over a row's state words s[0..3], as src/util/rng.ts nextU32().
uint32_t next_u32(uint32_t* s) {
  const uint32_t r = rotl(s[1] * 5u, 7) * 9u;
  const uint32_t t = s[1] << 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 11);
  return r;
}

double next_double(uint32_t* s) {
  const double hi = static_cast<double>(next_u32(s) >> 5);
  const double lo = static_cast<double>(next_u32(s) >> 6);
  return (hi * 67108864.0 + lo) / 9007199254740992.0;
}

int32_t argmax_row(const float* row, int64_t v) {
  int64_t best = 0;
  for (int64_t i = 1; i < v; ++i)
    if (row[i] > row[best]) best = i;
  return static_cast<int32_t>(best);
}

int32_t sample_row(const float* row, int64_t v, uint32_t* state, double temperature, int64_t top_k,
                   double top_p, std::vector<int32_t>& ids, std::vector<double>& probs) {
  ids.clear();
  for (int64_t i = 0; i < v; ++i)
    if (row[i] > -INFINITY) ids.push_back(static_cast<int32_t>(i));
  if (ids.empty()) ids.push_back(argmax_row(row, v));
  // a strict total order (ties by id), so a partial sort keeps the same first k as a full sort
  auto before = [row](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); };
  const size_t keep_k = top_k > 0 && static_cast<size_t>(top_k) < ids.size() ? static_cast<size_t>(top_k) : ids.size();
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(keep_k), ids.end(), before);
  ids.resize(keep_k);
  const double m = static_cast<double>(row[ids[0]]) / temperature;
  probs.resize(ids.size());
  double z = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    probs[i] = std::exp(static_cast<double>(row[ids[i]]) / temperature - m);
    z += probs[i];
  }
  for (double& p : probs) p /= z;
  if (top_p < 1) {
    double cum = 0;
    size_t keep = 0;
    while (keep < probs.size() && (keep == 0 || cum < top_p)) cum += probs[keep++];
    ids.resize(keep);
    probs.resize(keep);
    z = 0;
    for (double p : probs) z += p;
    for (double& p : probs) p /= z;
  }
  const double u = next_double(state);
  double cum = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    cum += probs[i];
    if (u < cum) return ids[i];
  }
  return ids.back();
}

}  // namespace

void sample_tokens(const float* logits, int64_t b, int64_t v, int64_t limit, int32_t* rng, const int32_t* active,
                   double temperature, int64_t top_k, double top_p, int32_t* out) {
  const bool greedy = temperature == 0 || top_k == 1;
  parallel_for(b, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int32_t> ids;
    std::vector<double> probs;
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = logits + r * v;
      if (!active[r]) out[r] = 0;
      else if (greedy) out[r] = argmax_row(row, limit);
      else
        out[r] = sample_row(row, limit, reinterpret_cast<uint32_t*>(rng + 4 * r), temperature, top_k, top_p, ids, probs);
    }
  });
}

}  // namespace spinlm
