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

// The emulator runs this same allocator; it is told what each block holds now, so its bounds checks
// see the request (not the size class) and any use of a cached block is a use after free.
void emu_note_alloc(void* p, size_t bytes) {
#ifdef SPINLM_CUDA_EMU
  emu::note_allocation(p, bytes);
#else
  (void)p;
  (void)bytes;
#endif
}
void emu_note_free(void* p) {
#ifdef SPINLM_CUDA_EMU
  emu::note_free(p);
#else
  (void)p;
#endif
}

}  // namespace

size_t release_cache() {
  const size_t released = g_cached;
  if (released == 0) return 0;
  cudaStreamSynchronize(stream());
  for (auto& [size, list] : g_free)
    for (void* p : list) cudaFree(p);
  g_free.clear();
  g_cached = 0;
  cudaGetLastError();  // whatever cudaFree or the synchronization left is not the next op's error
  return released;
}

std::string oom_message(size_t bytes, const char* what) {
  size_t free_b = 0, total = 0;
  cudaMemGetInfo(&free_b, &total);
  cudaGetLastError();
  return "out of device memory: " + std::string(what) + " of " + std::to_string(bytes) + " bytes failed with " +
         std::to_string(free_b) + " bytes free of " + std::to_string(total) + " (" + std::to_string(g_allocated) +
         " bytes held by spinlm tensors)";
}

AllocResult device_alloc(size_t bytes) {
  const size_t c = size_class(bytes);
  auto it = g_free.find(c);
  if (it != g_free.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    g_cached -= c;
    g_allocated += c;
    note_peaks();
    emu_note_alloc(p, bytes);
    return {p, ""};
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, c);
  if (e != cudaSuccess) {
    cudaGetLastError();  // a failed cudaMalloc sets the last error: clear it before the retry
    if (release_cache() > 0) e = cudaMalloc(&p, c);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    return {nullptr, oom_message(bytes)};
  }
  g_allocated += c;
  note_peaks();
  emu_note_alloc(p, bytes);
  return {p, ""};
}

void device_free(void* p, size_t bytes) {
  if (!p) return;
  const size_t c = size_class(bytes);
  emu_note_free(p);
  g_free[c].push_back(p);
  g_cached += c;
  g_allocated -= c;
}

size_t cached_bytes() { return g_cached; }
size_t allocated_bytes() { return g_allocated; }
size_t peak_allocated_bytes() { return g_peak_allocated; }
size_t peak_reserved_bytes() { return g_peak_reserved; }

}  // namespace spinlm::cuda
