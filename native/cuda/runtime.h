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
// Grows by allocating the new buffer before freeing the old one: when even a retry after releasing
// the allocator's cache fails, it throws "<op>: out of device memory: ..." and the old buffer (and
// every other) stays valid.
void* scratch(size_t bytes, const char* op = "scratch");
// Throws std::runtime_error("CUDA error in <what>: ...") when e is not cudaSuccess, after clearing
// the runtime's last error (so the next op does not report this one under its own name).
void check(cudaError_t e, const char* what);
// Checks the last launch of op `what`.
void check_launch(const char* what);
// Called after every kernel launch (SPIN_LAUNCH, cuda_common.cuh) with the kernel's name: a launch
// the device refused throws naming the kernel; with SPINLM_CUDA_SYNC=1 (or set_sync_launches(true))
// it also synchronizes, so a fault in the kernel is reported naming it rather than at a later op.
void after_launch(const char* kernel);
void set_sync_launches(bool on);
bool sync_launches();

// The driver's and runtime's CUDA versions (1000 * major + 10 * minor; 0 when there is no driver) and
// what this build needs: its CUDA runtime, the driver CUDA version that runs it (the same major), and
// the minimum Linux driver release for that. Needs no device (for `spinlm info`).
struct Versions {
  int driver = 0, runtime = 0;
  int built_with = 0;         // CUDART_VERSION this build was compiled against
  int driver_needed = 0;      // the driver CUDA version the static runtime needs (major.0)
  std::string min_driver;     // "580.65.06" for CUDA 13, "525.60.13" for CUDA 12
  bool driver_ok = false;     // driver >= driver_needed
};
Versions versions();

// Pinned host staging buffers for device-to-host reads, reused across calls: acquire() hands out a
// buffer of at least `bytes` (from the pool, else cudaMallocHost; throws when out of pinned memory),
// release() returns it to the pool (buffers past the pool's cap are freed). Thread-safe.
void* pinned_acquire(size_t bytes);
void pinned_release(void* p);
size_t pinned_cached_bytes();

// How matmul runs (cublas.h; SPINLM_CUDA_GEMM, read by init()): the emulator always uses the tiled
// kernel; GPU builds open cuBLAS in init() unless the mode is `tiled`.
blas::GemmMode gemm_mode();
const blas::Library& blas_library();
blas::Handle blas_handle();
// "cuBLAS 12.9.1 (path), f32 compute" or "tiled CUDA kernel": what `spinlm info` shows.
std::string gemm_description();
// cuBLASLt for computeDtype 'bf16' GEMMs (gemm.cu), opened beside cuBLAS in init(); lib is null when
// none was found (then cublasGemmEx with bf16 inputs runs them) or in `tiled` mode and the emulator.
const blas::LtLibrary& blas_lt_library();
void* blas_lt_handle();
// cuBLASLt's fixed workspace (allocated on first use; 32 MiB, NVIDIA's recommendation for Hopper).
void* lt_workspace();
size_t lt_workspace_bytes();
// Which path computeDtype 'bf16' GEMMs take: what `spinlm info` shows as gemmBf16.
std::string gemm_bf16_description();

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
// Synchronizes and frees every cached block (cudaFree); returns the bytes released.
size_t release_cache();
// "out of device memory: a request of N bytes failed with F bytes free of T (H bytes held by spinlm
// tensors)" for a request that failed.
std::string oom_message(size_t bytes, const char* what = "a request");
size_t cached_bytes();
size_t allocated_bytes();
// High-water marks since the start: bytes held by live tensors, and those plus the cache (what
// cudaMalloc holds for tensors; scratch and cuBLAS's workspace are not counted).
size_t peak_allocated_bytes();
size_t peak_reserved_bytes();

}  // namespace spinlm::cuda
