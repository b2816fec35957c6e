// Emulator build of native/cuda/flash_fwd.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../flash_fwd.cu"
