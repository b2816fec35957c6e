// Memory-level kernels: fill with a bit pattern, f32 <-> bf16 casts (round to nearest even, the
// rounding of native/include/bf16.h), same-dtype copies.
#include "cuda_common.cuh"
#include "kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void fill_kernel(SPIN_GP(T) p, int64_t count, T pattern) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * kThreads)
    p[i] = pattern;
}

__global__ void f32_to_bf16_kernel(SPIN_GP(const float) src, SPIN_GP(uint16_t) dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads)
    dst[i] = f32_to_bf16(src[i]);
}
__global__ void bf16_to_f32_kernel(SPIN_GP(const uint16_t) src, SPIN_GP(float) dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * kThreads)
    dst[i] = bf16_to_f32(src[i]);
}

}  // namespace

void fill_pattern(void* p, int64_t count, int elem_bytes, uint32_t pattern) {
  if (count == 0) return;
  if (elem_bytes == 2)
    SPIN_LAUNCH(fill_kernel<uint16_t>, dim3(elementwise_blocks(count, kThreads)), dim3(kThreads), 0, stream(),
                static_cast<uint16_t*>(p), count, static_cast<uint16_t>(pattern));
  else
    SPIN_LAUNCH(fill_kernel<uint32_t>, dim3(elementwise_blocks(count, kThreads)), dim3(kThreads), 0, stream(),
                static_cast<uint32_t*>(p), count, pattern);
  check_launch("fill");
}

void cast_values(const void* src, DType sd, void* dst, DType dd, int64_t n) {
  if (n == 0) return;
  if (sd == dd) {
    if (src != dst) check(cudaMemcpyAsync(dst, src, static_cast<size_t>(n * dtype_size(sd)), cudaMemcpyDeviceToDevice, stream()), "cast");
    return;
  }
  if (sd == DType::kF32)
    SPIN_LAUNCH(f32_to_bf16_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, stream(), static_cast<const float*>(src),
                static_cast<uint16_t*>(dst), n);
  else
    SPIN_LAUNCH(bf16_to_f32_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, stream(), static_cast<const uint16_t*>(src),
                static_cast<float*>(dst), n);
  check_launch("cast");
}

}  // namespace spinlm::cuda
