// N-API helpers: argument conversion and checks shared by both addons' bindings (native/op_binding.h),
// and the CPU addon's buffer handles and views. A module compiled into spinlm.node beside the CPU
// addon (the CUDA addon, when nvcc builds it) adds its exports with a static OpRegistrar.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
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

// Resolves a tensor view { handle, byteOffset } of either addon, whose handle `get_buffer` turns into
// a buffer { ptr, bytes } (checking its tag and use after free), and checks that `bytes` bytes fit in
// the buffer at that offset: no call from JS reaches memory outside a buffer.
template <class T, class Buffer>
T* ResolveView(Napi::Value v, const char* what, int64_t bytes, Buffer* (*get_buffer)(Napi::Env, Napi::Value, const char*)) {
  Napi::Env env = v.Env();
  if (!v.IsObject()) ThrowType(env, std::string(what) + " must be a tensor view { handle, byteOffset }");
  Napi::Object o = v.As<Napi::Object>();
  Buffer* b = get_buffer(env, o.Get("handle"), what);
  const int64_t off = ToInt(o.Get("byteOffset"), "byteOffset");
  if (off > b->bytes || bytes > b->bytes - off)
    Throw(env, std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " + std::to_string(off) +
                   " overrun its buffer of " + std::to_string(b->bytes) + " bytes");
  return reinterpret_cast<T*>(static_cast<char*>(b->ptr) + off);
}

// A view of a CPU buffer (host memory).
template <class T = void>
T* View(Napi::Value v, const char* what, int64_t bytes) {
  return ResolveView<T>(v, what, bytes, GetBuffer);
}

// Sets named functions on an addon's exports object.
using Binding = Napi::Value (*)(const Napi::CallbackInfo&);
inline void SetFunctions(Napi::Env env, Napi::Object exports, std::initializer_list<std::pair<const char*, Binding>> fns) {
  for (const auto& [name, fn] : fns) exports.Set(name, Napi::Function::New(env, fn));
}

// A finite number, as f32.
inline float ToFloat(Napi::Value v, const char* what) {
  if (!v.IsNumber()) ThrowType(v.Env(), std::string(what) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) Throw(v.Env(), std::string(what) + " must be finite");
  return static_cast<float>(d);
}

// Any number (NaN and infinities included: the kernel or the op layer decides).
inline double ToDouble(Napi::Value v, const char* what) {
  if (!v.IsNumber()) ThrowType(v.Env(), std::string(what) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// f32 or bf16.
inline DType FloatDType(Napi::Value v, const char* what) {
  const DType d = ToDType(v, what);
  if (d == DType::kI32) ThrowType(v.Env(), std::string(what) + " must be f32 or bf16");
  return d;
}

inline int64_t CheckedMul(Napi::Env env, int64_t a, int64_t b, const char* what) {
  if (a != 0 && b > INT64_MAX / a) Throw(env, std::string(what) + " overflows 64 bits");
  return a * b;
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
