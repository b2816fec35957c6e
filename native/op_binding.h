// The op bindings are written once, in native/<family>_ops.cc, and compiled once per addon:
// - the CPU addon compiles them as they are (binding.gyp and CMakeLists.txt glob native/*.cc), in
//   namespace spinlm::napi over cpu_device.h: host buffers, native/cpu kernels, index checks on the host;
// - the CUDA addon (and its emulator build) compiles them again through cuda/ops_cuda.cc, which
//   defines SPINLM_BIND_CUDA first: namespace spinlm::cuda::bind over cuda/cuda_device.h, device
//   buffers, spinlm::cuda kernels, index checks on the device.
// A binding file uses only what both device headers give: View<T>(value, what, bytes) (the handle
// and byte-range checks), kern::<kernel>(...), Run(info, [&] { kernel call }), IndicesOutsideOnHost,
// kComputeBf16Kernel, CheckGemmDim and CheckAttentionLimits, plus the conversions of napi_util.h.
// Each binding is js::<name> for the op list's <name> (op_list.h); SetOps installs them all.
#pragma once
#include <cstdint>

#include "include/op_errors.h"

#ifdef SPINLM_BIND_CUDA
#include "cuda/cuda_device.h"
#define SPINLM_BIND_NS spinlm::cuda::bind
#else
#include "cpu_device.h"
#define SPINLM_BIND_NS spinlm::napi
#endif

namespace SPINLM_BIND_NS {

// A view, or nullptr for null / undefined (an optional tensor).
template <class T = void>
T* OptView(Napi::Value v, const char* what, int64_t bytes) {
  return v.IsNull() || v.IsUndefined() ? nullptr : View<T>(v, what, bytes);
}

// NaN into the outputs of an op whose indices are out of range.
inline void PoisonF32(float* p, int64_t n) { kern::fill_pattern(p, n, 4, 0x7fc00000u); }
inline void PoisonAny(void* p, int64_t n, DType dt) {
  kern::fill_pattern(p, n, dt == DType::kBF16 ? 2 : 4, dt == DType::kBF16 ? 0x7fc0u : 0x7fc00000u);
}

// No value may be allowed beyond an index range: an index that can never occur.
inline constexpr int64_t kNoException = INT64_MIN;

namespace js {
#define SPINLM_OP(name, method, family, params) Napi::Value name(const Napi::CallbackInfo& info);
#include "op_list.h"
#undef SPINLM_OP
}  // namespace js

// Sets every op of the op list on `exports` (the addon's exports table).
inline void SetOps(Napi::Env env, Napi::Object exports) {
#define SPINLM_OP(name, method, family, params) exports.Set(#name, Napi::Function::New(env, js::name));
#include "op_list.h"
#undef SPINLM_OP
}

}  // namespace SPINLM_BIND_NS
