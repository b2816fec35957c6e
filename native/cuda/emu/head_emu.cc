// Emulator build of native/cuda/head.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../head.cu"
