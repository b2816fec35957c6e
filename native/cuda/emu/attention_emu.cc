// Emulator build of native/cuda/attention.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../attention.cu"
