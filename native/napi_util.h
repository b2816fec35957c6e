// N-API helpers shared by every op file: buffer handles, argument conversion and bounds checks.
// Each op file registers its functions at load time with a static OpRegistrar; addon.cc's Init
// installs every registered family, so adding an op file never touches addon.cc.
#pragma once
#include <napi.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/memory.h"

namespace spinlm::napi {

using spinlm::DType;

using spinlm::HostBuffer;

// Tags the External so a foreign object can never be taken for a buffer.
inline constexpr napi_type_tag kBufferTag = {0x7370696e6c6d2d62ULL, 0x7566666572763031ULL};

inline void FinalizeBuffer(Napi::Env env, HostBuffer* b) {
  if (b->ptr) {
    spinlm::host_free(b->ptr, b->bytes);
    Napi::MemoryManagement::AdjustExternalMemory(env, -b->bytes);
  }
  delete b;
}

// Error classes follow Node's: ThrowType (TypeError) for an argument of the wrong kind (not a number,
// not a buffer handle, not an object, an unknown dtype or enum name, a dtype the op does not take);
// Throw (RangeError) for a value outside what is allowed (sizes, indices, overruns, non-finite numbers);
// ThrowState (Error) for an object in the wrong state (a buffer used after free()).
[[noreturn]] inline void Throw(Napi::Env env, const std::string& msg) {
  throw Napi::RangeError::New(env, "spinlm native: " + msg);
}
[[noreturn]] inline void ThrowType(Napi::Env env, const std::string& msg) {
  throw Napi::TypeError::New(env, "spinlm native: " + msg);
}
[[noreturn]] inline void ThrowState(Napi::Env env, const std::string& msg) {
  throw Napi::Error::New(env, "spinlm native: " + msg);
}

inline HostBuffer* GetBuffer(Napi::Env env, Napi::Value v, const char* what) {
  bool tagged = false;
  if (v.IsExternal()) napi_check_object_type_tag(env, v, &kBufferTag, &tagged);
  if (!tagged) ThrowType(env, std::string(what) + " is not a spinlm buffer handle");
  HostBuffer* b = v.As<Napi::External<HostBuffer>>().Data();
  if (!b->ptr) ThrowState(env, std::string(what) + " was used after free()");
  return b;
}

inline int64_t ToInt(Napi::Value v, const char* what) {
  if (!v.IsNumber()) ThrowType(v.Env(), std::string(what) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<int64_t>(d)))
    Throw(v.Env(), std::string(what) + " must be a non-negative integer, got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

inline DType ToDType(Napi::Value v, const char* what) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "f32") return DType::kF32;
  if (s == "bf16") return DType::kBF16;
  if (s == "i32") return DType::kI32;
  ThrowType(v.Env(), std::string(what) + " must be 'f32', 'bf16' or 'i32'");
}

// Resolves a tensor view { handle, byteOffset } and checks that `bytes` bytes fit in its buffer.
template <class T = void>
T* View(Napi::Value v, const char* what, int64_t bytes) {
  Napi::Env env = v.Env();
  if (!v.IsObject()) ThrowType(env, std::string(what) + " must be a tensor view { handle, byteOffset }");
  Napi::Object o = v.As<Napi::Object>();
  HostBuffer* b = GetBuffer(env, o.Get("handle"), what);
  const int64_t off = ToInt(o.Get("byteOffset"), "byteOffset");
  if (off > b->bytes || bytes > b->bytes - off)
    Throw(env, std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " +
                   std::to_string(off) + " overrun its buffer of " + std::to_string(b->bytes) +
                   " bytes");
  return reinterpret_cast<T*>(static_cast<char*>(b->ptr) + off);
}

inline int64_t CheckedMul(Napi::Env env, int64_t a, int64_t b, const char* what) {
  if (a != 0 && b > INT64_MAX / a) Throw(env, std::string(what) + " overflows 64 bits");
  return a * b;
}

// The arguments of matmulRowsMany(m, k, a, lda, bs, bDtypes, ns, outs) (the fused linear layers),
// parsed the same way by the CPU and the CUDA addon; `view(value, what, bytes)` resolves a tensor
// view of that addon's buffers and checks its bytes. Every B is [n, k] and every out [m, n], contiguous.
struct RowsManyJob {
  const void* b;
  DType dt;
  int64_t n;
  float* out;
};
struct RowsManyArgs {
  int64_t m, k, lda;
  const float* a;
  std::vector<RowsManyJob> jobs;
};
template <class ViewFn>
RowsManyArgs ParseRowsMany(const Napi::CallbackInfo& info, ViewFn view) {
  Napi::Env env = info.Env();
  RowsManyArgs r{ToInt(info[0], "m"), ToInt(info[1], "k"), ToInt(info[3], "lda"), nullptr, {}};
  if (r.lda < std::max<int64_t>(1, r.k)) Throw(env, "matmulRowsMany: lda is smaller than a row of a");
  for (int i = 4; i < 8; ++i)
    if (!info[i].IsArray()) ThrowType(env, "matmulRowsMany: bs, bDtypes, ns and outs must be arrays");
  const Napi::Array bs = info[4].As<Napi::Array>(), dts = info[5].As<Napi::Array>(), ns = info[6].As<Napi::Array>(),
                    outs = info[7].As<Napi::Array>();
  const uint32_t count = bs.Length();
  if (count == 0 || count > 16 || dts.Length() != count || ns.Length() != count || outs.Length() != count)
    Throw(env, "matmulRowsMany: bs, bDtypes, ns and outs need the same length, 1 to 16");
  r.a = static_cast<const float*>(view(info[2], "a", r.m == 0 ? 0 : CheckedMul(env, r.m - 1, r.lda, "a bytes") * 4 + r.k * 4));
  for (uint32_t i = 0; i < count; ++i) {
    const DType dt = ToDType(dts.Get(i), "b dtype");
    if (dt == DType::kI32) ThrowType(env, "b dtype must be f32 or bf16");
    const int64_t n = ToInt(ns.Get(i), "n");
    r.jobs.push_back({view(bs.Get(i), "b", CheckedMul(env, n, r.k * dtype_size(dt), "b bytes")), dt, n,
                      static_cast<float*>(view(outs.Get(i), "out", CheckedMul(env, r.m, n * 4, "out bytes")))});
  }
  return r;
}

using RegisterFn = void (*)(Napi::Env env, Napi::Object exports);

inline std::vector<RegisterFn>& op_registry() {
  static std::vector<RegisterFn> fns;
  return fns;
}

// `static OpRegistrar reg(RegisterMyOps);` at namespace scope in an op file.
struct OpRegistrar {
  explicit OpRegistrar(RegisterFn fn) { op_registry().push_back(fn); }
};

}  // namespace spinlm::napi
