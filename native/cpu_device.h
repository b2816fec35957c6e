// The CPU side of the shared op bindings (native/op_binding.h): what the bindings in
// native/<family>_ops.cc call that differs between the two addons. Views are host buffers
// (napi_util.h View: tagged handles, use after free, byte ranges), kernels are native/cpu's, and
// index tensors are checked here on the host before the kernel runs: an op whose indices are out of
// range does not run its kernel (no read or write outside a buffer), poisons its outputs with NaN and
// raises its bit in the device error word (native/include/op_errors.h); the next read() on the host
// throws an error naming the op. The CUDA side (cuda/cuda_device.h) does the same on the device.
#pragma once
#include <napi.h>

#include <cstdint>
#include <limits>
#include <string>

#include "cpu/kernels.h"
#include "cpu/model_kernels.h"
#include "cpu/optim_kernels.h"
#include "include/op_errors.h"
#include "napi_util.h"

namespace spinlm::napi {

// The kernels the bindings call (kern::name). Where the CUDA kernels take more arguments (the ranges
// they check indices against on the device, the row-invariant and bf16 flags of one GEMM entry),
// these adapters take the same and call native/cpu's.
namespace kern {
using namespace ::spinlm;

// a is f32 here (ComputeBf16Kernel refuses a bf16 a before the call).
inline void matmul(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* av, DType /*adt*/, int64_t lda,
                   const void* b, DType bdt, int64_t ldb, float beta, float* c, int64_t ldc, bool row_invariant,
                   bool compute_bf16) {
  const float* a = static_cast<const float*>(av);
  if (row_invariant || compute_bf16) ::spinlm::matmul_rows(m, n, k, alpha, a, lda, b, bdt, ldb, beta, c, ldc, compute_bf16);
  else ::spinlm::matmul(ta, tb, m, n, k, alpha, a, lda, b, bdt, ldb, beta, c, ldc);
}
inline void embedding(const int32_t* ids, int64_t t, const void* table, DType dt, int64_t /*vocab*/, int64_t h, float* out) {
  ::spinlm::embedding(ids, t, table, dt, h, out);
}
inline void embedding_backward(const int32_t* ids, int64_t t, const float* dout, int64_t /*vocab*/, int64_t h, float* dtable) {
  ::spinlm::embedding_backward(ids, t, dout, h, dtable);
}
inline void scatter_rows(const float* src, const int32_t* index, int64_t rows, int64_t cols, void* dst, DType dst_dt,
                         int64_t /*dst_rows*/) {
  ::spinlm::scatter_rows(src, index, rows, cols, dst, dst_dt);
}
// bf16: refused by the binding (kBf16AttentionBackwardKernel).
inline void attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans,
                               const float* out, const float* lse, const float* dout, int64_t b, int64_t l, int64_t nh, int64_t nkv,
                               int64_t hd, float scale, int64_t window, float softcap, float* dq, float* dk, float* dv, bool /*bf16*/) {
  ::spinlm::attention_backward(q, k, v, key_mask, spans, out, lse, dout, b, l, nh, nkv, hd, scale, window, softcap, dq, dk, dv);
}
// attention's bf16 flag is refused by the binding (Bf16AttentionRefusal): the f32 kernel.
inline void attention(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
                      int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
                      float* lse, bool /*bf16*/) {
  ::spinlm::attention(q, k, v, key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap, out, lse);
}
}  // namespace kern

// Runs a kernel call (the CPU kernels report nothing: every precondition was checked above them).
template <class F>
Napi::Value Run(const Napi::CallbackInfo& info, F&& kernel) {
  kernel();
  return info.Env().Undefined();
}

// True (and `bit` raised) when some ids[i] is outside [lo, hi) and is not `allowed`.
inline bool IndicesOutsideOnHost(const int32_t* ids, int64_t n, int64_t lo, int64_t hi, int64_t allowed, uint32_t bit) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t x = ids[i];
    if (x != allowed && (x < lo || x >= hi)) {
      raise_op_error(bit);
      return true;
    }
  }
  return false;
}

// Attention spans (lo, hideLo, hideHi) per query i of b rows x l positions must satisfy
// 0 <= lo <= hideLo <= hideHi <= i (AttentionOpts.spans); raises kErrAttentionSpans if not.
inline bool SpansInvalidOnHost(const int32_t* spans, int64_t b, int64_t l) {
  if (!spans) return false;
  for (int64_t r = 0; r < b * l; ++r) {
    const int64_t i = r % l, lo = spans[3 * r], hlo = spans[3 * r + 1], hhi = spans[3 * r + 2];
    if (!(0 <= lo && lo <= hlo && hlo <= hhi && hhi <= i)) {
      raise_op_error(kErrAttentionSpans);
      return true;
    }
  }
  return false;
}

// computeBf16 is a kernel here for the linear layer form with an f32 a and a bf16 b (gemm_rows.cc);
// bf16_compute.ts rounds the operands of every other form and runs the f32 GEMM.
inline bool ComputeBf16Kernel(bool ta, bool tb, DType adt, DType bdt) {
  return !ta && tb && adt == DType::kF32 && bdt == DType::kBF16;
}

// attentionBackward with bf16 is no kernel here: bf16_compute.ts rounds q, k, v, dout and runs the f32 one.
inline constexpr bool kBf16AttentionBackwardKernel = false;

// cblas takes int dimensions.
inline void CheckGemmDim(Napi::Env env, int64_t x, const char* what) {
  if (x > std::numeric_limits<int>::max()) Throw(env, std::string(what) + " is too large for BLAS (> 2^31 - 1)");
}

// attention's computeDtype 'bf16' has no CPU kernel: the backend rounds q, k, v and runs the f32 one.
inline const char* Bf16AttentionRefusal(int64_t /*hd*/) {
  return "the CPU attention kernel is f32 only: computeDtype 'bf16' rounds q, k, v first (src/backend/bf16_compute.ts)";
}

// The attention kernels run strided sgemm calls over [l, nh * hd] rows.
inline void CheckAttentionLimits(Napi::Env env, int64_t /*b*/, int64_t l, int64_t nh, int64_t hd) {
  CheckGemmDim(env, l * nh * hd, "length x heads x headDim");
}

}  // namespace spinlm::napi
