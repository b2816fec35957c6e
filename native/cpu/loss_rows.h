// The row passes of the loss kernels (loss.cc) that the fused LM head (head.cc) runs on its panels of
// logits: one implementation of the online log-sum-exp and of the softmax gradient.
#pragma once
#include <cstdint>

namespace spinlm {

// log(sum_j exp(z[j])) over z[0, v) (f32), the loss kernels' one-read online pass (NaN for a row of -inf).
float row_logsumexp(const float* z, int64_t v);
// z[j] <- -g exp(z[j] - l) in place over [0, v): the backward of a row's logits with the target elsewhere.
void row_softmax_grad(float* z, int64_t v, float l, float g);

}  // namespace spinlm
