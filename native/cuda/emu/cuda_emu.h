// The CUDA emulator's portability header: with it, the kernels of native/cuda compile as host C++
// (SPINLM_CUDA_EMU defined) and run on the CPU through emu::launch. Each block of the grid runs
// alone; its threads are fibers (Boost.Context) that meet at __syncthreads(); a warp's 32 lanes meet
// at every shuffle or vote. Checks, each a thrown emu::Fault naming the kernel and the thread:
// global accesses outside the allocation a pointer came from (every buffer is registered with its
// extent), shared accesses outside their array or the launch's dynamic shared memory, barriers that
// not every thread of the block reaches at the same __syncthreads(), and shuffles that not every lane
// of a warp reaches together. A small CUDA runtime API (cudaMalloc, cudaMemcpyAsync, events, ...) is
// emulated over host memory so the backend's host code is the same for the GPU and the emulator.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace emu {

// A fault the emulator found in a kernel (thrown out of the launch; the backend turns it into an Error).
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- the registry of device allocations (every cudaMalloc), for bounds checks on global memory ----
struct Extent {
  char* base = nullptr;
  size_t bytes = 0;
};
// The allocation holding address p (base == nullptr when none does).
Extent find_allocation(const void* p);

[[noreturn]] void fault(const std::string& what);

// A global-memory pointer as kernels see it under the emulator: it remembers the allocation it
// points into and checks every element access against it.
template <class T>
struct gptr {
  using elem = T;
  T* p = nullptr;
  const char* lo = nullptr;  // the allocation's first and one-past-last byte
  const char* hi = nullptr;
  bool shared = false;  // dynamic shared memory rather than a global allocation

  gptr() = default;
  gptr(std::nullptr_t) {}
  gptr(T* p_, const char* lo_, const char* hi_) : p(p_), lo(lo_), hi(hi_) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  gptr(const gptr<U>& o) : p(o.p), lo(o.lo), hi(o.hi), shared(o.shared) {}

  T* check(int64_t count = 1) const {
    const char* a = reinterpret_cast<const char*>(p);
    if (!p) fault("null pointer dereference");
    if (a < lo || a + sizeof(T) * count > hi)
      fault(std::string(shared ? "out-of-bounds dynamic shared access: " : "out-of-bounds global access: ") +
            std::to_string(sizeof(T) * count) + " bytes at offset " +
            std::to_string(a - lo) + " of an allocation of " + std::to_string(hi - lo) + " bytes");
    return p;
  }
  std::add_lvalue_reference_t<T> operator[](int64_t i) const { return *(*this + i).check(); }
  std::add_lvalue_reference_t<T> operator*() const { return *check(); }
  T* operator->() const { return check(); }
  gptr operator+(int64_t i) const { return with(p + i); }
  gptr operator-(int64_t i) const { return with(p - i); }
  gptr with(T* q) const {
    gptr g(q, lo, hi);
    g.shared = shared;
    return g;
  }
  gptr& operator+=(int64_t i) { p += i; return *this; }
  explicit operator bool() const { return p != nullptr; }
  bool operator==(std::nullptr_t) const { return p == nullptr; }
  bool operator!=(std::nullptr_t) const { return p != nullptr; }
  // Reinterprets as another element type (vector loads); the extent is kept.
  template <class U>
  gptr<U> as() const {
    gptr<U> g(reinterpret_cast<U*>(p), lo, hi);
    g.shared = shared;
    return g;
  }
  // A raw pointer after checking `count` elements from here (alignment too).
  T* raw(int64_t count) const {
    if (reinterpret_cast<uintptr_t>(p) % alignof(T)) fault("misaligned global access");
    return check(count);
  }
};

// ---- per-thread state of the running kernel ----
struct ThreadState {
  uint3 tid;
  unsigned linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
};
struct BlockState {
  uint3 bid;
  dim3 bdim, gdim;
  char* dyn_smem = nullptr;
  size_t dyn_bytes = 0;
};
ThreadState& current_thread();
BlockState& current_block();

// Waits until every thread of the block reaches a barrier; `site` names the __syncthreads call.
void block_barrier(const char* file, int line);
// Exchanges 8 bytes with the lanes of the warp: every lane publishes `mine`, all meet, each reads `from`'s.
uint64_t warp_exchange(uint64_t mine, int from, const char* file, int line);
// Returns each lane's `mine` as a bit mask over the warp (votes).
uint32_t warp_ballot(bool mine, const char* file, int line);

// A fixed-size shared array (one per block: static thread_local storage, the block's fibers share it).
template <class T, size_t N>
struct SharedArray {
  T data[N];
  T& operator[](int64_t i) {
    if (i < 0 || static_cast<size_t>(i) >= N)
      fault("out-of-bounds shared access: index " + std::to_string(i) + " of a shared array of " + std::to_string(N));
    return data[i];
  }
};
// Dynamic shared memory: a checked pointer over the launch's bytes.
template <class T>
gptr<T> dynamic_shared() {
  BlockState& b = current_block();
  gptr<T> g(reinterpret_cast<T*>(b.dyn_smem), b.dyn_smem, b.dyn_smem + b.dyn_bytes);
  g.shared = true;
  return g;
}

// ---- launching ----
using Body = void (*)(void* ctx);
// Runs the grid block by block; `body(ctx)` is each thread's call of the kernel.
void run_grid(const char* name, dim3 grid, dim3 block, size_t smem, Body body, void* ctx);

template <class P, class A>
P to_param(A a) {
  if constexpr (std::is_pointer_v<A> || std::is_null_pointer_v<A>) {
    static_assert(!std::is_pointer_v<P>, "emulated kernels take SPIN_GP(T), not raw pointers");
    using Elem = typename P::elem;
    if (a == nullptr) return P();
    Extent e = find_allocation(a);
    if (!e.base) fault("a kernel argument points outside every device allocation");
    return P((Elem*)(a), e.base, e.base + e.bytes);
  } else {
    return static_cast<P>(a);
  }
}

template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel argument count");
  struct Ctx {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...> params;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(to_param<std::decay_t<P>>(args)...)};
  run_grid(name, grid, block, smem, [](void* c) {
    auto* x = static_cast<Ctx*>(c);
    std::apply(x->k, x->params);
  }, &ctx);
}

}  // namespace emu

#define threadIdx (::emu::current_thread().tid)
#define blockIdx (::emu::current_block().bid)
#define blockDim (::emu::current_block().bdim)
#define gridDim (::emu::current_block().gdim)
#define warpSize 32
#define __syncthreads() ::emu::block_barrier(__FILE__, __LINE__)
#define __syncwarp(...) ((void)::emu::warp_ballot(true, __FILE__, __LINE__))

template <class T>
inline T spin_emu_shfl(T v, int from, const char* file, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = ::emu::warp_exchange(bits, from, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
inline int spin_emu_lane() { return static_cast<int>(::emu::current_thread().linear & 31u); }
#define __shfl_sync(mask, v, src, ...) spin_emu_shfl((v), (src) & 31, __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lm, ...) spin_emu_shfl((v), spin_emu_lane() ^ (lm), __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) \
  spin_emu_shfl((v), spin_emu_lane() + (d) < 32 ? spin_emu_lane() + (d) : spin_emu_lane(), __FILE__, __LINE__)
#define __ballot_sync(mask, p) ::emu::warp_ballot((p), __FILE__, __LINE__)
#define __any_sync(mask, p) (::emu::warp_ballot((p), __FILE__, __LINE__) != 0u)
#define __all_sync(mask, p) (::emu::warp_ballot((p), __FILE__, __LINE__) == ::emu::warp_ballot(true, __FILE__, __LINE__))

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline unsigned atomicOr(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p |= v;
  return old;
}
template <class T>
inline unsigned atomicOr(emu::gptr<T> p, unsigned v) {
  return atomicOr(p.check(), v);
}
template <class T>
inline T __ldg(emu::gptr<const T> p) { return *p; }

// ---- the CUDA runtime API subset the backend uses, over host memory ----
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorMemoryAllocation = 2;
constexpr cudaError_t cudaErrorNoDevice = 100;
constexpr cudaError_t cudaErrorInsufficientDriver = 35;
using cudaStream_t = struct EmuStream*;
using cudaEvent_t = struct EmuEvent*;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor, multiProcessorCount;
  size_t sharedMemPerBlock, sharedMemPerBlockOptin;
};
constexpr unsigned cudaStreamNonBlocking = 1, cudaEventDisableTiming = 2;
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaFuncSetAttribute(const void* f, int attr, int value);
constexpr int cudaFuncAttributeMaxDynamicSharedMemorySize = 8;
const char* cudaGetErrorString(cudaError_t e);

#define SPIN_GP(T) ::emu::gptr<T>
#define SPIN_SHARED(T, name, n) static thread_local ::emu::SharedArray<T, (n)> name
#define SPIN_DYN_SHARED(T, name) ::emu::gptr<T> name = ::emu::dynamic_shared<T>()
#define SPIN_LAUNCH(kernel, grid, block, smem, stream, ...) ::emu::launch(#kernel, kernel, (grid), (block), (smem), __VA_ARGS__)
