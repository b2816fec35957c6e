// The CUDA backend's process-wide state: the device, its stream, the device error word and scratch,
// and the caching allocator (memory.cc). Host code; the same source runs over the real CUDA runtime
// and over the emulator's (emu/cuda_emu.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "cublas.h"

#ifdef SPINLM_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

namespace spinlm::cuda {

// Why the backend cannot run here ("" when it can): no driver, no device, an init failure.
std::string unavailable_reason();
// Starts the backend (device 0, a non-blocking stream, the error word); throws std::runtime_error.
void init();
cudaStream_t stream();
// The device's multiprocessor count (launch configurations size grids by it).
int sm_count();
// The device error word (a device uint32; kernels atomicOr op_errors.h bits into it).
uint32_t* error_word();
// Reads and clears the word (synchronizes the stream).
uint32_t take_errors();
// Device scratch of at least `bytes` bytes, valid until the next call (single stream: ordered).
void* scratch(size_t bytes);
// Throws std::runtime_error("CUDA error in <what>: ...") when e is not cudaSuccess.
void check(cudaError_t e, const char* what);
// Checks the last launch.
void check_launch(const char* what);

// How matmul runs (cublas.h; SPINLM_CUDA_GEMM, read by init()): the emulator always uses the tiled
// kernel; GPU builds open cuBLAS in init() unless the mode is `tiled`.
blas::GemmMode gemm_mode();
const blas::Library& blas_library();
blas::Handle blas_handle();
// "cuBLAS 12.9.1 (path), f32 compute" or "tiled CUDA kernel": what `spinlm info` shows.
std::string gemm_description();

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0, sms = 0;
  size_t total = 0;
  int driver = 0, runtime = 0;
  size_t smem_optin = 0;
};
DeviceInfo device_info();

// ---- caching allocator (memory.cc): sizes round up to size classes; free() returns a block to its
// class's free list at once (one stream orders every use); a failed cudaMalloc releases the cache
// and retries before reporting out of memory. ----
struct AllocResult {
  void* ptr;
  std::string error;  // set when out of memory: the request, free and total bytes
};
AllocResult device_alloc(size_t bytes);
void device_free(void* p, size_t bytes);
size_t cached_bytes();
size_t allocated_bytes();
// High-water marks since the start: bytes held by live tensors, and those plus the cache (what
// cudaMalloc holds for tensors; scratch and cuBLAS's workspace are not counted).
size_t peak_allocated_bytes();
size_t peak_reserved_bytes();

}  // namespace spinlm::cuda
