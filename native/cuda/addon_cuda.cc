// The CUDA addon: memory (alloc, free, write), status (unavailable, info) and the async reads
// (read, takeErrors). The ops of the op list (native/op_list.h) are the CPU addon's bindings
// (native/<family>_ops.cc) compiled again over device buffers and the spinlm::cuda kernels
// (ops_cuda.cc, cuda_device.h), so they have its names, arguments and checks.
// Compiled into spinlm.node as its `cuda` export when nvcc is found (the real GPU), and into
// spinlm_cuda_emu.node with the emulator's runtime (SPINLM_CUDA_EMU) for the tests.
// read() and takeErrors() return Promises: the copy is enqueued on the stream with an event, a
// worker thread waits for the event, and the Promise resolves on the main thread.
#define SPINLM_BIND_CUDA 1
#include <napi.h>

#include <cstring>
#include <string>

#include "../op_binding.h"
#include "cuda_device.h"
#include "runtime.h"

namespace spinlm::cuda::bind {
namespace {

void FinalizeDevice(Napi::Env, DeviceBuffer* b) {
  if (b->ptr) device_free(b->ptr, static_cast<size_t>(b->bytes));
  delete b;
}

// ---- status, memory ----
Napi::Value Unavailable(const Napi::CallbackInfo& info) {
  try {
    init();
    return Napi::String::New(info.Env(), "");
  } catch (const std::exception& e) {
    return Napi::String::New(info.Env(), e.what());
  }
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceInfo d;
  try {
    init();
    d = device_info();
  } catch (const std::exception& e) {
    ThrowState(env, e.what());
  }
  size_t free_b = 0, total = 0;
  cudaMemGetInfo(&free_b, &total);
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", d.name);
  o.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
  o.Set("multiprocessors", d.sms);
  o.Set("totalBytes", static_cast<double>(d.total));
  o.Set("freeBytes", static_cast<double>(free_b));
  o.Set("driverVersion", d.driver);
  o.Set("runtimeVersion", d.runtime);
  const Versions v = versions();
  o.Set("builtWithRuntime", v.built_with);
  o.Set("driverNeeded", v.driver_needed);
  o.Set("minDriver", v.min_driver);
  o.Set("cachedBytes", static_cast<double>(cached_bytes()));
  o.Set("gemm", gemm_description());
  o.Set("gemmBf16", gemm_bf16_description());
  o.Set("peakAllocatedBytes", static_cast<double>(peak_allocated_bytes()));
  o.Set("peakReservedBytes", static_cast<double>(peak_reserved_bytes()));
#ifdef SPINLM_CUDA_EMU
  o.Set("emulated", true);
#else
  o.Set("emulated", false);
#endif
  return o;
}

// alloc(bytes, op) -> handle; out of memory throws an Error naming the op, the request and free/total.
Napi::Value Alloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t bytes = ToInt(info[0], "bytes");
  const std::string op = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "a tensor";
  try {
    init();
  } catch (const std::exception& e) {
    ThrowState(env, e.what());
  }
  void* p = nullptr;
  if (bytes > 0) {
    AllocResult r = device_alloc(static_cast<size_t>(bytes));
    if (!r.ptr) ThrowState(env, op + ": " + r.error);
    p = r.ptr;
  }
  auto ext = Napi::External<DeviceBuffer>::New(env, new DeviceBuffer{p, bytes}, FinalizeDevice);
  napi_type_tag_object(env, ext, &kDeviceTag);
  return ext;
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  DeviceBuffer* b = GetBuffer(info.Env(), info[0], "buffer");
  device_free(b->ptr, static_cast<size_t>(b->bytes));
  b->ptr = nullptr;
  b->bytes = 0;
  return info.Env().Undefined();
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[1].IsTypedArray()) ThrowType(env, "host data must be a TypedArray");
  Napi::TypedArray a = info[1].As<Napi::TypedArray>();
  const int64_t bytes = static_cast<int64_t>(a.ByteLength());
  char* dev = View<char>(info[0], "tensor", bytes);
  const char* host = static_cast<const char*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  // From pageable memory the copy has left the host buffer when the call returns.
  return Run(info, [&] {
    if (bytes) check(cudaMemcpyAsync(dev, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream()), "write");
  });
}

// The completion side of read() / takeErrors(): waits for an event off the main thread.
class EventWaiter : public Napi::AsyncWorker {
 public:
  EventWaiter(Napi::Env env, cudaEvent_t ev, void* staging, size_t bytes, Napi::Reference<Napi::TypedArray> dst, bool as_number)
      : Napi::AsyncWorker(env), ev_(ev), staging_(staging), bytes_(bytes), dst_(std::move(dst)), as_number_(as_number),
        deferred_(Napi::Promise::Deferred::New(env)) {}
  ~EventWaiter() override {
    cudaEventDestroy(ev_);
    pinned_release(staging_);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    const cudaError_t e = cudaEventSynchronize(ev_);
    if (e != cudaSuccess) SetError(std::string("CUDA error while reading: ") + cudaGetErrorString(e));
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (as_number_) {
      deferred_.Resolve(Napi::Number::New(env, *static_cast<uint32_t*>(staging_)));
      return;
    }
    Napi::TypedArray a = dst_.Value();
    if (bytes_) std::memcpy(static_cast<char*>(a.ArrayBuffer().Data()) + a.ByteOffset(), staging_, bytes_);
    deferred_.Resolve(a);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  cudaEvent_t ev_;
  void* staging_;
  size_t bytes_;
  Napi::Reference<Napi::TypedArray> dst_;
  bool as_number_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value StartRead(Napi::Env env, const void* dev, size_t bytes, Napi::Value dst, bool as_number, bool clear_after) {
  void* staging = nullptr;
  cudaEvent_t ev = nullptr;
  try {
    init();
    staging = pinned_acquire(bytes ? bytes : 4);
    if (bytes) check(cudaMemcpyAsync(staging, dev, bytes, cudaMemcpyDeviceToHost, stream()), "read");
    if (clear_after) check(cudaMemsetAsync(const_cast<void*>(dev), 0, bytes, stream()), "takeErrors");
    check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "read event");
    check(cudaEventRecord(ev, stream()), "read event");
  } catch (const std::exception& e) {
    if (staging) pinned_release(staging);
    ThrowState(env, e.what());
  }
  Napi::Reference<Napi::TypedArray> ref;
  if (!as_number) ref = Napi::Persistent(dst.As<Napi::TypedArray>());
  auto* w = new EventWaiter(env, ev, staging, bytes, std::move(ref), as_number);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// read(view, dst TypedArray) -> Promise<dst>, resolved once the work issued before it is done.
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[1].IsTypedArray()) ThrowType(env, "host data must be a TypedArray");
  const int64_t bytes = static_cast<int64_t>(info[1].As<Napi::TypedArray>().ByteLength());
  const char* dev = View<char>(info[0], "tensor", bytes);
  return StartRead(env, dev, static_cast<size_t>(bytes), info[1], false, false);
}

// takeErrors() -> Promise<number>: the error word's bits since the last call (cleared on the device).
Napi::Value TakeErrors(const Napi::CallbackInfo& info) {
  try {
    init();
  } catch (const std::exception& e) {
    ThrowState(info.Env(), e.what());
  }
  return StartRead(info.Env(), error_word(), 4, info.Env().Undefined(), true, true);
}

}  // namespace

// The `cuda` object: memory, status and reads, and the ops with the CPU addon's names and arguments.
Napi::Object Exports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("abiVersion", Napi::Number::New(env, 11));  // src/backend/cuda/native.ts CUDA_ABI_VERSION
  spinlm::napi::SetFunctions(env, o, {{"unavailable", Unavailable}, {"info", Info}, {"alloc", Alloc}, {"free", Free},
                                      {"write", Write}, {"read", Read}, {"takeErrors", TakeErrors}});
  SetOps(env, o);  // the op list (op_list.h), bound in native/<family>_ops.cc (ops_cuda.cc)
  return o;
}

}  // namespace spinlm::cuda::bind

#ifdef SPINLM_CUDA_EMU
namespace spinlm::cuda::selftest {
void Register(Napi::Object exports);  // emu/selftest_emu.cc
}
// spinlm_cuda_emu.node: the `cuda` object is the module itself, plus the emulator's self-tests.
static Napi::Object InitEmu(Napi::Env env, Napi::Object exports) {
  spinlm::cuda::selftest::Register(exports);
  Napi::Object o = spinlm::cuda::bind::Exports(env);
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) exports.Set(keys.Get(i), o.Get(keys.Get(i)));
  return exports;
}
NODE_API_MODULE(spinlm_cuda_emu, InitEmu)
#else
// spinlm.node: registered into the CPU addon's exports as `cuda`.
namespace {
void RegisterCuda(Napi::Env env, Napi::Object exports) { exports.Set("cuda", spinlm::cuda::bind::Exports(env)); }
spinlm::napi::OpRegistrar reg(RegisterCuda);
}  // namespace
#endif
