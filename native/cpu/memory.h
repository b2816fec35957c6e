// Host memory for CPU-backend tensors: 64-byte aligned; blocks of 4 MiB and more are 2 MiB aligned,
// on transparent huge pages, and recycled. A training step frees and re-allocates the same large
// activations and gradients every step; without recycling each one costs ~10^5 page faults (or a
// compaction for huge pages) on its first write, which is slower than the kernel that writes it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <new>

namespace spinlm {

// A CPU tensor's buffer, owned by the N-API External handle that the CPU backend gives JS
// (ptr = nullptr after free()).
struct HostBuffer {
  void* ptr;
  int64_t bytes;
};

void* host_alloc(int64_t bytes);                 // nullptr when out of memory
void host_free(void* p, int64_t bytes);          // `bytes` as passed to host_alloc
int64_t host_cached_bytes();                     // bytes held for recycling
void host_release_cached();                      // gives every block held for recycling back
int64_t host_live_bytes();                       // bytes of the buffers allocated and not yet freed
int64_t host_peak_live_bytes(bool reset);        // the most host_live_bytes() has been since the
                                                 // last reset (reset: start again from the live bytes)

// An f32 scratch buffer of a kernel from the tensor allocator (counted in the live bytes, recycled
// between calls), freed when it goes out of scope; std::bad_alloc when memory is out.
class ScratchF32 {
 public:
  explicit ScratchF32(int64_t elems) : bytes_(std::max<int64_t>(1, elems) * static_cast<int64_t>(sizeof(float))) {
    p_ = static_cast<float*>(host_alloc(bytes_));
    if (!p_) throw std::bad_alloc();
  }
  ~ScratchF32() { host_free(p_, bytes_); }
  ScratchF32(const ScratchF32&) = delete;
  ScratchF32& operator=(const ScratchF32&) = delete;
  float* data() const { return p_; }

 private:
  int64_t bytes_;
  float* p_;
};

}  // namespace spinlm
