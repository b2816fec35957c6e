// Emulator build of native/cuda/sample.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../sample.cu"
