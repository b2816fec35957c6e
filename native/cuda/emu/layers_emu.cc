// Emulator build of native/cuda/layers.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../layers.cu"
