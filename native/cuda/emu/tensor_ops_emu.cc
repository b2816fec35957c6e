// Emulator build of native/cuda/tensor_ops.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../tensor_ops.cu"
