// Emulator build of native/cuda/gemm.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../gemm.cu"
