// Memory-level kernels of the CPU device: fill, cast, and the device error word. Host loops live
// here, not in the N-API bindings, so a CUDA build mirrors this file with device kernels.
#include <atomic>
#include <cstring>

#include "../include/bf16.h"
#include "kernels.h"
#include "threadpool.h"

namespace spinlm {

void fill_pattern(void* p, int64_t count, int elem_bytes, uint32_t pattern) {
  if (elem_bytes == 4) {
    uint32_t* q = static_cast<uint32_t*>(p);
    parallel_for(count, 1 << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) q[i] = pattern;
    });
  } else {
    uint16_t* q = static_cast<uint16_t*>(p);
    const uint16_t h = static_cast<uint16_t>(pattern);
    parallel_for(count, 1 << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) q[i] = h;
    });
  }
}

void cast_values(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n) {
  if (src_dt == dst_dt) {
    std::memmove(dst, src, static_cast<size_t>(n * dtype_size(src_dt)));
  } else if (src_dt == DType::kF32) {
    const float* a = static_cast<const float*>(src);
    uint16_t* b = static_cast<uint16_t*>(dst);
    parallel_for(n, 1 << 15, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) b[i] = f32_to_bf16(a[i]);
    });
  } else {
    const uint16_t* a = static_cast<const uint16_t*>(src);
    float* b = static_cast<float*>(dst);
    parallel_for(n, 1 << 15, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) b[i] = bf16_to_f32(a[i]);
    });
  }
}

namespace {
std::atomic<uint32_t> g_op_errors{0};
}

void raise_op_error(uint32_t bits) { g_op_errors.fetch_or(bits, std::memory_order_relaxed); }
uint32_t take_op_errors() { return g_op_errors.exchange(0, std::memory_order_relaxed); }

}  // namespace spinlm
