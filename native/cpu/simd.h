// 16-lane float vectors through GCC/Clang vector extensions. The same source compiles to SSE2,
// AVX2 or AVX-512 depending on the target of the function it is inlined into; hot entry points
// are built for several targets with SPINLM_CLONES and picked at load time (ifunc).
#pragma once
#include <cstdint>
#include <cstring>

namespace spinlm::simd {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

#if defined(__x86_64__) && !defined(SPINLM_NO_CLONES)
#define SPINLM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPINLM_CLONES
#endif
#define SPINLM_INLINE inline __attribute__((always_inline))

SPINLM_INLINE vf splat(float x) { return vf{} + x; }

// Unaligned loads and stores (memcpy compiles to one vector move).
SPINLM_INLINE vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
SPINLM_INLINE vf load(const uint16_t* p) {  // bf16 -> f32 is a 16-bit shift
  vh h;
  memcpy(&h, p, sizeof h);
  vu w = __builtin_convertvector(h, vu) << 16;
  vf v;
  memcpy(&v, &w, sizeof v);
  return v;
}
SPINLM_INLINE void store(float* p, vf v) { memcpy(p, &v, sizeof v); }
// f32 -> bf16, round to nearest even, NaN kept quiet (vector form of bf16.h's f32_to_bf16).
SPINLM_INLINE void store(uint16_t* p, vf v) {
  vu u;
  memcpy(&u, &v, sizeof u);
  const vu is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu quiet = (u >> 16) | 0x40u;
  const vh h = __builtin_convertvector((rounded & ~is_nan) | (quiet & is_nan), vh);
  memcpy(p, &h, sizeof h);
}

SPINLM_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
SPINLM_INLINE float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

// Fixed pairwise order (lane i with i + 8, then i + 4, ...): deterministic, by halving the vector.
SPINLM_INLINE float hsum(vf v) {
  vf8 lo8, hi8;
  memcpy(&lo8, &v, sizeof lo8);
  memcpy(&hi8, reinterpret_cast<const char*>(&v) + sizeof lo8, sizeof hi8);
  const vf8 s8 = lo8 + hi8;
  vf4 lo4, hi4;
  memcpy(&lo4, &s8, sizeof lo4);
  memcpy(&hi4, reinterpret_cast<const char*>(&s8) + sizeof lo4, sizeof hi4);
  const vf4 s4 = lo4 + hi4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// hsum of four vectors at once, bit for bit the same additions (lane i + lane i + 8, then i + 4, then
// (0 + 2) + (1 + 3)), done in vector lanes: short dot products (a row-invariant tile at K = 512, decode
// attention's scores) would otherwise spend a large share of their time in the reduction.
SPINLM_INLINE void hsum4(vf x0, vf x1, vf x2, vf x3, float* out) {
  const vf s01 = __builtin_shufflevector(x0, x1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                 __builtin_shufflevector(x0, x1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const vf s23 = __builtin_shufflevector(x2, x3, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                 __builtin_shufflevector(x2, x3, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  // lanes 4j .. 4j + 3: the four partial sums of x_j
  const vf s4 = __builtin_shufflevector(s01, s23, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                __builtin_shufflevector(s01, s23, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  // lanes 2j, 2j + 1: s4_j[0] + s4_j[2], s4_j[1] + s4_j[3]
  const vf u = __builtin_shufflevector(s4, s4, 0, 1, 4, 5, 8, 9, 12, 13, 0, 1, 4, 5, 8, 9, 12, 13) +
               __builtin_shufflevector(s4, s4, 2, 3, 6, 7, 10, 11, 14, 15, 2, 3, 6, 7, 10, 11, 14, 15);
  const vf r = __builtin_shufflevector(u, u, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6) +
               __builtin_shufflevector(u, u, 1, 3, 5, 7, 1, 3, 5, 7, 1, 3, 5, 7, 1, 3, 5, 7);
  for (int j = 0; j < 4; ++j) out[j] = r[j];
}

// e^x for x <= 0 (callers pass x - max). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a
// degree-6 polynomial for e^r (Cephes expf coefficients; about 1 ulp). Below -87.3 the result is 0
// (e^x would be subnormal), so -inf inputs contribute exactly 0. NaN propagates.
SPINLM_INLINE vf exp_neg(vf x) {
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const vi underflow = x < splat(-87.33654f);
  const vf xc = x < splat(-87.33654f) ? splat(-87.33654f) : x;
  const vf t = xc * splat(1.44269504088896341f) + magic;
  const vf n = t - magic;
  vf r = xc - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  vi ti;
  memcpy(&ti, &t, sizeof ti);
  const vi bits = (ti - 0x4B400000) + 127;  // integer n, biased
  const vi scale_bits = bits << 23;
  vf scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  vf y = p * scale;
  vi yi;
  memcpy(&yi, &y, sizeof yi);
  yi &= ~underflow;
  memcpy(&y, &yi, sizeof y);
  return y;
}

// A float the compiler cannot treat as a constant (x86: passed through an empty asm in an SSE
// register; the asm is pure, so it is hoisted out of loops). GCC compiles `x < c ? c : x` against a
// literal splat to a compare plus a blend; against an opaque value, to one vmaxps.
SPINLM_INLINE float opaque(float c) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__("" : "+x"(c));
#endif
  return c;
}

// e^x for x <= 0: the loss kernels' exp (native/cpu/loss.cc: log-probs and their backward).
// Why two exps: this one is 11 vector instructions plus the final multiply against exp_neg's ~19
// (the exp floor, exp_throughput, runs ~1.7x faster), at up to 2 ulp instead of 1. exp_neg stays
// as it is for attention's softmax and SwiGLU (attention.cc, layers.cc), whose outputs feed
// generated text: this change leaves every generated token of a seed as it was. The loss only sums
// these values (lse) or scales them by dlogp (the backward), where 2 ulp is far below its tolerances.
// Same reduction as exp_neg (Cody-Waite: n = round(x log2 e), r = x - n ln2 with ln2 in two parts, so
// r is accurate without FMA, which the default clone lacks). Then:
//   - e^r by a degree-5 polynomial: minimax for relative error on |r| <= ln2/2 with p(0) = 1 exactly
//     (so e^0 = 1 exactly), float32 coefficients (bench/exp_fit.py: Lawson's iteration, then a search
//     over float32 neighbours; max relative error 9.2e-8 in exact arithmetic, 1.5e-7 in float32 Horner);
//   - 2^n straight from the rounding sum: tm = x log2 e + (1.5 2^23 + 127) holds n + 127 in its low
//     mantissa bits, so one shift by 23 makes the float 2^n;
//   - no underflow mask: x is clamped at -88, where n = -127 and the scale's bits are all 0 (+0). So
//     -inf (and any x < -87.68) gives exactly 0, and NaN propagates (the clamp keeps it, the product
//     passes it on).
// Measured against double exp over every float in [-87.34, 0] (1.12e9 inputs, bench/exp_error.cc):
// max relative error 1.63e-7 (2.0 ulp) built for x86-64-v4 or v3 (FMA), 1.85e-7 (2.3 ulp) for
// x86-64 (no FMA); exp_neg: 8.5e-8 (1.0 ulp).
// Unlike exp_neg, which returns 0 below -87.34 (2^-126), results for x in [-87.68, -87.34) are
// subnormal (from the final product), not 0.
SPINLM_INLINE vf exp_neg_deg5(vf x) {
  const vf lo = splat(opaque(-88.0f));
  const vf xc = x < lo ? lo : x;        // NaN compares false: kept
  const vf magic = splat(12583039.0f);  // 1.5 * 2^23 + 127
  const vf tm = xc * splat(1.44269504088896341f) + magic;
  const vf n = tm - magic;
  vf r = xc - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vf p = splat(8.290272206e-3f);
  p = p * r + splat(4.189816117e-2f);
  p = p * r + splat(1.666763872e-1f);
  p = p * r + splat(4.999914765e-1f);
  p = p * r + splat(9.999997020e-1f);
  p = p * r + splat(1.0f);
  vu bits;
  memcpy(&bits, &tm, sizeof bits);
  bits <<= 23;  // n + 127 into the exponent field; tm's high bits shift out
  vf scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace spinlm::simd
