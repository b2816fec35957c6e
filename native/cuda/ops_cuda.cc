// The op bindings of the CUDA addon: native/<family>_ops.cc, the CPU addon's bindings, compiled a
// second time with SPINLM_BIND_CUDA, so in namespace spinlm::cuda::bind over device buffers and the
// spinlm::cuda kernels (cuda_device.h). One source for both addons: native/op_binding.h.
#define SPINLM_BIND_CUDA 1
#include "../loss_ops.cc"
#include "../model_ops.cc"
#include "../optim_ops.cc"
#include "../sample_ops.cc"
#include "../tensor_ops.cc"
