// The CUDA emulator's runtime: the block scheduler (threads as Boost.Context fibers), barriers and
// warp exchanges with their divergence checks, the registry of device allocations, and the emulated
// CUDA runtime API. See cuda_emu.h.
#include "cuda_emu.h"

#include <boost/context/fiber.hpp>
#include <boost/context/pooled_fixedsize_stack.hpp>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace ctx = boost::context;

namespace emu {
namespace {

std::mutex g_alloc_mu;
std::map<const char*, size_t>& allocations() {
  static std::map<const char*, size_t> m;
  return m;
}

enum class Wait { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
  ThreadState state;
  ctx::fiber f;     // the fiber while suspended
  ctx::fiber sink;  // the scheduler, while this fiber runs
  Wait wait = Wait::kRunnable;
  const char* file = nullptr;
  int line = 0;
  uint64_t value = 0;  // published for a warp exchange
};

struct Launch {
  const char* name;
  std::vector<Fiber> fibers;
  Fiber* running = nullptr;
  std::string error;  // first fault
};

thread_local Launch* t_launch = nullptr;
thread_local BlockState t_block;
thread_local ThreadState t_host_thread{};

constexpr size_t kStackBytes = 256 * 1024;

ctx::pooled_fixedsize_stack& stack_pool() {
  static thread_local ctx::pooled_fixedsize_stack pool(kStackBytes);
  return pool;
}

void suspend(Fiber& me) { me.sink = std::move(me.sink).resume(); }

std::string where(const Launch& l, const Fiber& f) {
  const BlockState& b = t_block;
  return std::string(l.name) + " block (" + std::to_string(b.bid.x) + "," + std::to_string(b.bid.y) + "," +
         std::to_string(b.bid.z) + ") thread (" + std::to_string(f.state.tid.x) + "," + std::to_string(f.state.tid.y) + "," +
         std::to_string(f.state.tid.z) + ")";
}

}  // namespace

void fault(const std::string& what) {
  if (t_launch && t_launch->running) throw Fault(where(*t_launch, *t_launch->running) + ": " + what);
  throw Fault(what);
}

Extent find_allocation(const void* p) {
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  auto& m = allocations();
  const char* c = static_cast<const char*>(p);
  auto it = m.upper_bound(c);
  if (it == m.begin()) return {};
  --it;
  if (c >= it->first && c < it->first + it->second) return {const_cast<char*>(it->first), it->second};
  // One past the end of an allocation (an empty view at its end) still names it.
  if (c == it->first + it->second) return {const_cast<char*>(it->first), it->second};
  return {};
}

ThreadState& current_thread() {
  if (t_launch && t_launch->running) return t_launch->running->state;
  return t_host_thread;
}
BlockState& current_block() { return t_block; }

void block_barrier(const char* file, int line) {
  Launch* l = t_launch;
  if (!l || !l->running) return;
  Fiber& me = *l->running;
  me.wait = Wait::kBlockBarrier;
  me.file = file;
  me.line = line;
  suspend(me);
}

uint64_t warp_exchange(uint64_t mine, int from, const char* file, int line) {
  Launch* l = t_launch;
  if (!l || !l->running) return mine;
  Fiber& me = *l->running;
  const size_t warp0 = me.state.linear & ~31u;
  me.value = mine;
  me.wait = Wait::kWarpBarrier;
  me.file = file;
  me.line = line;
  suspend(me);  // every lane has published
  const size_t src = warp0 + static_cast<size_t>(from);
  if (from < 0 || from > 31 || src >= l->fibers.size()) fault("shuffle from lane " + std::to_string(from) + ", which does not exist");
  const uint64_t got = l->fibers[src].value;
  me.wait = Wait::kWarpBarrier;
  suspend(me);  // every lane has read: the slots may be reused
  return got;
}

uint32_t warp_ballot(bool mine, const char* file, int line) {
  Launch* l = t_launch;
  if (!l || !l->running) return mine ? 1u : 0u;
  Fiber& me = *l->running;
  const size_t warp0 = me.state.linear & ~31u;
  me.value = mine ? 1 : 0;
  me.wait = Wait::kWarpBarrier;
  me.file = file;
  me.line = line;
  suspend(me);
  uint32_t bits = 0;
  for (size_t i = warp0; i < warp0 + 32 && i < l->fibers.size(); ++i)
    if (l->fibers[i].value) bits |= 1u << (i - warp0);
  me.wait = Wait::kWarpBarrier;
  suspend(me);
  return bits;
}

namespace {

std::string site(const Fiber& f) { return std::string(f.file ? f.file : "?") + ":" + std::to_string(f.line); }

// Runs one block to completion; returns an error message ("" when clean).
std::string run_block(Launch& l, Body body, void* cx) {
  const size_t n = l.fibers.size();
  for (size_t i = 0; i < n; ++i) {
    Fiber& fb = l.fibers[i];
    fb.wait = Wait::kRunnable;
    fb.file = nullptr;
    fb.line = 0;
    fb.f = ctx::fiber(std::allocator_arg, stack_pool(), [&l, &fb, body, cx](ctx::fiber&& sink) {
      fb.sink = std::move(sink);
      try {
        body(cx);
      } catch (const Fault& e) {
        if (l.error.empty()) l.error = e.what();
      } catch (const std::exception& e) {
        if (l.error.empty()) l.error = where(l, fb) + ": " + e.what();
      }
      fb.wait = Wait::kDone;
      return std::move(fb.sink);
    });
  }
  for (;;) {
    bool progressed = false;
    for (size_t i = 0; i < n; ++i) {
      Fiber& fb = l.fibers[i];
      if (fb.wait != Wait::kRunnable) continue;
      l.running = &fb;
      fb.f = std::move(fb.f).resume();
      l.running = nullptr;
      progressed = true;
      if (!l.error.empty()) return l.error;
    }
    if (progressed) continue;
    // Nobody can run: release complete warp meetings first, then the block barrier.
    bool released = false;
    for (size_t w = 0; w < n; w += 32) {
      const size_t end = w + 32 < n ? w + 32 : n;
      size_t at_warp = 0;
      for (size_t i = w; i < end; ++i) at_warp += l.fibers[i].wait == Wait::kWarpBarrier;
      if (at_warp == 0) continue;
      if (at_warp != end - w) {
        for (size_t i = w; i < end; ++i)
          if (l.fibers[i].wait != Wait::kWarpBarrier) {
            const Fiber& a = l.fibers[i];
            const Fiber* b = nullptr;
            for (size_t j = w; j < end; ++j)
              if (l.fibers[j].wait == Wait::kWarpBarrier) b = &l.fibers[j];
            return std::string(l.name) + ": warp divergence: lane " + std::to_string(b->state.linear & 31) +
                   " waits at the shuffle/vote at " + site(*b) + " while lane " + std::to_string(a.state.linear & 31) +
                   (a.wait == Wait::kDone ? " has exited" : " waits at the barrier at " + site(a));
          }
      }
      for (size_t i = w; i < end; ++i)
        if (l.fibers[i].line != l.fibers[w].line || l.fibers[i].file != l.fibers[w].file)
          return std::string(l.name) + ": warp divergence: lanes of one warp meet at different shuffles (" +
                 site(l.fibers[w]) + " and " + site(l.fibers[i]) + ")";
      for (size_t i = w; i < end; ++i) l.fibers[i].wait = Wait::kRunnable;
      released = true;
    }
    if (released) continue;
    size_t at_barrier = 0, done = 0;
    for (auto& fb : l.fibers) {
      at_barrier += fb.wait == Wait::kBlockBarrier;
      done += fb.wait == Wait::kDone;
    }
    if (done == n) return "";
    if (at_barrier != n) {
      const Fiber* waiting = nullptr;
      const Fiber* exited = nullptr;
      for (auto& fb : l.fibers) {
        if (fb.wait == Wait::kBlockBarrier && !waiting) waiting = &fb;
        if (fb.wait == Wait::kDone && !exited) exited = &fb;
      }
      return std::string(l.name) + ": barrier divergence: thread " + std::to_string(waiting->state.linear) +
             " waits at __syncthreads() at " + site(*waiting) + " but thread " + std::to_string(exited->state.linear) +
             " has exited without reaching it";
    }
    for (auto& fb : l.fibers)
      if (fb.line != l.fibers[0].line || fb.file != l.fibers[0].file)
        return std::string(l.name) + ": barrier divergence: threads of one block wait at different __syncthreads() (" +
               site(l.fibers[0]) + " and " + site(fb) + ")";
    for (auto& fb : l.fibers) fb.wait = Wait::kRunnable;
  }
}

}  // namespace

void run_grid(const char* name, dim3 grid, dim3 block, size_t smem, Body body, void* cx) {
  const size_t nthreads = static_cast<size_t>(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64) throw Fault(std::string(name) + ": invalid block size " + std::to_string(nthreads));
  if (grid.y > 65535 || grid.z > 65535 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    throw Fault(std::string(name) + ": invalid grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) + ")");
  if (smem > 227 * 1024) throw Fault(std::string(name) + ": " + std::to_string(smem) + " bytes of dynamic shared memory exceed any GPU's limit");
  Launch l;
  l.name = name;
  l.fibers.resize(nthreads);
  for (unsigned z = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x) {
        const unsigned lin = x + block.x * (y + block.y * z);
        l.fibers[lin].state = ThreadState{uint3{x, y, z}, lin};
      }
  std::vector<char> dyn(smem + 16);
  Launch* saved = t_launch;
  BlockState saved_block = t_block;
  t_launch = &l;
  std::string err;
  for (unsigned bz = 0; bz < grid.z && err.empty(); ++bz)
    for (unsigned by = 0; by < grid.y && err.empty(); ++by)
      for (unsigned bx = 0; bx < grid.x && err.empty(); ++bx) {
        t_block = BlockState{uint3{bx, by, bz}, block, grid, dyn.data(), smem};
        // Fresh shared memory holds garbage on a GPU: NaN bytes here, so a read before a write shows.
        std::memset(dyn.data(), 0xff, dyn.size());
        err = run_block(l, body, cx);
      }
  for (auto& fb : l.fibers) {  // unwinds any fiber still suspended (after a fault)
    fb.f = ctx::fiber();
  }
  t_launch = saved;
  t_block = saved_block;
  if (!err.empty()) throw Fault("CUDA emulator: " + err);
}

}  // namespace emu

// ---- the emulated runtime API ----
namespace {
struct EmuEventImpl {};
}  // namespace
struct EmuStream {};
struct EmuEvent {};

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
static size_t emu_total_bytes() {
  const char* s = std::getenv("SPINLM_CUDA_EMU_MEMORY");
  return s ? static_cast<size_t>(std::strtoull(s, nullptr, 10)) : size_t{8} << 30;
}
static size_t g_used = 0;
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::strcpy(p->name, "CUDA emulator (CPU)");
  p->totalGlobalMem = emu_total_bytes();
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 1;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = 227 * 1024;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (g_used + bytes > emu_total_bytes()) return cudaErrorMemoryAllocation;
  const size_t rounded = (bytes + 255) / 256 * 256;
  void* q = std::aligned_alloc(256, rounded == 0 ? 256 : rounded);
  if (!q) return cudaErrorMemoryAllocation;
  std::memset(q, 0xff, rounded == 0 ? 256 : rounded);  // NaN garbage, as fresh device memory may hold
  {
    std::lock_guard<std::mutex> lock(emu::g_alloc_mu);
    emu::allocations()[static_cast<const char*>(q)] = bytes;
  }
  g_used += bytes;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(emu::g_alloc_mu);
    auto& m = emu::allocations();
    auto it = m.find(static_cast<const char*>(p));
    if (it == m.end()) return 1;
    g_used -= it->second;
    m.erase(it);
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  *total = emu_total_bytes();
  *free_bytes = *total - g_used;
  return cudaSuccess;
}
// Copies check device-side ranges against the allocation registry, like the kernels' accesses.
static void check_device_range(const void* p, size_t bytes, const char* what) {
  if (bytes == 0) return;
  emu::Extent e = emu::find_allocation(p);
  if (!e.base || static_cast<const char*>(p) + bytes > e.base + e.bytes)
    throw emu::Fault(std::string("CUDA emulator: ") + what + " of " + std::to_string(bytes) + " bytes outside a device allocation");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice) check_device_range(dst, bytes, "copy destination");
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice) check_device_range(src, bytes, "copy source");
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  check_device_range(dst, bytes, "memset");
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  static EmuStream stream;
  *s = &stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = new EmuEvent;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaFuncSetAttribute(const void*, int, int) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    default: return "emulated CUDA error";
  }
}
