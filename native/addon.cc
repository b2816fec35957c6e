// The one N-API module of spinlm. Device memory for the CPU backend is native, 64-byte aligned and
// owned by an External handle (freed explicitly by free() or by the GC finalizer). This file holds
// memory, reads and the CPU's probes; the ops of the op list (op_list.h) are bound in
// native/<family>_ops.cc, shared with the CUDA addon (op_binding.h). Kernels take tensors as JS
// objects { handle, byteOffset }; every call checks handles, sizes and bounds (and the CPU checks
// index values on the host), so a bad call from JS throws a clear error instead of crashing the process.
#include <cblas.h>
#include <napi.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "include/bf16.h"
#include "cpu/kernels.h"
#include "cpu/threadpool.h"
#include "napi_util.h"
#include "op_binding.h"

namespace {

using namespace spinlm::napi;

Napi::Value Alloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t bytes = ToInt(info[0], "bytes");
  void* p = spinlm::host_alloc(bytes);
  if (!p) Throw(env, "out of memory allocating " + std::to_string(bytes) + " bytes");
  Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  auto ext = Napi::External<HostBuffer>::New(env, new HostBuffer{p, bytes}, FinalizeBuffer);
  napi_type_tag_object(env, ext, &kBufferTag);
  return ext;
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  HostBuffer* b = GetBuffer(info.Env(), info[0], "buffer");
  spinlm::host_free(b->ptr, b->bytes);
  Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -b->bytes);
  b->ptr = nullptr;
  return info.Env().Undefined();
}

// write(view, src TypedArray): host -> buffer; read(view, dst TypedArray): buffer -> host.
Napi::Value Copy(const Napi::CallbackInfo& info, bool to_device) {
  Napi::Env env = info.Env();
  if (!info[1].IsTypedArray()) ThrowType(env, "host data must be a TypedArray");
  Napi::TypedArray a = info[1].As<Napi::TypedArray>();
  const int64_t bytes = static_cast<int64_t>(a.ByteLength());
  char* dev = View<char>(info[0], "tensor", bytes);
  char* host = static_cast<char*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  if (bytes > 0) {
    if (to_device) std::memcpy(dev, host, bytes);
    else std::memcpy(host, dev, bytes);
  }
  return env.Undefined();
}
Napi::Value Write(const Napi::CallbackInfo& info) { return Copy(info, true); }
Napi::Value Read(const Napi::CallbackInfo& info) { return Copy(info, false); }

// takeErrors() -> the device error word's bits since the last call (and clears them).
Napi::Value TakeErrors(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(spinlm::take_op_errors()));
}

Napi::Value StreamRead(const Napi::CallbackInfo& info) {
  const int64_t bytes = ToInt(info[1], "bytes");
  const void* p = View(info[0], "tensor", bytes);
  return Napi::Number::New(info.Env(), spinlm::stream_read(p, bytes));
}

// expThroughput(count, exp = 'loss'): 'loss' is the loss kernels' exp, 'cephes' the one they used before.
Napi::Value ExpThroughput(const Napi::CallbackInfo& info) {
  const std::string exp = info[1].IsUndefined() ? "loss" : info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  if (exp != "loss" && exp != "cephes") ThrowType(info.Env(), "exp must be 'loss' or 'cephes'");
  return Napi::Number::New(info.Env(), spinlm::exp_throughput(ToInt(info[0], "count"), exp == "cephes"));
}

// rowOffset(row, cols) -> BigInt: the kernels' element-offset math, exposed so tests can check it
// past 2^31 without allocating such a tensor.
Napi::Value RowOffset(const Napi::CallbackInfo& info) {
  return Napi::BigInt::New(info.Env(), spinlm::row_offset(ToInt(info[0], "row"), ToInt(info[1], "cols")));
}

// cachedBytes(): how much freed memory is held for reuse.
Napi::Value CachedBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(spinlm::host_cached_bytes()));
}

// releaseCached(): gives the blocks held for reuse back to the system.
Napi::Value ReleaseCached(const Napi::CallbackInfo& info) {
  spinlm::host_release_cached();
  return info.Env().Undefined();
}

// liveBytes(): bytes of the tensors allocated and not yet freed (the allocator's counter; per-rank
// memory tests and spinlm's ZeRO memory report read it).
Napi::Value LiveBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(spinlm::host_live_bytes()));
}

// peakLiveBytes(reset) -> the most liveBytes() has been since the last reset; with `reset`, starts
// again from the bytes live now (memory probes find which phase of a step holds the peak).
Napi::Value PeakLiveBytes(const Napi::CallbackInfo& info) {
  const bool reset = info.Length() > 0 && info[0].ToBoolean().Value();
  return Napi::Number::New(info.Env(), static_cast<double>(spinlm::host_peak_live_bytes(reset)));
}

Napi::Value NumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), spinlm::num_threads());
}
Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  spinlm::set_num_threads(static_cast<int>(ToInt(info[0], "threads")));
  return info.Env().Undefined();
}

// The kernel set OpenBLAS picked when it loaded (OPENBLAS_CORETYPE overrides it; the benchmarks report it).
Napi::Value BlasCore(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), openblas_get_corename()); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, 15));  // src/backend/native/addon.ts ABI_VERSION
  SetFunctions(env, exports, {{"alloc", Alloc}, {"free", Free}, {"write", Write}, {"read", Read}, {"takeErrors", TakeErrors}});
  // benchmark probes, host memory, threads, OpenBLAS
  SetFunctions(env, exports, {{"streamRead", StreamRead}, {"expThroughput", ExpThroughput}, {"rowOffset", RowOffset},
                              {"cachedBytes", CachedBytes}, {"liveBytes", LiveBytes}, {"releaseCached", ReleaseCached},
                              {"peakLiveBytes", PeakLiveBytes}, {"numThreads", NumThreads}, {"setNumThreads", SetNumThreads},
                              {"blasCore", BlasCore}});
  SetOps(env, exports);  // the op list (op_list.h): bindings in native/<family>_ops.cc
  for (RegisterFn fn : op_registry()) fn(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(spinlm, Init)
