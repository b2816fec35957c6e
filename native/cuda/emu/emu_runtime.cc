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
struct Alloc {
  size_t real;     // bytes cudaMalloc gave
  size_t checked;  // bytes accesses may touch (the allocator's request)
  bool live;
};
std::map<const char*, Alloc>& allocations() {
  static std::map<const char*, Alloc> m;
  return m;
}

// ---- errors: the last error (cleared by cudaGetLastError) and the sticky one (a kernel fault) ----
cudaError_t g_last = 0, g_sticky = 0;
std::string g_detail;
void set_error(cudaError_t e, std::string detail) {
  g_last = e;
  g_detail = std::move(detail);
}

// ---- settings read once from the environment ----
uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* s = std::getenv(name);
  return s && *s ? std::strtoull(s, nullptr, 10) : fallback;
}
uint64_t seed() {
  static const uint64_t s = env_u64("SPINLM_CUDA_EMU_SEED", 1);
  return s;
}
uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// ---- dynamic shared memory limits set by cudaFuncSetAttribute, per kernel ----
std::map<const void*, int>& smem_optin() {
  static std::map<const void*, int> m;
  return m;
}
constexpr size_t kDefaultDynSmem = 48 * 1024, kMaxDynSmem = 227 * 1024;

// One launch runs at a time (g_launch_mu), so the scheduler's state is plain globals: no TLS lookups on
// the hot paths (every threadIdx and shared access).
std::mutex g_launch_mu;
}  // namespace
uint64_t g_epoch = 0;  // barrier intervals (and blocks) run so far
uint16_t g_cur_tid = 0;
uint32_t g_cur_wsync = 0;
namespace {
uint64_t g_launches = 0;

enum class Wait { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
  ThreadState state;
  ctx::fiber f;     // the fiber while suspended
  ctx::fiber sink;  // the scheduler, while this fiber runs
  Wait wait = Wait::kRunnable;
  const char* file = nullptr;
  int line = 0;
  uint64_t value = 0;  // published for a warp exchange
  bool collective = false;  // waiting at a WMMA meeting (which does not order memory between lanes)
  int bar_value = 0;   // published for __syncthreads_or/and/count
};

struct Launch {
  const char* name;
  std::vector<Fiber> fibers;
  Fiber* running = nullptr;
  std::string error;  // first fault
  std::vector<uint32_t> warp_sync;  // per warp: meetings (shuffles, votes) released in this block
  int bar_or = 0, bar_and = 0, bar_count = 0;  // the last block barrier's reductions
};

Launch* t_launch = nullptr;
BlockState t_block;
ThreadState t_host_thread{};

constexpr size_t kStackBytes = 256 * 1024;

ctx::pooled_fixedsize_stack& stack_pool() {
  static ctx::pooled_fixedsize_stack pool(kStackBytes);
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
  const Alloc& a = it->second;
  // One past the end of an allocation (an empty view at its end) still names it.
  if (c >= it->first && (c < it->first + a.real || c == it->first + a.checked))
    return {const_cast<char*>(it->first), a.checked, a.live};
  return {};
}

void note_allocation(const void* base, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  auto it = allocations().find(static_cast<const char*>(base));
  if (it == allocations().end()) return;
  it->second.checked = bytes < it->second.real ? bytes : it->second.real;
  it->second.live = true;
  std::memset(const_cast<char*>(it->first), 0xff, it->second.real);  // garbage again, as a reused block holds
}

void note_free(const void* base) {
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  auto it = allocations().find(static_cast<const char*>(base));
  if (it != allocations().end()) it->second.live = false;
}

bool launch_allowed() { return g_sticky == 0; }
std::string last_error_detail() { return g_detail; }
void reset_errors() {
  g_last = g_sticky = 0;
  g_detail.clear();
}

uint64_t g_block_gen = 0;
const bool g_racecheck = env_u64("SPINLM_CUDA_EMU_RACECHECK", 1) != 0;

int declared_launch_bound(const void* fn) {
  const unsigned char* p = static_cast<const unsigned char*>(fn);
  int nops = 0;
#if defined(__x86_64__) || defined(__i386__)
  if (p[0] == 0xf3 && p[1] == 0x0f && p[2] == 0x1e && (p[3] == 0xfa || p[3] == 0xfb)) p += 4;  // endbr64/32
  while (nops < 32 && p[nops] == 0x90) ++nops;
#elif defined(__aarch64__)
  uint32_t w = 0;
  std::memcpy(&w, p, 4);
  if (w == 0xd503245fu || w == 0xd503249fu || w == 0xd50324dfu) p += 4;  // bti c / j / jc
  for (;;) {
    std::memcpy(&w, p + 4 * nops, 4);
    if (w != 0xd503201fu || nops >= 32) break;
    ++nops;
  }
#endif
  return nops * 32;
}

void shared_access(ByteShadow* sh, size_t n, bool write, const char* kind, size_t offset) {
  Launch* l = t_launch;
  if (!l || !l->running) return;
  const uint16_t tid = static_cast<uint16_t>(l->running->state.linear);
  const uint32_t ws = l->warp_sync[tid >> 5];
  const uint64_t e = g_epoch;
  // Ordered before this access: the same thread, or a lane of its warp before a shuffle/vote since.
  auto synced = [&](uint16_t other, uint32_t at) { return other == tid || ((other >> 5) == (tid >> 5) && ws > at); };
  auto race = [&](size_t i, const char* what, uint16_t other) {
    fault(std::string("shared memory race: ") + (write ? "write" : "read") + " of " + kind + " byte " + std::to_string(offset + i) +
          " " + what + (other == kManyReaders ? std::string(" several threads") : (other & 0x8000) ? " several lanes of warp " + std::to_string(other & 0x7fff) : " thread " + std::to_string(other)) +
          " in the same barrier interval (no __syncthreads() between)");
  };
  for (size_t i = 0; i < n; ++i) {
    ByteShadow& b = sh[i];
    if (b.w_epoch == e && !synced(b.w_tid, b.w_wsync)) race(i, "written by", b.w_tid);
    if (write) {
      if (b.r_epoch == e) {
        const uint16_t r = b.r_tid;
        const bool ok = r == kManyReaders ? false : (r & 0x8000) ? ((r & 0x7fff) == (tid >> 5) && ws > b.r_wsync) : synced(r, b.r_wsync);
        if (!ok) race(i, "read by", r);
      }
      b.w_epoch = e;
      b.w_tid = tid;
      b.w_wsync = ws;
    } else if (b.r_epoch != e) {
      b.r_epoch = e;
      b.r_tid = tid;
      b.r_wsync = ws;
    } else if (b.r_tid != tid) {
      const uint16_t r = b.r_tid;
      const bool same_warp = r != kManyReaders && ((r & 0x8000) ? (r & 0x7fff) == (tid >> 5) : (r >> 5) == (tid >> 5));
      b.r_tid = same_warp ? static_cast<uint16_t>(0x8000 | (tid >> 5)) : kManyReaders;
      b.r_wsync = ws;
    } else {
      b.r_wsync = ws;
    }
  }
}

ThreadState& current_thread() {
  if (t_launch && t_launch->running) return t_launch->running->state;
  return t_host_thread;
}
BlockState& current_block() { return t_block; }

void block_barrier(const char* file, int line) { block_barrier_reduce(0, -1, file, line); }

int block_barrier_reduce(int mine, int op, const char* file, int line) {
  Launch* l = t_launch;
  if (!l || !l->running) return mine;
  Fiber& me = *l->running;
  me.wait = Wait::kBlockBarrier;
  me.file = file;
  me.line = line;
  me.bar_value = mine;
  suspend(me);
  return op == 0 ? l->bar_or : op == 1 ? l->bar_and : l->bar_count;
}

uint64_t warp_exchange(uint64_t mine, int from, const char* file, int line) {
  Launch* l = t_launch;
  if (!l || !l->running) return mine;
  Fiber& me = *l->running;
  const size_t warp0 = me.state.linear & ~31u;
  me.value = mine;
  me.wait = Wait::kWarpBarrier;
  me.collective = false;
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

uint64_t order_seed() { return seed(); }

void warp_collective_begin(const void* mine, const void** all, const char* file, int line) {
  Launch* l = t_launch;
  if (!l || !l->running) fault("a warp-collective operation outside a kernel");
  Fiber& me = *l->running;
  const size_t warp0 = me.state.linear & ~31u;
  me.value = reinterpret_cast<uintptr_t>(mine);
  me.wait = Wait::kWarpBarrier;
  me.collective = true;
  me.file = file;
  me.line = line;
  suspend(me);  // every lane has published
  for (size_t i = 0; i < 32; ++i)
    all[i] = warp0 + i < l->fibers.size() ? reinterpret_cast<const void*>(static_cast<uintptr_t>(l->fibers[warp0 + i].value)) : nullptr;
}

void warp_collective_end(const char* file, int line) {
  Launch* l = t_launch;
  Fiber& me = *l->running;
  me.wait = Wait::kWarpBarrier;
  me.collective = true;
  me.file = file;
  me.line = line;
  suspend(me);  // every lane has read what the others published
}

uint32_t warp_ballot(bool mine, const char* file, int line) {
  Launch* l = t_launch;
  if (!l || !l->running) return mine ? 1u : 0u;
  Fiber& me = *l->running;
  const size_t warp0 = me.state.linear & ~31u;
  me.value = mine ? 1 : 0;
  me.wait = Wait::kWarpBarrier;
  me.collective = false;
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
std::string run_block(Launch& l, Body body, void* cx, uint64_t rng) {
  const size_t n = l.fibers.size();
  ++g_epoch;
  std::fill(l.warp_sync.begin(), l.warp_sync.end(), 0u);
  // Threads run in a seeded random order between meetings (seed 0: in thread order).
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  auto reshuffle = [&] {
    if (seed() == 0) return;
    for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[splitmix(rng) % i]);
  };
  reshuffle();
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
    for (size_t i : order) {
      Fiber& fb = l.fibers[i];
      if (fb.wait != Wait::kRunnable) continue;
      l.running = &fb;
      g_cur_tid = static_cast<uint16_t>(fb.state.linear);
      g_cur_wsync = l.warp_sync[fb.state.linear >> 5];
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
      if (!l.fibers[w].collective) ++l.warp_sync[w / 32];  // shuffles and votes order the lanes' memory; WMMA does not
      released = true;
    }
    if (released) {
      reshuffle();
      continue;
    }
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
    l.bar_or = 0;
    l.bar_and = 1;
    l.bar_count = 0;
    for (auto& fb : l.fibers) {
      l.bar_or |= fb.bar_value != 0;
      l.bar_and &= fb.bar_value != 0;
      l.bar_count += fb.bar_value != 0;
      fb.wait = Wait::kRunnable;
    }
    ++g_epoch;  // a new barrier interval: earlier accesses are ordered before later ones
    reshuffle();
  }
}

}  // namespace

void run_grid(const char* name, const void* fn, dim3 grid, dim3 block, size_t smem, Body body, void* cx) {
  // What a GPU refuses at launch: the last error is set, nothing runs (check_launch reports it).
  const size_t nthreads = static_cast<size_t>(block.x) * block.y * block.z;
  const std::string grid_s = "(" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) + ")";
  if (nthreads == 0 || nthreads > 1024 || block.z > 64)
    return set_error(cudaErrorInvalidConfiguration, std::string(name) + ": invalid block size " + std::to_string(nthreads) + " (1 to 1024 threads)");
  const int bound = declared_launch_bound(fn);
  if (bound > 0 && nthreads > static_cast<size_t>(bound))
    return set_error(cudaErrorLaunchOutOfResources, std::string(name) + ": a block of " + std::to_string(nthreads) +
                                                        " threads exceeds the kernel's __launch_bounds__(" + std::to_string(bound) + ")");
  if (grid.y > 65535 || grid.z > 65535 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    return set_error(cudaErrorInvalidConfiguration, std::string(name) + ": invalid grid " + grid_s);
  auto opt = smem_optin().find(fn);
  const size_t smem_limit = opt != smem_optin().end() ? static_cast<size_t>(opt->second) : kDefaultDynSmem;
  if (smem > smem_limit)
    return set_error(cudaErrorInvalidValue,
                     std::string(name) + ": " + std::to_string(smem) + " bytes of dynamic shared memory exceed " +
                         (opt != smem_optin().end() ? "the " + std::to_string(smem_limit) + " bytes set by cudaFuncSetAttribute"
                                                    : std::string("48 KB without cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize)")));
  std::lock_guard<std::mutex> one_launch_at_a_time(g_launch_mu);
  Launch l;
  l.name = name;
  l.fibers.resize(nthreads);
  l.warp_sync.resize((nthreads + 31) / 32);
  for (unsigned z = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x) {
        const unsigned lin = x + block.x * (y + block.y * z);
        l.fibers[lin].state = ThreadState{uint3{x, y, z}, lin};
      }
  // 128-byte aligned, as the GPU build declares it (cuda_common.cuh): WMMA tiles need 32 bytes
  std::vector<char> dyn_store(smem + 16 + 128);
  char* const dyn_base = dyn_store.data() + (128 - reinterpret_cast<uintptr_t>(dyn_store.data()) % 128) % 128;
  std::vector<ByteShadow> dyn_shadow(smem + 16);
  Launch* saved = t_launch;
  BlockState saved_block = t_block;
  t_launch = &l;
  const uint64_t launch_id = ++g_launches;
  std::string err;
  for (unsigned bz = 0; bz < grid.z && err.empty(); ++bz)
    for (unsigned by = 0; by < grid.y && err.empty(); ++by)
      for (unsigned bx = 0; bx < grid.x && err.empty(); ++bx) {
        t_block = BlockState{uint3{bx, by, bz}, block, grid, dyn_base, smem, dyn_shadow.data()};
        ++g_block_gen;
        // Fresh shared memory holds garbage on a GPU: NaN bytes here, so a read before a write shows.
        std::memset(dyn_base, 0xff, smem + 16);
        uint64_t rng = seed() * 0x2545f4914f6cdd1dULL ^ launch_id * 0x9e3779b97f4a7c15ULL ^
                       ((static_cast<uint64_t>(bz) * grid.y + by) * grid.x + bx);
        err = run_block(l, body, cx, splitmix(rng));
      }
  for (auto& fb : l.fibers) {  // unwinds any fiber still suspended (after a fault)
    fb.f = ctx::fiber();
  }
  t_launch = saved;
  t_block = saved_block;
  if (!err.empty()) {
    // A fault in a kernel is sticky on a GPU: every later call fails until the process ends.
    g_sticky = cudaErrorIllegalAddress;
    g_detail = err;
    throw Fault("CUDA emulator: " + err);
  }
}

}  // namespace emu

// ---- the emulated runtime API ----
// Every call fails with the sticky error once a kernel has faulted (as on a GPU, until the process
// ends; emu::reset_errors() is the tests' device reset). Failed calls set the last error.
struct EmuStream {};
struct EmuEvent {};

namespace {
size_t g_used = 0, g_limit = 0, g_host_allocs = 0;
size_t emu_total_bytes() {
  if (g_limit) return g_limit;
  const char* s = std::getenv("SPINLM_CUDA_EMU_MEMORY");
  return s ? static_cast<size_t>(std::strtoull(s, nullptr, 10)) : size_t{8} << 30;
}
cudaError_t fail(cudaError_t e, std::string detail) {
  emu::set_error(e, std::move(detail));
  return e;
}
}  // namespace

#define EMU_STICKY() \
  do {                                          \
    if (emu::g_sticky) return emu::g_sticky;     \
  } while (0)

namespace emu {
void set_memory_limit(size_t bytes) { g_limit = bytes; }
size_t host_alloc_calls() { return g_host_allocs; }
}  // namespace emu

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) {
  EMU_STICKY();
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::strcpy(p->name, "CUDA emulator (CPU)");
  p->totalGlobalMem = emu_total_bytes();
  p->major = 9;
  p->minor = 0;
  // An H100 SXM's 132 multiprocessors, so launch plans that size grids by the SM count match a GPU's.
  p->multiProcessorCount = static_cast<int>(emu::env_u64("SPINLM_CUDA_EMU_SMS", 132));
  if (p->multiProcessorCount < 1) p->multiProcessorCount = 1;
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
  EMU_STICKY();
  if (g_used + bytes > emu_total_bytes())
    return fail(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(bytes) + " bytes with " +
                                               std::to_string(emu_total_bytes() - g_used) + " free");
  const size_t rounded = (bytes + 255) / 256 * 256;
  void* q = std::aligned_alloc(256, rounded == 0 ? 256 : rounded);
  if (!q) return fail(cudaErrorMemoryAllocation, "host memory for an emulated cudaMalloc of " + std::to_string(bytes) + " bytes");
  std::memset(q, 0xff, rounded == 0 ? 256 : rounded);  // NaN garbage, as fresh device memory may hold
  {
    std::lock_guard<std::mutex> lock(emu::g_alloc_mu);
    emu::allocations()[static_cast<const char*>(q)] = emu::Alloc{bytes, bytes, true};
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
    if (it == m.end()) return fail(cudaErrorInvalidValue, "cudaFree of a pointer cudaMalloc did not return");
    g_used -= it->second.real;
    m.erase(it);
  }
  std::free(p);
  EMU_STICKY();
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  EMU_STICKY();
  ++g_host_allocs;
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaMallocHost of " + std::to_string(bytes) + " bytes");
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  *total = emu_total_bytes();
  *free_bytes = *total > g_used ? *total - g_used : 0;
  return cudaSuccess;
}
// Copies check device-side ranges against the allocation registry, like the kernels' accesses.
static void check_device_range(const void* p, size_t bytes, const char* what) {
  if (bytes == 0) return;
  emu::Extent e = emu::find_allocation(p);
  if (!e.base || static_cast<const char*>(p) + bytes > e.base + e.bytes)
    throw emu::Fault(std::string("CUDA emulator: ") + what + " of " + std::to_string(bytes) + " bytes outside a device allocation");
  if (!e.live) throw emu::Fault(std::string("CUDA emulator: ") + what + " of " + std::to_string(bytes) + " bytes in freed device memory (use after free)");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  EMU_STICKY();
  if (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice) check_device_range(dst, bytes, "copy destination");
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice) check_device_range(src, bytes, "copy source");
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  EMU_STICKY();
  check_device_range(dst, bytes, "memset");
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  EMU_STICKY();
  static EmuStream stream;
  *s = &stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  EMU_STICKY();
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  EMU_STICKY();
  *e = new EmuEvent;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) {
  EMU_STICKY();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  EMU_STICKY();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  if (emu::g_sticky) return emu::g_sticky;
  const cudaError_t e = emu::g_last;
  emu::g_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return emu::g_sticky ? emu::g_sticky : emu::g_last; }
cudaError_t cudaFuncSetAttribute(const void* f, int attr, int value) {
  EMU_STICKY();
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > emu::kMaxDynSmem)
      return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(value) + " bytes of dynamic shared memory exceed the 227 KB a block may opt in to");
    emu::smem_optin()[f] = value;
  }
  return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    default: return "emulated CUDA error";
  }
}
