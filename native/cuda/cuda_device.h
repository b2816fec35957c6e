// The CUDA side of the shared op bindings (native/op_binding.h), also used by addon_cuda.cc: device
// buffer handles and their views (tagged handles, use after free, byte ranges: the same checks as
// the CPU's), the spinlm::cuda kernels, and Run, which turns CUDA and emulator errors into JS Errors.
// Index checks are device-side (the kernels skip bad rows, poison them with NaN and raise the error
// word), so no binding reads device data.
#pragma once
#include <napi.h>

#include <cstdint>
#include <exception>
#include <string>

#include "../cpu/model_kernels.h"
#include "../napi_util.h"
#include "kernels.h"
#include "model_kernels.h"
#include "optim_kernels.h"
#include "runtime.h"

namespace spinlm::cuda::bind {

using spinlm::napi::CheckedMul;
using spinlm::napi::FloatDType;
using spinlm::napi::Throw;
using spinlm::napi::ThrowState;
using spinlm::napi::ThrowType;
using spinlm::napi::ToDouble;
using spinlm::napi::ToDType;
using spinlm::napi::ToFloat;
using spinlm::napi::ToInt;

struct DeviceBuffer {
  void* ptr;
  int64_t bytes;
};
inline constexpr napi_type_tag kDeviceTag = {0x7370696e6c6d2d63ULL, 0x7564616275663031ULL};

inline DeviceBuffer* GetBuffer(Napi::Env env, Napi::Value v, const char* what) {
  bool tagged = false;
  if (v.IsExternal()) napi_check_object_type_tag(env, v, &kDeviceTag, &tagged);
  if (!tagged) ThrowType(env, std::string(what) + " is not a spinlm CUDA buffer handle");
  DeviceBuffer* b = v.As<Napi::External<DeviceBuffer>>().Data();
  if (!b->ptr && b->bytes) ThrowState(env, std::string(what) + " was used after free()");
  return b;
}

// A view of a device buffer (napi_util.h ResolveView: the CPU addon's checks).
template <class T = void>
T* View(Napi::Value v, const char* what, int64_t bytes) {
  return spinlm::napi::ResolveView<T>(v, what, bytes, GetBuffer);
}

// The kernels the bindings call (kern::name): spinlm::cuda's, and one GEMM entry for matmulRowsMany.
namespace kern {
using namespace ::spinlm::cuda;

inline void matmul(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* a, DType adt, int64_t lda,
                   const void* b, DType bdt, int64_t ldb, float beta, float* c, int64_t ldc, bool row_invariant,
                   bool compute_bf16) {
  // bf16 compute, row-invariant (generation's linear form: a f32, b bf16, b^T): tensor cores
  // (gemm_rows_tc.cu); other bf16 forms: gemm.cu (cuBLASLt, or the tiled kernel on rounded operands)
  if (compute_bf16 && row_invariant && adt == DType::kF32 && bdt == DType::kBF16 && !ta && tb)
    return matmul_rows_tc(m, n, k, alpha, static_cast<const float*>(a), lda, static_cast<const uint16_t*>(b), ldb, beta, c, ldc);
  ::spinlm::cuda::matmul(ta, tb, m, n, k, alpha, a, adt, lda, b, bdt, ldb, beta, c, ldc, row_invariant, compute_bf16);
}
// One row-invariant GEMM launch per weight on the stream (bf16 compute: a rounded once, tensor cores).
inline void matmul_rows_many(int64_t m, int64_t k, const float* a, int64_t lda, const RowsJob* jobs, int count,
                             bool compute_bf16) {
  bool all_bf16 = compute_bf16;
  for (int i = 0; i < count; ++i) all_bf16 = all_bf16 && jobs[i].b_dt == DType::kBF16;
  if (all_bf16) {
    const RowsTcA r = rows_tc_round(m, k, a, lda);
    for (int i = 0; i < count; ++i)
      rows_tc_gemm(r, jobs[i].n, 1.0f, static_cast<const uint16_t*>(jobs[i].b), jobs[i].ldb, 0.0f, jobs[i].c, jobs[i].ldc);
    return;
  }
  for (int i = 0; i < count; ++i)
    ::spinlm::cuda::matmul(false, true, m, jobs[i].n, k, 1.0f, a, DType::kF32, lda, jobs[i].b, jobs[i].b_dt, jobs[i].ldb, 0.0f,
                           jobs[i].c, jobs[i].ldc, true, compute_bf16);
}
// attentionBackward's bf16 flag (AttentionOpts.computeDtype 'bf16'): the tensor-core kernel (flash_bwd.cu).
inline void attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans,
                               const float* out, const float* lse, const float* dout, int64_t b, int64_t l, int64_t nh, int64_t nkv,
                               int64_t hd, float scale, int64_t window, float softcap, float* dq, float* dk, float* dv, bool bf16) {
  (bf16 ? ::spinlm::cuda::flash_attention_backward : ::spinlm::cuda::attention_backward)(
      q, k, v, key_mask, spans, out, lse, dout, b, l, nh, nkv, hd, scale, window, softcap, dq, dk, dv);
}
// bf16: the tensor-core flash kernel (flash_fwd.cu), head dims checked by Bf16AttentionRefusal.
inline void attention(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
                      int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
                      float* lse, bool bf16) {
  if (bf16)
    ::spinlm::cuda::flash_attention(q, k, v, key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap, out, lse);
  else
    ::spinlm::cuda::attention(q, k, v, key_mask, spans, b, l, nh, nkv, hd, scale, window, softcap, out, lse);
}
}  // namespace kern

// Runs a kernel call after starting the backend, turning CUDA and emulator errors into JS Errors.
template <class F>
Napi::Value Run(const Napi::CallbackInfo& info, F&& kernel) {
  try {
    init();
    kernel();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    ThrowState(info.Env(), e.what());
  }
  return info.Env().Undefined();
}

// The kernels check indices on the device (docs/ops.md): nothing is read here.
inline bool IndicesOutsideOnHost(const int32_t*, int64_t, int64_t, int64_t, int64_t, uint32_t) { return false; }
// Attention spans live on the device: the kernels check them (kErrAttentionSpans).
inline bool SpansInvalidOnHost(const int32_t*, int64_t, int64_t) { return false; }

// computeBf16 is a kernel here for every form and dtype mix: generation's row-invariant linear form on
// tensor cores (gemm_rows_tc.cu), the rest in gemm.cu (cuBLASLt, or the tiled kernel on rounded operands).
inline bool ComputeBf16Kernel(bool, bool, DType, DType) { return true; }

// attentionBackward with bf16: a tensor-core kernel (flash_bwd.cu; head dims multiples of 16).
inline constexpr bool kBf16AttentionBackwardKernel = true;

// cuBLAS takes 32-bit dimensions; the tiled kernel is the fallback past them.
inline void CheckGemmDim(Napi::Env, int64_t, const char*) {}

// attention's computeDtype 'bf16' runs on tensor cores for head dims that are multiples of 16 up to 256.
inline const char* Bf16AttentionRefusal(int64_t hd) {
  return flash_attention_takes(hd) ? nullptr
                                   : "the CUDA bf16 attention kernel takes head dims that are multiples of 16 up to 256";
}

// One block per (sequence, head) tile; each lane holds hd / 32 values.
inline void CheckAttentionLimits(Napi::Env env, int64_t b, int64_t /*l*/, int64_t nh, int64_t hd) {
  if (hd > kMaxHeadDim) Throw(env, "the CUDA attention kernels take head dimensions up to " + std::to_string(kMaxHeadDim));
  if (nh > 65535 || b > 65535) Throw(env, "the CUDA attention kernels take up to 65535 heads and sequences");
}

}  // namespace spinlm::cuda::bind
