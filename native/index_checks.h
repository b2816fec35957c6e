// Index checks of the CPU bindings. An op whose index tensor holds a value outside its range does not
// run its kernel (no read or write outside a buffer): it raises its bit in the device error word
// (native/include/op_errors.h), poisons its outputs with NaN, and the next read() on the host throws
// an error naming the op. Every backend behaves the same way (docs/ops.md).
#pragma once
#include <cstdint>

#include "cpu/kernels.h"
#include "include/op_errors.h"

namespace spinlm::napi {

// True (and `bit` raised) when some ids[i] is outside [lo, hi) and is not `allowed`.
inline bool IndicesOutside(const int32_t* ids, int64_t n, int64_t lo, int64_t hi, int64_t allowed, uint32_t bit) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t x = ids[i];
    if (x != allowed && (x < lo || x >= hi)) {
      spinlm::raise_op_error(bit);
      return true;
    }
  }
  return false;
}

// No value may be allowed beyond the range: an index that can never occur.
inline constexpr int64_t kNoException = INT64_MIN;

inline void PoisonF32(float* p, int64_t n) { spinlm::fill_pattern(p, n, 4, 0x7fc00000u); }
inline void PoisonAny(void* p, int64_t n, DType dt) {
  spinlm::fill_pattern(p, n, dt == DType::kBF16 ? 2 : 4, dt == DType::kBF16 ? 0x7fc0u : 0x7fc00000u);
}

}  // namespace spinlm::napi
