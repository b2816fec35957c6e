// The CUDA emulator's portability header: with it, the kernels of native/cuda compile as host C++
// (SPINLM_CUDA_EMU defined) and run on the CPU through emu::launch. Each block of the grid runs
// alone; its threads are fibers (Boost.Context) that meet at __syncthreads(); a warp's 32 lanes meet
// at every shuffle or vote. Checks, each a thrown emu::Fault naming the kernel and the thread:
// global accesses outside the allocation a pointer came from (every buffer is registered with its
// extent), shared accesses outside their array or the launch's dynamic shared memory, barriers that
// not every thread of the block reaches at the same __syncthreads(), and shuffles that not every lane
// of a warp reaches together; shared-memory races (a byte written by one thread and read or written by
// another in the same barrier interval, lanes of one warp ordered by their shuffles and votes); reads
// of shared memory before any write (static and dynamic shared memory are NaN / 0xff bytes at the
// start of every block); launches past a kernel's __launch_bounds__ or 1024 threads, and more than
// 48 KB of dynamic shared memory without cudaFuncSetAttribute. Threads run in a seeded random order
// between barriers (SPINLM_CUDA_EMU_SEED). A small CUDA runtime API (cudaMalloc, cudaMemcpyAsync,
// events, a sticky last error, ...) is emulated over host memory so the backend's host code is the
// same for the GPU and the emulator.
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
// The declared bound travels with the function: (n + 31) / 32 single-byte NOPs at its entry, which
// the launch counts (emu::declared_launch_bound). Only the first argument (max threads) matters.
#define SPIN_EMU_LB_FIRST(n, ...) (n)
#define __launch_bounds__(...) __attribute__((patchable_function_entry((SPIN_EMU_LB_FIRST(__VA_ARGS__, 0) + 31) / 32, 0)))
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
  size_t bytes = 0;   // the extent accesses are checked against (the request, not the size class)
  bool live = true;   // false while the block sits freed in the caching allocator
};
// The allocation holding address p (base == nullptr when none does).
Extent find_allocation(const void* p);
// The caching allocator (memory.cc) tells the emulator what a block holds now: a tensor of `bytes`
// (checked extent; the rest of its size class is out of bounds; the block is poisoned again) or
// nothing (freed to the cache: any use is a use after free).
void note_allocation(const void* base, size_t bytes);
void note_free(const void* base);

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


// ---- shared memory: the race detector's per-byte shadow and the checked references ----
// Per byte: the last writer (thread, barrier epoch, its warp's shuffle/vote count at the write) and
// the last reader (or kManyReaders). Epochs count barriers and blocks (never reset), so a shadow from
// an earlier block or barrier interval is simply old.
struct ByteShadow {
  uint64_t w_epoch = 0, r_epoch = 0;
  uint32_t w_wsync = 0, r_wsync = 0;
  uint16_t w_tid = 0, r_tid = 0;
};
constexpr uint16_t kManyReaders = 0xffff;
// Checks a read or write of `n` bytes at `addr` (shadow `sh`) by the running thread; faults on a race.
void shared_access(ByteShadow* sh, size_t n, bool write, const char* kind, size_t offset);
// Counts blocks run (static shared arrays re-poison themselves on a new block); the race detector's
// switch (SPINLM_CUDA_EMU_RACECHECK=0 turns it off).
extern uint64_t g_block_gen;
extern const bool g_racecheck;
inline uint64_t block_generation() { return g_block_gen; }
inline bool racecheck_enabled() { return g_racecheck; }
// The running thread as the race detector sees it: barrier epoch, linear id, its warp's meetings.
extern uint64_t g_epoch;
extern uint16_t g_cur_tid;
extern uint32_t g_cur_wsync;
// A read whose every byte this thread (or several threads) already read in this interval and no
// other thread wrote needs no shadow update: checked inline, the rest goes to shared_access.
inline void shared_read(ByteShadow* sh, size_t n, const char* kind, size_t offset) {
  for (size_t i = 0; i < n; ++i) {
    const ByteShadow& b = sh[i];
    const bool quiet = (b.w_epoch != g_epoch || b.w_tid == g_cur_tid) && b.r_epoch == g_epoch &&
                       (b.r_tid == kManyReaders ||
                        ((b.r_tid == g_cur_tid || b.r_tid == (0x8000 | (g_cur_tid >> 5))) && b.r_wsync == g_cur_wsync));
    if (!quiet) return shared_access(sh, n, false, kind, offset);
  }
}

template <class T>
struct sptr;

// A reference to one shared-memory element: reading it (conversion) and writing it (assignment) are
// checked against the shadow.
template <class T>
struct sref {
  T* p;
  ByteShadow* sh;    // the shadow of this element's first byte
  const char* kind;  // "shared" or "dynamic shared"
  size_t offset;     // of this element in its region
  size_t span;       // the region's bytes
  operator std::remove_const_t<T>() const {
    if (racecheck_enabled()) shared_read(sh, sizeof(T), kind, offset);
    return *p;
  }
  const sref& operator=(const std::remove_const_t<T>& v) const {
    if (racecheck_enabled()) shared_access(sh, sizeof(T), true, kind, offset);
    *p = v;
    return *this;
  }
  const sref& operator=(const sref& o) const { return *this = static_cast<std::remove_const_t<T>>(o); }
  template <class U>
  const sref& operator+=(const U& v) const { return *this = static_cast<std::remove_const_t<T>>(static_cast<std::remove_const_t<T>>(*this) + v); }
  template <class U>
  const sref& operator-=(const U& v) const { return *this = static_cast<std::remove_const_t<T>>(static_cast<std::remove_const_t<T>>(*this) - v); }
  template <class U>
  const sref& operator*=(const U& v) const { return *this = static_cast<std::remove_const_t<T>>(static_cast<std::remove_const_t<T>>(*this) * v); }
  template <class U>
  const sref& operator/=(const U& v) const { return *this = static_cast<std::remove_const_t<T>>(static_cast<std::remove_const_t<T>>(*this) / v); }
  template <class U>
  const sref& operator|=(const U& v) const { return *this = static_cast<std::remove_const_t<T>>(static_cast<std::remove_const_t<T>>(*this) | v); }
  sptr<T> operator&() const;
};

// A pointer into shared memory (dynamic shared memory, or &array[i] of a static shared array):
// bounds-checked like gptr, element accesses race-checked.
template <class T>
struct sptr {
  using elem = T;
  T* p = nullptr;
  const char* lo = nullptr;
  const char* hi = nullptr;
  ByteShadow* shadow = nullptr;  // the shadow of byte `lo`
  const char* kind = "dynamic shared";

  sptr() = default;
  sptr(T* p_, const char* lo_, const char* hi_, ByteShadow* sh, const char* k) : p(p_), lo(lo_), hi(hi_), shadow(sh), kind(k) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  sptr(const sptr<U>& o) : p(o.p), lo(o.lo), hi(o.hi), shadow(o.shadow), kind(o.kind) {}

  sref<T> at(int64_t count = 1) const {
    const char* a = reinterpret_cast<const char*>(p);
    if (a < lo || a + sizeof(T) * count > hi)
      fault(std::string("out-of-bounds ") + kind + " access: " + std::to_string(sizeof(T) * count) + " bytes at offset " +
            std::to_string(a - lo) + " of " + std::to_string(hi - lo) + " bytes");
    return sref<T>{p, shadow + (a - lo), kind, static_cast<size_t>(a - lo), static_cast<size_t>(hi - lo)};
  }
  sref<T> operator[](int64_t i) const { return (*this + i).at(); }
  sref<T> operator*() const { return at(); }
  sptr operator+(int64_t i) const { return sptr(p + i, lo, hi, shadow, kind); }
  sptr operator-(int64_t i) const { return sptr(p - i, lo, hi, shadow, kind); }
  sptr& operator+=(int64_t i) { p += i; return *this; }
  explicit operator bool() const { return p != nullptr; }
  // Reinterprets as another element type (one dynamic shared buffer holding several arrays); the extent is kept.
  template <class U>
  sptr<U> as() const {
    return sptr<U>(reinterpret_cast<U*>(p), lo, hi, shadow, kind);
  }
};

template <class T>
sptr<T> sref<T>::operator&() const {
  const char* base = reinterpret_cast<const char*>(p) - offset;
  return sptr<T>(p, base, base + span, sh - offset, kind);
}

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
  ByteShadow* dyn_shadow = nullptr;
};
ThreadState& current_thread();
BlockState& current_block();

// Waits until every thread of the block reaches a barrier; `site` names the __syncthreads call.
void block_barrier(const char* file, int line);
// Exchanges 8 bytes with the lanes of the warp: every lane publishes `mine`, all meet, each reads `from`'s.
uint64_t warp_exchange(uint64_t mine, int from, const char* file, int line);
// Returns each lane's `mine` as a bit mask over the warp (votes).
uint32_t warp_ballot(bool mine, const char* file, int line);
// SPINLM_CUDA_EMU_SEED (default 1; 0: thread order, and the plain WMMA fragment layouts).
uint64_t order_seed();
// __syncthreads_or / _and / _count: a barrier that also reduces one int over the block.
int block_barrier_reduce(int mine, int op, const char* file, int line);

// A fixed-size shared array (one per kernel: static storage, the block's fibers share it; one launch
// runs at a time).
// Its bytes are 0xff (NaN) at the start of every block, as fresh shared memory holds garbage.
template <class T, size_t N>
struct SharedArray {
  T data[N];
  ByteShadow shadow[sizeof(T) * N];
  uint64_t gen = 0;  // the block generation whose poison `data` holds
  sref<T> operator[](int64_t i) {
    if (i < 0 || static_cast<size_t>(i) >= N)
      fault("out-of-bounds shared access: index " + std::to_string(i) + " of a shared array of " + std::to_string(N));
    if (gen != block_generation()) {
      std::memset(static_cast<void*>(data), 0xff, sizeof data);
      gen = block_generation();
    }
    const size_t off = static_cast<size_t>(i) * sizeof(T);
    return sref<T>{&data[i], &shadow[off], "shared", off, sizeof data};
  }
};
// Dynamic shared memory: a checked pointer over the launch's bytes.
template <class T>
sptr<T> dynamic_shared() {
  BlockState& b = current_block();
  return sptr<T>(reinterpret_cast<T*>(b.dyn_smem), b.dyn_smem, b.dyn_smem + b.dyn_bytes, b.dyn_shadow, "dynamic shared");
}

// ---- launching ----
using Body = void (*)(void* ctx);
// Runs the grid block by block; `body(ctx)` is each thread's call of the kernel `fn`. A launch that
// a GPU would refuse (block size, shared memory) sets the last error and runs nothing; a fault in the
// kernel sets the sticky error and throws Fault.
void run_grid(const char* name, const void* fn, dim3 grid, dim3 block, size_t smem, Body body, void* ctx);
// The kernel's __launch_bounds__ max threads (0: none declared, or not readable on this CPU).
int declared_launch_bound(const void* fn);
// The detail of the last error the emulator set (which kernel, what limit), for messages.
std::string last_error_detail();
// Test hooks: clear the last and the sticky error (as a device reset would); the emulated device's
// memory (0: SPINLM_CUDA_EMU_MEMORY or 8 GiB); cudaMallocHost calls so far.
void reset_errors();
void set_memory_limit(size_t bytes);
size_t host_alloc_calls();
// False while a sticky error stands (the launch is refused and the error stays).
bool launch_allowed();

template <class P, class A>
P to_param(A a) {
  if constexpr (std::is_pointer_v<A> || std::is_null_pointer_v<A>) {
    static_assert(!std::is_pointer_v<P>, "emulated kernels take SPIN_GP(T), not raw pointers");
    using Elem = typename P::elem;
    if (a == nullptr) return P();
    Extent e = find_allocation(a);
    if (!e.base) fault("a kernel argument points outside every device allocation");
    if (!e.live) fault("a kernel argument points into freed device memory (use after free)");
    return P((Elem*)(a), e.base, e.base + e.bytes);
  } else {
    return static_cast<P>(a);
  }
}

template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel argument count");
  if (!launch_allowed()) return;
  struct Ctx {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...> params;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(to_param<std::decay_t<P>>(args)...)};
  run_grid(name, reinterpret_cast<const void*>(kernel), grid, block, smem, [](void* c) {
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
#define __syncthreads_or(p) ::emu::block_barrier_reduce((p) ? 1 : 0, 0, __FILE__, __LINE__)
#define __syncthreads_and(p) ::emu::block_barrier_reduce((p) ? 1 : 0, 1, __FILE__, __LINE__)
#define __syncthreads_count(p) ::emu::block_barrier_reduce((p) ? 1 : 0, 2, __FILE__, __LINE__)

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

#include "wmma_emu.h"

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
#define CUDART_VERSION 13000
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorMemoryAllocation = 2;
constexpr cudaError_t cudaErrorInvalidConfiguration = 9;
constexpr cudaError_t cudaErrorInsufficientDriver = 35;
constexpr cudaError_t cudaErrorNoDevice = 100;
constexpr cudaError_t cudaErrorIllegalAddress = 700;
constexpr cudaError_t cudaErrorLaunchOutOfResources = 701;
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
cudaError_t cudaPeekAtLastError();
cudaError_t cudaFuncSetAttribute(const void* f, int attr, int value);
constexpr int cudaFuncAttributeMaxDynamicSharedMemorySize = 8;
const char* cudaGetErrorString(cudaError_t e);

#define SPIN_GP(T) ::emu::gptr<T>
#define SPIN_SHARED(T, name, n) static ::emu::SharedArray<T, (n)> name
#define SPIN_DYN_SHARED(T, name) ::emu::sptr<T> name = ::emu::dynamic_shared<T>()
namespace spinlm::cuda {
void after_launch(const char* kernel);  // runtime.cc
}
#define SPIN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  (::emu::launch(#kernel, kernel, (grid), (block), (smem), __VA_ARGS__), ::spinlm::cuda::after_launch(#kernel))
