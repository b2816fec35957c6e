// Online log-sum-exp: a running (max, sum of exp(x - max)) pair that can absorb values or merge
// with another partial result in any grouping. Used where a row is split across threads or blocks.
#pragma once
#include <cmath>
#include "common.h"

namespace spinlm {

struct LseAcc {
  float max;  // running maximum (-inf when empty)
  float sum;  // sum of exp(x - max) over the values absorbed
};

SPINLM_HD LseAcc lse_empty() { return LseAcc{-INFINITY, 0.0f}; }

SPINLM_HD LseAcc lse_merge(LseAcc a, LseAcc b) {
  const float m = a.max > b.max ? a.max : b.max;
  if (m == -INFINITY) return lse_empty();  // both empty or all -inf: avoid (-inf) - (-inf)
  return LseAcc{m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

// log(sum exp(x)); -inf for an empty or all -inf row; NaN propagates.
SPINLM_HD float lse_value(LseAcc a) { return a.max + logf(a.sum); }

}  // namespace spinlm
