// What every CUDA kernel file of spinlm includes. Under nvcc: the CUDA runtime and plain pointers.
// Under the emulator (SPINLM_CUDA_EMU, host C++): emu/cuda_emu.h, which gives kernels checked
// pointers, per-block shared memory and fiber-based barriers. The few spellings that differ are
// macros here, so each kernel's source is the same text in both builds:
//   SPIN_GP(T)            a global-memory pointer parameter (T* __restrict__ on the GPU)
//   SPIN_GA(T)            the same where two parameters may alias (in-place kernels)
//   SPIN_SHARED(T, a, n)  a static shared array; SPIN_DYN_SHARED(T, p) the dynamic shared memory
//   SPIN_LAUNCH(k, grid, block, smem, stream, args...)
//   SPIN_CAST(T, p)       p as a pointer to T (one dynamic shared buffer holding arrays of several types)
#pragma once
#include <cstdint>

#ifdef SPINLM_CUDA_EMU
#include "emu/cuda_emu.h"
#define SPIN_GA(T) ::emu::gptr<T>
#define SPIN_ADDR(ptr) reinterpret_cast<uintptr_t>((ptr).p)
#define SPIN_CAST(T, ptr) ((ptr).template as<T>())
#else
#include <cuda_runtime.h>
#define SPIN_GP(T) T* __restrict__
#define SPIN_GA(T) T*
#define SPIN_ADDR(p) reinterpret_cast<uintptr_t>(p)
#define SPIN_CAST(T, ptr) reinterpret_cast<T*>(ptr)
#define SPIN_SHARED(T, name, n) __shared__ T name[n]
#define SPIN_DYN_SHARED(T, name)                           \
  extern __shared__ __align__(128) unsigned char spin_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(spin_dyn_smem_)
#define SPIN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  (kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__), ::spinlm::cuda::after_launch(#kernel))
#endif

#include "../include/bf16.h"
#include "../include/lse.h"
#include "../include/op_errors.h"
#include "../include/spin_math.h"

namespace spinlm::cuda {

// runtime.cc: called after every launch with the kernel's name (launch errors, SPINLM_CUDA_SYNC=1).
void after_launch(const char* kernel);

constexpr unsigned kFull = 0xffffffffu;

// 16-byte vector load/store of `V` (float4 or uint4) at an element pointer.
template <class V, class P>
__device__ __forceinline__ V ld_vec(P p) {
#ifdef SPINLM_CUDA_EMU
  return *p.template as<const V>().raw(1);
#else
  return *reinterpret_cast<const V*>(p);
#endif
}
template <class V, class P>
__device__ __forceinline__ void st_vec(P p, V v) {
#ifdef SPINLM_CUDA_EMU
  *p.template as<V>().raw(1) = v;
#else
  *reinterpret_cast<V*>(p) = v;
#endif
}

// Element conversions for the two float storage types (uint16_t holds bf16 bits).
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(uint16_t x) { return bf16_to_f32(x); }
template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ uint16_t from_f32<uint16_t>(float x) { return f32_to_bf16(x); }

// Adds one value to a running (max, sum of exp) pair with a single exp.
__device__ __forceinline__ void lse_push(LseAcc& a, float x) {
  if (x > a.max) {
    a.sum = a.sum * expf(a.max - x) + 1.0f;
    a.max = x;
  } else if (x != -INFINITY) {
    a.sum += expf(x - a.max);  // NaN stays NaN
  }
}

__device__ __forceinline__ LseAcc warp_lse(LseAcc a) {
  for (int o = 16; o > 0; o >>= 1) {
    LseAcc b{__shfl_xor_sync(kFull, a.max, o), __shfl_xor_sync(kFull, a.sum, o)};
    a = lse_merge(a, b);
  }
  return a;
}
// Block-wide (max, sum) merge in a fixed order: lanes by shuffles, then warps 0, 1, ... by every
// thread; all threads get the block's total. `red` is the block's shared LseAcc[kThreads / 32] (a
// pointer; a checked shared pointer under the emulator). Once per kernel: a second call would
// overwrite `red` while other warps may still read it.
template <int kThreads, class R>
__device__ __forceinline__ LseAcc block_lse(LseAcc a, R red) {
  a = warp_lse(a);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = a;
  __syncthreads();
  LseAcc r = lse_empty();
  for (int w = 0; w < kThreads / 32; ++w) r = lse_merge(r, red[w]);
  return r;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}
__device__ __forceinline__ double warp_sum(double x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

// Calls f(j, x) for every element j of a row of `v` values (float or bf16 storage), thread `tid` of
// `nt` taking a strided share: a scalar head up to 16-byte alignment, 16-byte vectors, a scalar tail.
template <class T, class P, class F>
__device__ __forceinline__ void row_foreach(P row, int64_t v, int tid, int nt, F&& f) {
  constexpr int kVec = 16 / sizeof(T);
  int64_t head = static_cast<int64_t>(((16 - SPIN_ADDR(row) % 16) % 16) / sizeof(T));
  if (head > v) head = v;
  for (int64_t j = tid; j < head; j += nt) f(j, to_f32(row[j]));
  const int64_t nvec = (v - head) / kVec;
  for (int64_t i = tid; i < nvec; i += nt) {
    const int64_t j0 = head + i * kVec;
    if constexpr (sizeof(T) == 4) {
      const float4 q = ld_vec<float4>(row + j0);
      f(j0, q.x);
      f(j0 + 1, q.y);
      f(j0 + 2, q.z);
      f(j0 + 3, q.w);
    } else {
      const uint4 q = ld_vec<uint4>(row + j0);
      const unsigned w[4] = {q.x, q.y, q.z, q.w};
      for (int k = 0; k < 4; ++k) {
        f(j0 + 2 * k, bf16_to_f32(static_cast<uint16_t>(w[k] & 0xffffu)));
        f(j0 + 2 * k + 1, bf16_to_f32(static_cast<uint16_t>(w[k] >> 16)));
      }
    }
  }
  for (int64_t j = head + nvec * kVec + tid; j < v; j += nt) f(j, to_f32(row[j]));
}

// Grid size for an elementwise kernel over n items with `threads` per block (grid-stride loops beyond).
inline unsigned elementwise_blocks(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

}  // namespace spinlm::cuda
