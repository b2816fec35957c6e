// Emulator build of native/cuda/loss.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../loss.cu"
