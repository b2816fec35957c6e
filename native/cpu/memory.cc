#include "memory.h"

#include <sys/mman.h>

#include <atomic>
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
int64_t big_live = 0;          // rounded bytes of the live big blocks (under mu)
int64_t big_peak = 0;          // the most big_live has been (under mu)

int64_t rounded_size(int64_t bytes) {
  return bytes >= kBig ? (bytes + kHuge - 1) / kHuge * kHuge : (bytes + 63) / 64 * 64 + 64;
}

void* host_alloc_block(int64_t bytes);
void host_free_block(void* p, int64_t bytes);

}  // namespace

void* host_alloc(int64_t bytes) {
  void* p = host_alloc_block(bytes);
  if (p) live += bytes;
  return p;
}

void host_free(void* p, int64_t bytes) {
  if (!p) return;
  live -= bytes;
  host_free_block(p, bytes);
}

int64_t host_live_bytes() { return live.load(); }

namespace {

// The cache must never raise the footprint: on a miss, cached blocks (largest first) are returned
// to the system until live + cached + the new block fits under the peak of live big blocks so far
// (or nothing is cached). A repeating pattern (training steps) still hits the cache; a phase that
// frees memory for good (bf16 weights dropped during a step, a reference pass's logits) gives it
// back instead of keeping up to kCacheCap resident beside new, differently sized buffers.
void* host_alloc_block(int64_t bytes) {
  const int64_t size = rounded_size(bytes);
  if (bytes < kBig) return std::aligned_alloc(64, static_cast<size_t>(size));
  std::vector<void*> release;
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
      release.push_back(last->second);
      cache.erase(last);
    }
    big_live += size;
    big_peak = std::max(big_peak, big_live);
  }
  for (void* q : release) std::free(q);
  void* p = std::aligned_alloc(kHuge, static_cast<size_t>(size));
  if (p) madvise(p, static_cast<size_t>(size), MADV_HUGEPAGE);
  else {
    std::lock_guard<std::mutex> lock(mu);
    big_live -= size;
  }
  return p;
}

void host_free_block(void* p, int64_t bytes) {
  const int64_t size = rounded_size(bytes);
  if (bytes >= kBig) {
    std::lock_guard<std::mutex> lock(mu);
    big_live -= size;
    if (cached + size <= kCacheCap) {
      cache.emplace(size, p);
      cached += size;
      return;
    }
  }
  std::free(p);
}

}  // namespace

int64_t host_cached_bytes() {
  std::lock_guard<std::mutex> lock(mu);
  return cached;
}

}  // namespace spinlm
