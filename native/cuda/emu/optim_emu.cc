// Emulator build of native/cuda/optim.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../optim.cu"
