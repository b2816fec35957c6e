// bfloat16 <-> float32. bf16 is the top half of an IEEE float32: 1 sign, 8 exponent, 7 mantissa bits.
#pragma once
#include "common.h"

namespace spinlm {

// Exact: every bf16 value is a float32.
SPINLM_HD float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

// Round to nearest, ties to even. NaN stays NaN (forced quiet so that rounding cannot carry it
// into Inf); +-Inf stay +-Inf; finite values past the bf16 range round to +-Inf as IEEE requires.
SPINLM_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace spinlm
