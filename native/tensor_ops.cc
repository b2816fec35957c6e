// N-API bindings of the tensor kernels (fill, cast), for both addons (native/op_binding.h).
#include "op_binding.h"

namespace SPINLM_BIND_NS {

// fill(view, count, elementBytes 2|4, pattern): writes `count` copies of a 16- or 32-bit pattern.
Napi::Value js::fill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t count = ToInt(info[1], "count"), esize = ToInt(info[2], "elementBytes");
  const uint32_t pattern = static_cast<uint32_t>(ToInt(info[3], "pattern"));
  if (esize != 2 && esize != 4) Throw(env, "elementBytes must be 2 or 4");
  void* p = View(info[0], "tensor", CheckedMul(env, count, esize, "fill size"));
  return Run(info, [&] { kern::fill_pattern(p, count, static_cast<int>(esize), pattern); });
}

// cast(src, srcDtype, dst, dstDtype, count): f32 <-> bf16 (round to nearest even), or a copy.
Napi::Value js::cast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType sd = ToDType(info[1], "source dtype"), dd = ToDType(info[3], "destination dtype");
  const int64_t n = ToInt(info[4], "count");
  if ((sd == DType::kI32) != (dd == DType::kI32)) ThrowType(env, "cannot cast between i32 and floats");
  const void* s = View(info[0], "source", CheckedMul(env, n, dtype_size(sd), "size"));
  void* d = View(info[2], "destination", CheckedMul(env, n, dtype_size(dd), "size"));
  return Run(info, [&] { kern::cast_values(s, sd, d, dd, n); });
}

}  // namespace SPINLM_BIND_NS
