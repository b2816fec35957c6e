// Scalar math of the SPIN loss (docs/algorithm.md), shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>
#include "common.h"

namespace spinlm {

enum class SpinLossType : int32_t { kSigmoid = 0, kHinge = 1 };

// One pair's outputs. Loss is averaged over the B pairs of the batch, so the gradients carry 1/B.
struct SpinPair {
  double loss;         // softplus(-u) or max(0, 1 - u)
  double reward_real;  // beta * (S(theta, y) - S(ref, y))
  double reward_gen;   // beta * (S(theta, y') - S(ref, y'))
  double margin;       // reward_real - reward_gen = u
  double accuracy;     // 1 if reward_real > reward_gen (ties count as misses, as TRL logs it)
  double dloss_du;     // l'(u) / B
  double dS_real;      // d(mean loss) / dS(theta, y)  =  beta * l'(u) / B
  double dS_gen;       // d(mean loss) / dS(theta, y') = -beta * l'(u) / B
};

// softplus(x) = log(1 + e^x) without overflow or cancellation.
SPINLM_HD double softplus(double x) { return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x))); }

// sigmoid(x) = 1 / (1 + e^-x), stable for large |x|.
SPINLM_HD double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  const double e = exp(x);
  return e / (1.0 + e);
}

// policy_* / ref_*: summed response log-probs S under the model being trained and the frozen reference.
SPINLM_HD SpinPair spin_pair(double policy_real, double policy_gen, double ref_real, double ref_gen,
                             double beta, SpinLossType type, double inv_batch) {
  SpinPair p;
  p.reward_real = beta * (policy_real - ref_real);
  p.reward_gen = beta * (policy_gen - ref_gen);
  p.margin = p.reward_real - p.reward_gen;
  const double u = p.margin;
  double dl;  // l'(u)
  if (type == SpinLossType::kHinge) {
    p.loss = u < 1.0 ? 1.0 - u : 0.0;
    dl = u < 1.0 ? -1.0 : 0.0;
  } else {
    p.loss = softplus(-u);
    dl = -sigmoid(-u);
  }
  p.accuracy = p.reward_real > p.reward_gen ? 1.0 : 0.0;
  p.dloss_du = dl * inv_batch;
  p.dS_real = beta * dl * inv_batch;
  p.dS_gen = -beta * dl * inv_batch;
  return p;
}

}  // namespace spinlm
