// Emulator build of native/cuda/gemm_rows_tc.cu: the same source compiled as host C++ (SPINLM_CUDA_EMU).
#include "../gemm_rows_tc.cu"
