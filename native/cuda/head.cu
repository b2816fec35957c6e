// The LM head fused with the target log-probs on CUDA (docs/ops.md "Fused head"). Not yet a kernel:
// the op refuses until it is written (the CPU's head.cc is the reference).
#include <stdexcept>

#include "kernels.h"

namespace spinlm::cuda {

void head_logprob(const float*, int64_t, int64_t, const void*, DType, int64_t, const int32_t*, float, bool, float*,
                  float*) {
  throw std::runtime_error("headLogprob is not yet implemented on CUDA");
}

void head_logprob_backward(const float*, int64_t, int64_t, const void*, DType, int64_t, const int32_t*, float,
                           const float*, const float*, float*, float*) {
  throw std::runtime_error("headLogprobBackward is not yet implemented on CUDA");
}

}  // namespace spinlm::cuda
