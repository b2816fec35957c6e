#include "memory.h"

#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <map>
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

void* host_alloc_block(int64_t bytes) {
  const int64_t size = rounded_size(bytes);
  if (bytes < kBig) return std::aligned_alloc(64, static_cast<size_t>(size));
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(size);
    if (it != cache.end()) {
      void* p = it->second;
      cache.erase(it);
      cached -= size;
      return p;
    }
  }
  void* p = std::aligned_alloc(kHuge, static_cast<size_t>(size));
  if (p) madvise(p, static_cast<size_t>(size), MADV_HUGEPAGE);
  return p;
}

void host_free_block(void* p, int64_t bytes) {
  const int64_t size = rounded_size(bytes);
  if (bytes >= kBig) {
    std::lock_guard<std::mutex> lock(mu);
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
