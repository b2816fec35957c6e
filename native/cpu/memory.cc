#include "memory.h"

#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <iterator>
#include <map>
#include <vector>
#include <mutex>

namespace spinlm {
namespace {

constexpr int64_t kHuge = int64_t{2} << 20;
constexpr int64_t kBig = int64_t{4} << 20;   // from here on: huge pages and recycling
constexpr int64_t kCacheCap = int64_t{2} << 30;  // at most 2 GiB kept for reuse

std::mutex mu;
std::multimap<int64_t, void*> cache;  // rounded size -> free block
int64_t cached = 0;
std::atomic<int64_t> live{0};  // bytes of the tensors alive now (as requested, not rounded)
std::atomic<int64_t> live_peak{0};  // the most `live` has been since the last reset
int64_t big_live = 0;          // rounded bytes of the live big blocks (under mu)
int64_t big_peak = 0;          // the most big_live has been (under mu)

int64_t rounded_size(int64_t bytes) {
  return bytes >= kBig ? (bytes + kHuge - 1) / kHuge * kHuge : (bytes + 63) / 64 * 64 + 64;
}

void* host_alloc_block(int64_t bytes);
void host_free_block(void* p, int64_t bytes);

// A big block straight from the kernel, 2 MiB aligned (map size + 2 MiB, unmap the slack on both
// sides), and back with munmap. Not through malloc: glibc serves blocks under its dynamic mmap
// threshold (raised to 32 MiB by the first big free) from the brk heap, which a free does not shrink,
// so freed activations stayed resident there (0.47 GB of heap beside 2.2 GB of live tensors in a
// 2-layer 1.1B-shape step, docs/memory.md).
void* map_big(int64_t size) {
  const size_t span = static_cast<size_t>(size + kHuge);
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHuge - 1) / kHuge * kHuge;
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + span, used = aligned + static_cast<uintptr_t>(size);
  if (end > used) munmap(reinterpret_cast<void*>(used), end - used);
  void* p = reinterpret_cast<void*>(aligned);
  madvise(p, static_cast<size_t>(size), MADV_HUGEPAGE);
  return p;
}

void unmap_big(void* p, int64_t size) { munmap(p, static_cast<size_t>(size)); }

}  // namespace

void* host_alloc(int64_t bytes) {
  void* p = host_alloc_block(bytes);
  if (!p) return p;
  const int64_t now = live += bytes;
  int64_t peak = live_peak.load();
  while (now > peak && !live_peak.compare_exchange_weak(peak, now)) {
  }
  return p;
}

void host_free(void* p, int64_t bytes) {
  if (!p) return;
  live -= bytes;
  host_free_block(p, bytes);
}

int64_t host_live_bytes() { return live.load(); }

int64_t host_peak_live_bytes(bool reset) { return reset ? live_peak.exchange(live.load()) : live_peak.load(); }

namespace {

// The cache must never raise the footprint: on a miss, cached blocks (largest first) are returned
// to the system until live + cached + the new block fits under the peak of live big blocks so far
// (or nothing is cached). A repeating pattern (training steps) still hits the cache; a phase that
// frees memory for good (bf16 weights dropped during a step, a reference pass's logits) gives it
// back instead of keeping up to kCacheCap resident beside new, differently sized buffers.
void* host_alloc_block(int64_t bytes) {
  const int64_t size = rounded_size(bytes);
  if (bytes < kBig) return std::aligned_alloc(64, static_cast<size_t>(size));
  std::vector<std::pair<void*, int64_t>> release;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(size);
    if (it != cache.end()) {
      void* p = it->second;
      cache.erase(it);
      cached -= size;
      big_live += size;
      big_peak = std::max(big_peak, big_live);
      return p;
    }
    const int64_t limit = std::max(big_peak, big_live + size);
    while (!cache.empty() && big_live + cached + size > limit) {
      auto last = std::prev(cache.end());
      cached -= last->first;
      release.emplace_back(last->second, last->first);
      cache.erase(last);
    }
    big_live += size;
    big_peak = std::max(big_peak, big_live);
  }
  for (const auto& [q, qsize] : release) unmap_big(q, qsize);
  void* p = map_big(size);
  if (!p) {
    std::lock_guard<std::mutex> lock(mu);
    big_live -= size;
  }
  return p;
}

void host_free_block(void* p, int64_t bytes) {
  const int64_t size = rounded_size(bytes);
  if (bytes < kBig) {
    std::free(p);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    big_live -= size;
    if (cached + size <= kCacheCap) {
      cache.emplace(size, p);
      cached += size;
      return;
    }
  }
  unmap_big(p, size);
}

}  // namespace

void host_release_cached() {
  std::vector<std::pair<void*, int64_t>> release;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& [size, p] : cache) release.emplace_back(p, size);
    cache.clear();
    cached = 0;
  }
  for (const auto& [p, size] : release) unmap_big(p, size);
}

int64_t host_cached_bytes() {
  std::lock_guard<std::mutex> lock(mu);
  return cached;
}

}  // namespace spinlm
