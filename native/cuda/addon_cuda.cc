// N-API bindings of the CUDA backend: the same functions, argument orders and checks as the CPU
// bindings (native/addon.cc, model_ops.cc, optim_ops.cc, sample_ops.cc), over device buffers.
// Compiled into spinlm.node as its `cuda` export when nvcc is found (the real GPU), and into
// spinlm_cuda_emu.node with the emulator's runtime (SPINLM_CUDA_EMU) for the tests.
// Index checks are device-side (the kernels skip bad rows, poison them with NaN and raise the
// error word), so no binding reads device data. read() and takeErrors() return Promises: the copy
// is enqueued on the stream with an event, a worker thread waits for the event, and the Promise
// resolves on the main thread.
#include <napi.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../napi_util.h"
#include "kernels.h"
#include "model_kernels.h"
#include "optim_kernels.h"
#include "runtime.h"

namespace spinlm::cuda::bind {
namespace {

using spinlm::napi::CheckedMul;
using spinlm::napi::Throw;
using spinlm::napi::ThrowState;
using spinlm::napi::ThrowType;
using spinlm::napi::ToDType;
using spinlm::napi::ToInt;

struct DeviceBuffer {
  void* ptr;
  int64_t bytes;
};
constexpr napi_type_tag kDeviceTag = {0x7370696e6c6d2d63ULL, 0x7564616275663031ULL};

void FinalizeDevice(Napi::Env, DeviceBuffer* b) {
  if (b->ptr) device_free(b->ptr, static_cast<size_t>(b->bytes));
  delete b;
}

DeviceBuffer* GetBuffer(Napi::Env env, Napi::Value v, const char* what) {
  bool tagged = false;
  if (v.IsExternal()) napi_check_object_type_tag(env, v, &kDeviceTag, &tagged);
  if (!tagged) ThrowType(env, std::string(what) + " is not a spinlm CUDA buffer handle");
  DeviceBuffer* b = v.As<Napi::External<DeviceBuffer>>().Data();
  if (!b->ptr && b->bytes) ThrowState(env, std::string(what) + " was used after free()");
  return b;
}

template <class T = void>
T* View(Napi::Value v, const char* what, int64_t bytes) {
  Napi::Env env = v.Env();
  if (!v.IsObject()) ThrowType(env, std::string(what) + " must be a tensor view { handle, byteOffset }");
  Napi::Object o = v.As<Napi::Object>();
  DeviceBuffer* b = GetBuffer(env, o.Get("handle"), what);
  const int64_t off = ToInt(o.Get("byteOffset"), "byteOffset");
  if (off > b->bytes || bytes > b->bytes - off)
    Throw(env, std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " + std::to_string(off) +
                   " overrun its buffer of " + std::to_string(b->bytes) + " bytes");
  return reinterpret_cast<T*>(static_cast<char*>(b->ptr) + off);
}

template <class T = void>
T* OptView(Napi::Value v, const char* what, int64_t bytes) {
  return v.IsNull() || v.IsUndefined() ? nullptr : View<T>(v, what, bytes);
}

float ToFloat(Napi::Value v, const char* what) {
  if (!v.IsNumber()) ThrowType(v.Env(), std::string(what) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) Throw(v.Env(), std::string(what) + " must be finite");
  return static_cast<float>(d);
}
double ToDouble(Napi::Value v, const char* what) {
  if (!v.IsNumber()) ThrowType(v.Env(), std::string(what) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
DType FloatDType(Napi::Value v, const char* what) {
  const DType d = ToDType(v, what);
  if (d == DType::kI32) ThrowType(v.Env(), std::string(what) + " must be f32 or bf16");
  return d;
}

// Runs a binding body, turning CUDA and emulator errors into JS Errors.
template <class F>
Napi::Value Guard(const Napi::CallbackInfo& info, F&& f) {
  try {
    init();
    f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    ThrowState(info.Env(), e.what());
  }
  return info.Env().Undefined();
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
  o.Set("cachedBytes", static_cast<double>(cached_bytes()));
  o.Set("gemm", gemm_description());
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
  return Guard(info, [&] {
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
    cudaFreeHost(staging_);
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
    check(cudaMallocHost(&staging, bytes ? bytes : 4), "read staging");
    if (bytes) check(cudaMemcpyAsync(staging, dev, bytes, cudaMemcpyDeviceToHost, stream()), "read");
    if (clear_after) check(cudaMemsetAsync(const_cast<void*>(dev), 0, bytes, stream()), "takeErrors");
    check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "read event");
    check(cudaEventRecord(ev, stream()), "read event");
  } catch (const std::exception& e) {
    if (staging) cudaFreeHost(staging);
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

Napi::Value Fill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t count = ToInt(info[1], "count"), esize = ToInt(info[2], "elementBytes");
  const uint32_t pattern = static_cast<uint32_t>(ToInt(info[3], "pattern"));
  if (esize != 2 && esize != 4) Throw(env, "elementBytes must be 2 or 4");
  void* p = View(info[0], "tensor", CheckedMul(env, count, esize, "fill size"));
  return Guard(info, [&] { spinlm::cuda::fill_pattern(p, count, static_cast<int>(esize), pattern); });
}

Napi::Value Cast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType sd = ToDType(info[1], "source dtype"), dd = ToDType(info[3], "destination dtype");
  const int64_t n = ToInt(info[4], "count");
  if ((sd == DType::kI32) != (dd == DType::kI32)) ThrowType(env, "cannot cast between i32 and floats");
  const void* s = View(info[0], "source", CheckedMul(env, n, dtype_size(sd), "size"));
  void* d = View(info[2], "destination", CheckedMul(env, n, dtype_size(dd), "size"));
  return Guard(info, [&] { spinlm::cuda::cast_values(s, sd, d, dd, n); });
}

// ---- the loss family ----
Napi::Value LogprobGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = FloatDType(info[1], "logits dtype");
  const int64_t n = ToInt(info[2], "n"), v = ToInt(info[3], "v");
  if (n > 0 && v == 0) Throw(env, "vocabulary size must be at least 1");
  const void* z = View(info[0], "logits", CheckedMul(env, CheckedMul(env, n, v, "n * v"), dtype_size(dt), "logits bytes"));
  const int32_t* t = View<int32_t>(info[4], "targets", n * 4);
  float* logp = View<float>(info[5], "logp", n * 4);
  float* lse = View<float>(info[6], "lse", n * 4);
  return Guard(info, [&] { spinlm::cuda::logprob_gather(z, dt, n, v, t, logp, lse); });
}

Napi::Value LogprobGatherBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = FloatDType(info[1], "logits dtype"), od = FloatDType(info[8], "dlogits dtype");
  const int64_t n = ToInt(info[2], "n"), v = ToInt(info[3], "v");
  if (n > 0 && v == 0) Throw(env, "vocabulary size must be at least 1");
  const int64_t nv = CheckedMul(env, n, v, "n * v");
  const char* z = View<char>(info[0], "logits", CheckedMul(env, nv, dtype_size(dt), "bytes"));
  const int32_t* t = View<int32_t>(info[4], "targets", n * 4);
  const float* lse = View<float>(info[5], "lse", n * 4);
  const float* dlogp = View<float>(info[6], "dlogp", n * 4);
  char* out = View<char>(info[7], "dlogits", CheckedMul(env, nv, dtype_size(od), "bytes"));
  const char* zend = z + nv * dtype_size(dt);
  const char* oend = out + nv * dtype_size(od);
  if (nv > 0 && out < zend && z < oend && (out != z || od != dt))
    Throw(env, "dlogits overlaps logits without being exactly in place with the same dtype");
  return Guard(info, [&] { spinlm::cuda::logprob_gather_backward(z, dt, n, v, t, lse, dlogp, out, od); });
}

Napi::Value SequenceLogprob(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n"), s = ToInt(info[3], "numSeqs");
  const float* logp = View<float>(info[0], "logp", n * 4);
  const int32_t* seg = View<int32_t>(info[1], "segments", n * 4);
  float* out = View<float>(info[4], "out", s * 4);
  return Guard(info, [&] { spinlm::cuda::sequence_logprob(logp, seg, n, s, out); });
}

Napi::Value SequenceLogprobBackward(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n"), s = ToInt(info[3], "numSeqs");
  const float* dseq = View<float>(info[0], "dseq", s * 4);
  const int32_t* seg = View<int32_t>(info[1], "segments", n * 4);
  float* dlogp = View<float>(info[4], "dlogp", n * 4);
  return Guard(info, [&] { spinlm::cuda::sequence_logprob_backward(dseq, seg, n, s, dlogp); });
}

Napi::Value SpinLoss(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t b = ToInt(info[3], "batch");
  const double beta = ToDouble(info[4], "beta");
  const std::string type = info[5].IsString() ? info[5].As<Napi::String>().Utf8Value() : "";
  SpinLossType loss_type;
  if (!spinlm::parse_spin_loss_type(type.c_str(), &loss_type))
    ThrowType(env, std::string("loss type must be ") + spinlm::kSpinLossNamesList);
  const float* policy = View<float>(info[0], "policy", b * 8);
  const float* ref = View<float>(info[1], "ref", b * 8);
  const float* mask = OptView<float>(info[2], "pairMask", b * 4);
  const double nll_alpha = info[6].IsNumber() ? info[6].As<Napi::Number>().DoubleValue() : 0.0;
  if (!std::isfinite(nll_alpha) || nll_alpha < 0) Throw(env, "nllAlpha must be a finite number >= 0");
  const float* answer_tokens = OptView<float>(info[7], "answerTokens", b * 4);
  if (nll_alpha != 0.0 && !answer_tokens) Throw(env, "nllAlpha > 0 needs the real answers' token counts");
  const float grad_scale = static_cast<float>(ToDouble(info[8], "gradScale"));
  float* per_pair = View<float>(info[9], "perPair", b * 7 * 4);
  float* means = View<float>(info[10], "means", 8 * 4);
  float* dseq = View<float>(info[11], "dseq", b * 8);
  return Guard(info, [&] {
    spinlm::cuda::spin_loss(policy, ref, mask, b, beta, loss_type, nll_alpha, answer_tokens, grad_scale, per_pair, means, dseq);
  });
}

// ---- optimizer ----
double Field(Napi::Object o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) ThrowType(o.Env(), std::string("optimizer hyperparameter '") + name + "' must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) Throw(o.Env(), std::string("optimizer hyperparameter '") + name + "' must be finite");
  return d;
}

struct StepArgs {
  void* param;
  DType dt;
  float* master;
  const float* grad;
  const float* grad_scale;
  int64_t n;
};

StepArgs Common(const Napi::CallbackInfo& info, size_t scale_index) {
  Napi::Env env = info.Env();
  StepArgs a;
  a.dt = FloatDType(info[1], "param dtype");
  a.n = ToInt(info[4], "n");
  a.param = View(info[0], "param", CheckedMul(env, a.n, dtype_size(a.dt), "param bytes"));
  a.master = OptView<float>(info[2], "master", a.n * 4);
  if (!a.master && a.dt == DType::kBF16) ThrowType(env, "a bf16 parameter needs an f32 master copy");
  a.grad = View<float>(info[3], "grad", a.n * 4);
  const float* clip = OptView<float>(info[scale_index], "clip", 8);
  a.grad_scale = clip ? clip + 1 : nullptr;
  return a;
}

Napi::Value RmspropStep(const Napi::CallbackInfo& info) {
  const StepArgs a = Common(info, 7);
  float* sq = View<float>(info[5], "squareAvg", a.n * 4);
  if (!info[6].IsObject()) ThrowType(info.Env(), "rmsprop hyperparameters must be an object");
  Napi::Object h = info[6].As<Napi::Object>();
  const RmspropHyper hy{Field(h, "lr"), Field(h, "alpha"), Field(h, "eps"), Field(h, "weightDecay")};
  return Guard(info, [&] { spinlm::cuda::rmsprop_step(a.param, a.dt, a.master, a.grad, sq, a.n, hy, a.grad_scale); });
}

Napi::Value AdamwStep(const Napi::CallbackInfo& info) {
  const StepArgs a = Common(info, 8);
  float* m = View<float>(info[5], "expAvg", a.n * 4);
  float* v = View<float>(info[6], "expAvgSq", a.n * 4);
  if (!info[7].IsObject()) ThrowType(info.Env(), "adamw hyperparameters must be an object");
  Napi::Object h = info[7].As<Napi::Object>();
  const double step = Field(h, "step");
  if (step < 1 || step != std::floor(step)) Throw(info.Env(), "adamw 'step' must be an integer >= 1");
  const AdamwHyper hy{Field(h, "lr"), Field(h, "beta1"), Field(h, "beta2"), Field(h, "eps"), Field(h, "weightDecay"),
                      static_cast<int64_t>(step)};
  return Guard(info, [&] { spinlm::cuda::adamw_step(a.param, a.dt, a.master, a.grad, m, v, a.n, hy, a.grad_scale); });
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[1], "n"), index = ToInt(info[3], "index");
  const float* x = View<float>(info[0], "x", n * 4);
  float* out = View<float>(info[2], "out", (index + 1) * 4);
  return Guard(info, [&] { spinlm::cuda::sum_squares_into(x, n, out + index); });
}

Napi::Value ClipCoefficient(const Napi::CallbackInfo& info) {
  const int64_t k = ToInt(info[1], "count");
  const float* sq = View<float>(info[0], "sumsq", k * 4);
  const double max_norm = ToDouble(info[2], "maxNorm");
  float* out = View<float>(info[3], "out", 8);
  return Guard(info, [&] { spinlm::cuda::clip_coefficient(sq, k, max_norm, out); });
}

Napi::Value Accumulate(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  float* acc = View<float>(info[0], "acc", n * 4);
  const float* x = View<float>(info[1], "x", n * 4);
  const double alpha = ToDouble(info[3], "alpha");
  return Guard(info, [&] { spinlm::cuda::accumulate(acc, x, n, alpha); });
}

Napi::Value ScaleInPlace(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[1], "n");
  float* y = View<float>(info[0], "y", n * 4);
  const float a = static_cast<float>(ToDouble(info[2], "scale"));
  return Guard(info, [&] { spinlm::cuda::scale_inplace(y, n, a); });
}

Napi::Value SampleTokens(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t b = ToInt(info[1], "b"), v = ToInt(info[2], "v");
  if (b > 0 && v < 1) Throw(env, "sampling needs a vocabulary of at least 1");
  const float* logits = View<float>(info[0], "logits", CheckedMul(env, b, v * 4, "logits bytes"));
  int32_t* rng = View<int32_t>(info[3], "rng", b * 16);
  const int32_t* active = View<int32_t>(info[4], "active", b * 4);
  const double temperature = ToDouble(info[5], "temperature"), top_p = ToDouble(info[7], "topP");
  const int64_t top_k = ToInt(info[6], "topK");
  if (!(temperature >= 0) || !(top_p > 0 && top_p <= 1)) Throw(env, "temperature must be >= 0 and top_p in (0, 1]");
  int32_t* out = View<int32_t>(info[8], "out", b * 4);
  return Guard(info, [&] { spinlm::cuda::sample_tokens(logits, b, v, rng, active, temperature, top_k, top_p, out); });
}

// ---- model ops ----
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool ta = info[0].ToBoolean(), tb = info[1].ToBoolean();
  const int64_t m = ToInt(info[2], "m"), n = ToInt(info[3], "n"), k = ToInt(info[4], "k");
  const float alpha = ToFloat(info[5], "alpha");
  const int64_t lda = ToInt(info[7], "lda"), ldb = ToInt(info[10], "ldb"), ldc = ToInt(info[13], "ldc");
  const DType bdt = FloatDType(info[9], "b dtype");
  const float beta = ToFloat(info[11], "beta");
  const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
  if (lda < std::max<int64_t>(1, a_cols) || ldb < std::max<int64_t>(1, b_cols) || ldc < std::max<int64_t>(1, n))
    Throw(env, "matmul: a leading dimension is smaller than its row");
  auto bytes = [&](int64_t rows, int64_t ld, int64_t cols, int64_t es) { return rows == 0 ? 0 : ((rows - 1) * ld + cols) * es; };
  const float* a = View<float>(info[6], "a", bytes(a_rows, lda, a_cols, 4));
  const void* b = View(info[8], "b", bytes(b_rows, ldb, b_cols, dtype_size(bdt)));
  float* c = View<float>(info[12], "c", bytes(m, ldc, n, 4));
  const bool row_invariant = info[14].ToBoolean();
  if (row_invariant && (ta || !tb)) Throw(env, "matmul: rowInvariant needs op(a) = a and op(b) = b^T (a linear layer)");
  return Guard(info, [&] { spinlm::cuda::matmul(ta, tb, m, n, k, alpha, a, lda, b, bdt, ldb, beta, c, ldc, row_invariant); });
}

// matmulRowsMany(m, k, a, lda, bs, bDtypes, ns, outs): the CPU addon's fused linear layers, here one
// row-invariant tiled GEMM launch per weight on the stream.
Napi::Value MatmulRowsMany(const Napi::CallbackInfo& info) {
  const spinlm::napi::RowsManyArgs r =
      spinlm::napi::ParseRowsMany(info, [](Napi::Value v, const char* what, int64_t bytes) { return View(v, what, bytes); });
  return Guard(info, [&] {
    for (const auto& j : r.jobs) spinlm::cuda::matmul(false, true, r.m, j.n, r.k, 1.0f, r.a, r.lda, j.b, j.dt, r.k, 0.0f, j.out, j.n, true);
  });
}

Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), v = ToInt(info[4], "vocab"), h = ToInt(info[5], "hidden");
  const DType dt = FloatDType(info[3], "table dtype");
  const int32_t* ids = View<int32_t>(info[0], "ids", t * 4);
  const void* table = View(info[2], "table", CheckedMul(env, v * h, dtype_size(dt), "table bytes"));
  float* out = View<float>(info[6], "out", CheckedMul(env, t, h * 4, "out bytes"));
  return Guard(info, [&] { spinlm::cuda::embedding(ids, t, table, dt, v, h, out); });
}

Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), v = ToInt(info[3], "vocab"), h = ToInt(info[4], "hidden");
  const int32_t* ids = View<int32_t>(info[0], "ids", t * 4);
  const float* dout = View<float>(info[2], "dout", CheckedMul(env, t, h * 4, "dout bytes"));
  float* dtable = View<float>(info[5], "dtable", CheckedMul(env, v, h * 4, "dtable bytes"));
  return Guard(info, [&] { spinlm::cuda::embedding_backward(ids, t, dout, v, h, dtable); });
}

Napi::Value Rmsnorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType wdt = FloatDType(info[2], "weight dtype");
  const int64_t t = ToInt(info[3], "t"), h = ToInt(info[4], "hidden");
  const float eps = ToFloat(info[5], "eps");
  const float* x = View<float>(info[0], "x", CheckedMul(env, t, h * 4, "x bytes"));
  const void* w = View(info[1], "weight", h * dtype_size(wdt));
  float* y = View<float>(info[6], "y", t * h * 4);
  float* rstd = View<float>(info[7], "rstd", t * 4);
  return Guard(info, [&] { spinlm::cuda::rmsnorm(x, w, wdt, t, h, eps, y, rstd); });
}

Napi::Value RmsnormBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType wdt = FloatDType(info[2], "weight dtype");
  const int64_t t = ToInt(info[5], "t"), h = ToInt(info[6], "hidden");
  const int64_t th = CheckedMul(env, t, h * 4, "bytes");
  const float* x = View<float>(info[0], "x", th);
  const void* w = View(info[1], "weight", h * dtype_size(wdt));
  const float* rstd = View<float>(info[3], "rstd", t * 4);
  const float* dy = View<float>(info[4], "dy", th);
  float* dx = View<float>(info[7], "dx", th);
  float* dw = OptView<float>(info[8], "dw", h * 4);
  return Guard(info, [&] { spinlm::cuda::rmsnorm_backward(x, w, wdt, rstd, dy, t, h, dx, dw); });
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[2], "t"), heads = ToInt(info[3], "heads"), hd = ToInt(info[4], "headDim");
  if (hd % 2) Throw(env, "rope needs an even head dimension");
  const double theta = ToFloat(info[5], "theta"), scale = ToFloat(info[6], "scale");
  if (!(theta > 0) || !(scale > 0)) Throw(env, "rope theta and scale must be positive");
  float* x = View<float>(info[0], "x", CheckedMul(env, t, heads * hd * 4, "x bytes"));
  const int32_t* pos = View<int32_t>(info[1], "positions", t * 4);
  const bool inverse = info[7].ToBoolean();
  return Guard(info, [&] { spinlm::cuda::rope(x, pos, t, heads, hd, theta, scale, inverse); });
}

struct AttnDims {
  int64_t b, l, nh, nkv, hd;
  float scale;
};

AttnDims ReadAttnDims(const Napi::CallbackInfo& info, size_t at) {
  Napi::Env env = info.Env();
  AttnDims d{ToInt(info[at], "batch"), ToInt(info[at + 1], "length"), ToInt(info[at + 2], "heads"),
             ToInt(info[at + 3], "kvHeads"), ToInt(info[at + 4], "headDim"), ToFloat(info[at + 5], "scale")};
  if (d.nkv == 0 || d.nh % d.nkv) Throw(env, "attention heads must be a multiple of the key-value heads");
  if (d.hd > kMaxHeadDim) Throw(env, "the CUDA attention kernels take head dimensions up to " + std::to_string(kMaxHeadDim));
  if (d.nh > 65535 || d.b > 65535) Throw(env, "the CUDA attention kernels take up to 65535 heads and sequences");
  return d;
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const AttnDims d = ReadAttnDims(info, 4);
  const int64_t qb = CheckedMul(env, d.b * d.l, d.nh * d.hd * 4, "q bytes"), kb = d.b * d.l * d.nkv * d.hd * 4;
  const float* q = View<float>(info[0], "q", qb);
  const float* k = View<float>(info[1], "k", kb);
  const float* v = View<float>(info[2], "v", kb);
  const int32_t* mask = View<int32_t>(info[3], "keyMask", d.b * d.l * 4);
  float* out = View<float>(info[10], "out", qb);
  float* lse = View<float>(info[11], "lse", d.b * d.nh * d.l * 4);
  return Guard(info, [&] { spinlm::cuda::attention(q, k, v, mask, d.b, d.l, d.nh, d.nkv, d.hd, d.scale, out, lse); });
}

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const AttnDims d = ReadAttnDims(info, 7);
  const int64_t qb = CheckedMul(env, d.b * d.l, d.nh * d.hd * 4, "q bytes"), kb = d.b * d.l * d.nkv * d.hd * 4;
  const float* q = View<float>(info[0], "q", qb);
  const float* k = View<float>(info[1], "k", kb);
  const float* v = View<float>(info[2], "v", kb);
  const int32_t* mask = View<int32_t>(info[3], "keyMask", d.b * d.l * 4);
  const float* out = View<float>(info[4], "out", qb);
  const float* lse = View<float>(info[5], "lse", d.b * d.nh * d.l * 4);
  const float* dout = View<float>(info[6], "dout", qb);
  float* dq = View<float>(info[13], "dq", qb);
  float* dk = View<float>(info[14], "dk", kb);
  float* dv = View<float>(info[15], "dv", kb);
  return Guard(info, [&] { spinlm::cuda::attention_backward(q, k, v, mask, out, lse, dout, d.b, d.l, d.nh, d.nkv, d.hd, d.scale, dq, dk, dv); });
}

// attentionDecode(q, kCache, vCache, cacheDtype, lengths, keyMask | null, b, lmax, nh, nkv, hd, scale, out)
Napi::Value AttentionDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType cdt = FloatDType(info[3], "cache dtype");
  const AttnDims d = ReadAttnDims(info, 6);  // l = lmax
  const int64_t qb = d.b * d.nh * d.hd * 4, cb = CheckedMul(env, d.b * d.l, d.nkv * d.hd * dtype_size(cdt), "cache bytes");
  const float* q = View<float>(info[0], "q", qb);
  const void* kc = View(info[1], "kCache", cb);
  const void* vc = View(info[2], "vCache", cb);
  const int32_t* lengths = View<int32_t>(info[4], "lengths", d.b * 4);
  const int32_t* mask = OptView<int32_t>(info[5], "keyMask", d.b * d.l * 4);
  float* out = View<float>(info[12], "out", qb);
  return Guard(info, [&] { spinlm::cuda::attention_decode(q, kc, vc, cdt, lengths, mask, d.b, d.l, d.nh, d.nkv, d.hd, d.scale, out); });
}

Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  const float* g = View<float>(info[0], "gate", n * 4);
  const float* u = View<float>(info[1], "up", n * 4);
  float* out = View<float>(info[3], "out", n * 4);
  return Guard(info, [&] { spinlm::cuda::swiglu(g, u, n, out); });
}
Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[3], "n");
  const float* g = View<float>(info[0], "gate", n * 4);
  const float* u = View<float>(info[1], "up", n * 4);
  const float* d = View<float>(info[2], "dout", n * 4);
  float* dg = View<float>(info[4], "dgate", n * 4);
  float* du = View<float>(info[5], "dup", n * 4);
  return Guard(info, [&] { spinlm::cuda::swiglu_backward(g, u, d, n, dg, du); });
}

// scatterRows(src, index, rows, cols, dst, dstDtype, dstRows)
Napi::Value ScatterRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = ToInt(info[2], "rows"), cols = ToInt(info[3], "cols"), dst_rows = ToInt(info[6], "dstRows");
  const DType ddt = FloatDType(info[5], "dst dtype");
  const int32_t* index = View<int32_t>(info[1], "index", rows * 4);
  const float* src = View<float>(info[0], "src", CheckedMul(env, rows, cols * 4, "src bytes"));
  void* dst = View(info[4], "dst", CheckedMul(env, dst_rows, cols * dtype_size(ddt), "dst bytes"));
  return Guard(info, [&] { spinlm::cuda::scatter_rows(src, index, rows, cols, dst, ddt, dst_rows); });
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  const float* a = View<float>(info[0], "a", n * 4);
  const float* b = View<float>(info[1], "b", n * 4);
  float* y = View<float>(info[3], "y", n * 4);
  return Guard(info, [&] { spinlm::cuda::add(a, b, n, y); });
}

Napi::Value AddBias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = FloatDType(info[2], "bias dtype");
  const int64_t t = ToInt(info[3], "t"), n = ToInt(info[4], "n");
  float* x = View<float>(info[0], "x", CheckedMul(env, t, n * 4, "x bytes"));
  const void* bias = View(info[1], "bias", n * dtype_size(dt));
  return Guard(info, [&] { spinlm::cuda::add_bias(x, bias, dt, t, n); });
}

Napi::Value BiasBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), n = ToInt(info[2], "n");
  const float* dy = View<float>(info[0], "dy", CheckedMul(env, t, n * 4, "dy bytes"));
  float* db = View<float>(info[3], "dbias", n * 4);
  return Guard(info, [&] { spinlm::cuda::bias_backward(dy, t, n, db); });
}

}  // namespace

// The `cuda` object: the kernels as functions with the CPU addon's names and arguments.
Napi::Object Exports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("abiVersion", Napi::Number::New(env, 3));  // src/backend/cuda/native.ts CUDA_ABI_VERSION
  o.Set("unavailable", Napi::Function::New(env, Unavailable));
  o.Set("info", Napi::Function::New(env, Info));
  o.Set("alloc", Napi::Function::New(env, Alloc));
  o.Set("free", Napi::Function::New(env, Free));
  o.Set("write", Napi::Function::New(env, Write));
  o.Set("read", Napi::Function::New(env, Read));
  o.Set("takeErrors", Napi::Function::New(env, TakeErrors));
  o.Set("fill", Napi::Function::New(env, Fill));
  o.Set("cast", Napi::Function::New(env, Cast));
  o.Set("logprobGather", Napi::Function::New(env, LogprobGather));
  o.Set("logprobGatherBackward", Napi::Function::New(env, LogprobGatherBackward));
  o.Set("sequenceLogprob", Napi::Function::New(env, SequenceLogprob));
  o.Set("sequenceLogprobBackward", Napi::Function::New(env, SequenceLogprobBackward));
  o.Set("spinLoss", Napi::Function::New(env, SpinLoss));
  o.Set("rmspropStep", Napi::Function::New(env, RmspropStep));
  o.Set("adamwStep", Napi::Function::New(env, AdamwStep));
  o.Set("sumSquares", Napi::Function::New(env, SumSquares));
  o.Set("clipCoefficient", Napi::Function::New(env, ClipCoefficient));
  o.Set("scaleInPlace", Napi::Function::New(env, ScaleInPlace));
  o.Set("accumulate", Napi::Function::New(env, Accumulate));
  o.Set("sampleTokens", Napi::Function::New(env, SampleTokens));
  o.Set("matmul", Napi::Function::New(env, Matmul));
  o.Set("matmulRowsMany", Napi::Function::New(env, MatmulRowsMany));
  o.Set("embedding", Napi::Function::New(env, Embedding));
  o.Set("embeddingBackward", Napi::Function::New(env, EmbeddingBackward));
  o.Set("rmsnorm", Napi::Function::New(env, Rmsnorm));
  o.Set("rmsnormBackward", Napi::Function::New(env, RmsnormBackward));
  o.Set("rope", Napi::Function::New(env, Rope));
  o.Set("attention", Napi::Function::New(env, Attention));
  o.Set("attentionBackward", Napi::Function::New(env, AttentionBackward));
  o.Set("attentionDecode", Napi::Function::New(env, AttentionDecode));
  o.Set("swiglu", Napi::Function::New(env, Swiglu));
  o.Set("swigluBackward", Napi::Function::New(env, SwigluBackward));
  o.Set("scatterRows", Napi::Function::New(env, ScatterRows));
  o.Set("add", Napi::Function::New(env, Add));
  o.Set("addBias", Napi::Function::New(env, AddBias));
  o.Set("biasBackward", Napi::Function::New(env, BiasBackward));
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
