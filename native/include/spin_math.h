// Scalar math of the SPIN loss (docs/algorithm.md), shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>
#include <cstring>
#include "common.h"

namespace spinlm {

// sigmoid and hinge are SPIN's losses of the margin u; ipo (Azar et al. 2023) and sppo_hard (Wu et al.
// 2024, the real answer always wins) are squared losses of the log-ratios (docs/algorithm.md).
enum class SpinLossType : int32_t { kSigmoid = 0, kHinge = 1, kIpo = 2, kSppoHard = 3 };

// The names the API and the CLI use, in enum order.
inline constexpr const char* kSpinLossNames[] = {"sigmoid", "hinge", "ipo", "sppo_hard"};
inline constexpr const char* kSpinLossNamesList = "'sigmoid', 'hinge', 'ipo' or 'sppo_hard'";

// Parses a loss type name; false for an unknown one.
inline bool parse_spin_loss_type(const char* name, SpinLossType* out) {
  for (int32_t k = 0; k < 4; ++k)
    if (std::strcmp(name, kSpinLossNames[k]) == 0) {
      *out = static_cast<SpinLossType>(k);
      return true;
    }
  return false;
}

// One pair's outputs. Loss is averaged over the B pairs of the batch, so the gradients carry 1/B.
// With r = S(theta, .) - S(ref, .) the log-ratio of an answer (r_w real, r_l generated) and u = beta (r_w - r_l):
struct SpinPair {
  double loss;         // softplus(-u), max(0, 1 - u), (r_w - r_l - 1/(2 beta))^2 or (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2
  double reward_real;  // beta * (S(theta, y) - S(ref, y))
  double reward_gen;   // beta * (S(theta, y') - S(ref, y'))
  double margin;       // reward_real - reward_gen = u
  double accuracy;     // 1 if reward_real > reward_gen (ties count as misses, as TRL logs it)
  double dS_real;      // d(mean loss) / dS(theta, y)   (sigmoid, hinge:  beta * l'(u) / B)
  double dS_gen;       // d(mean loss) / dS(theta, y')  (sigmoid, hinge: -beta * l'(u) / B)
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
  const double r_real = policy_real - ref_real, r_gen = policy_gen - ref_gen;  // log-ratios r_w, r_l
  p.reward_real = beta * r_real;
  p.reward_gen = beta * r_gen;
  p.margin = p.reward_real - p.reward_gen;
  const double u = p.margin;
  double g_real, g_gen;  // d loss / dS(theta, y), d loss / dS(theta, y') of this pair
  if (type == SpinLossType::kIpo) {
    const double e = (r_real - r_gen) - 0.5 / beta;
    p.loss = e * e;
    g_real = 2.0 * e;
    g_gen = -2.0 * e;
  } else if (type == SpinLossType::kSppoHard) {
    const double e_real = r_real - 0.5 / beta, e_gen = r_gen + 0.5 / beta;
    p.loss = e_real * e_real + e_gen * e_gen;
    g_real = 2.0 * e_real;
    g_gen = 2.0 * e_gen;
  } else {
    double dl;  // l'(u)
    if (type == SpinLossType::kHinge) {
      p.loss = u < 1.0 ? 1.0 - u : 0.0;
      dl = u < 1.0 ? -1.0 : 0.0;
    } else {
      p.loss = softplus(-u);
      dl = -sigmoid(-u);
    }
    g_real = beta * dl;
    g_gen = -beta * dl;
  }
  p.accuracy = p.reward_real > p.reward_gen ? 1.0 : 0.0;
  p.dS_real = g_real * inv_batch;
  p.dS_gen = g_gen * inv_batch;
  return p;
}

}  // namespace spinlm
