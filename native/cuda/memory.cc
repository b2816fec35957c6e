// The CUDA backend's caching allocator (runtime.h). Requests round up to a size class (512 bytes,
// then powers of two split in four); each class keeps a free list. Every kernel and copy runs on the
// backend's one stream, so a block freed by the host can be handed out again at once: any later
// use is ordered after the earlier work on that stream.
#include <map>
#include <string>
#include <vector>

#include "runtime.h"

namespace spinlm::cuda {
namespace {

std::map<size_t, std::vector<void*>> g_free;
size_t g_cached = 0, g_allocated = 0, g_peak_allocated = 0, g_peak_reserved = 0;

void note_peaks() {
  if (g_allocated > g_peak_allocated) g_peak_allocated = g_allocated;
  if (g_allocated + g_cached > g_peak_reserved) g_peak_reserved = g_allocated + g_cached;
}

size_t size_class(size_t bytes) {
  if (bytes <= 512) return 512;
  size_t p = 1024;
  while (p < bytes) p <<= 1;
  const size_t quarter = p / 8;  // classes at 5/8, 6/8, 7/8, 8/8 of p
  size_t c = p / 2 + quarter;
  while (c < bytes) c += quarter;
  return c;
}

void release_cache() {
  cudaStreamSynchronize(stream());
  for (auto& [size, list] : g_free)
    for (void* p : list) cudaFree(p);
  g_free.clear();
  g_cached = 0;
}

}  // namespace

AllocResult device_alloc(size_t bytes) {
#ifdef SPINLM_CUDA_EMU
  // Under the emulator every tensor is its own exact allocation, so the bounds checks see its extent.
  const size_t c = bytes;
#else
  const size_t c = size_class(bytes);
#endif
  auto it = g_free.find(c);
  if (it != g_free.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    g_cached -= c;
    g_allocated += c;
    note_peaks();
    return {p, ""};
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, c);
  if (e != cudaSuccess) {
    cudaGetLastError();
    release_cache();
    e = cudaMalloc(&p, c);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total = 0;
    cudaMemGetInfo(&free_b, &total);
    return {nullptr, "out of device memory: a request of " + std::to_string(bytes) + " bytes failed with " +
                         std::to_string(free_b) + " bytes free of " + std::to_string(total) + " (" +
                         std::to_string(g_allocated) + " bytes held by spinlm tensors)"};
  }
  g_allocated += c;
  note_peaks();
  return {p, ""};
}

void device_free(void* p, size_t bytes) {
  if (!p) return;
#ifdef SPINLM_CUDA_EMU
  cudaFree(p);
  g_allocated -= bytes;
  return;
#endif
  const size_t c = size_class(bytes);
  g_free[c].push_back(p);
  g_cached += c;
  g_allocated -= c;
}

size_t cached_bytes() { return g_cached; }
size_t allocated_bytes() { return g_allocated; }
size_t peak_allocated_bytes() { return g_peak_allocated; }
size_t peak_reserved_bytes() { return g_peak_reserved; }

}  // namespace spinlm::cuda
