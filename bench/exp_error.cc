// Error of the CPU kernels' vector exps (native/cpu/simd.h) against double exp, over every float in
// [-87.34, 0] (1.12e9 inputs; below -87.34 e^x is under 2^-126), plus special inputs. Build and run:
//   g++ -std=c++17 -O3 -fno-math-errno -march=x86-64-v4 -Inative bench/exp_error.cc -o /tmp/exp_error
//   /tmp/exp_error          (~25 s; -march=x86-64-v3 or x86-64 for the other clones' arithmetic)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "cpu/simd.h"
using spinlm::simd::vf;

// ulp of the float nearest e (normal range)
static double ulp_of(double e) {
  int ex;
  std::frexp(static_cast<float>(e), &ex);
  return std::ldexp(1.0, ex - 24);
}

template <class F>
static void sweep(const char* name, F fn) {
  const float lo = -87.33654f;
  uint32_t last;
  memcpy(&last, &lo, 4);
  double max_rel = 0, max_ulp = 0, sum_rel = 0;
  float at_rel = 0, at_ulp = 0;
  uint64_t count = 0;
  alignas(64) float in[16], out[16];
  for (uint64_t b = 0x80000000u; b <= last; b += 16) {  // -0 down to lo: increasing bit patterns
    for (int i = 0; i < 16; ++i) {
      const uint32_t u = static_cast<uint32_t>(std::min<uint64_t>(b + i, last));
      memcpy(&in[i], &u, 4);
    }
    spinlm::simd::store(out, fn(spinlm::simd::load(in)));
    for (int i = 0; i < 16 && b + i <= last; ++i) {
      const double e = std::exp(static_cast<double>(in[i]));
      const double rel = std::fabs(out[i] - e) / e, ulp = std::fabs(out[i] - e) / ulp_of(e);
      sum_rel += rel;
      ++count;
      if (rel > max_rel) max_rel = rel, at_rel = in[i];
      if (ulp > max_ulp) max_ulp = ulp, at_ulp = in[i];
    }
  }
  printf("%-13s %llu inputs: max relative error %.3e (x = %.9g), max %.3f ulp (x = %.9g), mean %.2e\n", name,
         static_cast<unsigned long long>(count), max_rel, at_rel, max_ulp, at_ulp, sum_rel / count);
}

int main() {
  sweep("exp_neg", [](vf x) { return spinlm::simd::exp_neg(x); });
  sweep("exp_neg_deg5", [](vf x) { return spinlm::simd::exp_neg_deg5(x); });
  alignas(64) float sp[16] = {-INFINITY, NAN,    -0.0f, 0.0f,   -88.0f, -87.7f, -87.68f, -87.5f,
                              -87.34f,   -87.33654f, -100.0f, -1e30f, -3.4e38f, 1e-7f,  -1e-45f, -0.5f};
  alignas(64) float a[16], b[16];
  spinlm::simd::store(a, spinlm::simd::exp_neg(spinlm::simd::load(sp)));
  spinlm::simd::store(b, spinlm::simd::exp_neg_deg5(spinlm::simd::load(sp)));
  for (int i = 0; i < 16; ++i)
    printf("x = %-12g exp %-14.9g exp_neg %-14.9g exp_neg_deg5 %-14.9g\n", sp[i], std::exp(static_cast<double>(sp[i])),
           a[i], b[i]);
}
