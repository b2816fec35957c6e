// The one N-API module of spinlm. Device memory for the CPU backend is native, 64-byte aligned and
// owned by an External handle (freed explicitly by free() or by the GC finalizer). Kernels take
// tensors as JS objects { handle, byteOffset }; every call checks handles, sizes, bounds and
// targets here, so a bad call from JS throws a clear error instead of crashing the process.
#include <cblas.h>
#include <napi.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "include/bf16.h"
#include "cpu/kernels.h"
#include "cpu/threadpool.h"
#include "index_checks.h"
#include "napi_util.h"

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

// fill(view, count, elementBytes 2|4, pattern): writes `count` copies of a 16- or 32-bit pattern.
Napi::Value Fill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t count = ToInt(info[1], "count"), esize = ToInt(info[2], "elementBytes");
  const uint32_t pattern = static_cast<uint32_t>(ToInt(info[3], "pattern"));
  if (esize != 2 && esize != 4) Throw(env, "elementBytes must be 2 or 4");
  void* p = View(info[0], "tensor", CheckedMul(env, count, esize, "fill size"));
  spinlm::fill_pattern(p, count, static_cast<int>(esize), pattern);
  return env.Undefined();
}

// cast(src, srcDtype, dst, dstDtype, count): f32 <-> bf16 (round to nearest even), or a copy.
Napi::Value Cast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType sd = ToDType(info[1], "source dtype"), dd = ToDType(info[3], "destination dtype");
  const int64_t n = ToInt(info[4], "count");
  if ((sd == DType::kI32) != (dd == DType::kI32)) ThrowType(env, "cannot cast between i32 and floats");
  const void* s = View(info[0], "source", CheckedMul(env, n, spinlm::dtype_size(sd), "size"));
  void* d = View(info[2], "destination", CheckedMul(env, n, spinlm::dtype_size(dd), "size"));
  spinlm::cast_values(s, sd, d, dd, n);
  return env.Undefined();
}

// takeErrors() -> the device error word's bits since the last call (and clears them).
Napi::Value TakeErrors(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(spinlm::take_op_errors()));
}

// A target outside [0, v) other than the ignore index -100.
bool BadTargets(const int32_t* t, int64_t n, int64_t v) {
  return IndicesOutside(t, n, 0, v, -100, spinlm::kErrTargets);
}

// logprobGather(logits, dtype, n, v, targets, logp, lse)
Napi::Value LogprobGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = ToDType(info[1], "logits dtype");
  if (dt == DType::kI32) ThrowType(env, "logits must be f32 or bf16");
  const int64_t n = ToInt(info[2], "n"), v = ToInt(info[3], "v");
  if (n > 0 && v == 0) Throw(env, "vocabulary size must be at least 1");
  const int64_t zbytes = CheckedMul(env, CheckedMul(env, n, v, "n * v"), spinlm::dtype_size(dt), "logits bytes");
  const void* z = View(info[0], "logits", zbytes);
  const int32_t* t = View<int32_t>(info[4], "targets", n * 4);
  float* logp = View<float>(info[5], "logp", n * 4);
  float* lse = View<float>(info[6], "lse", n * 4);
  if (BadTargets(t, n, v)) {
    PoisonF32(logp, n);
    PoisonF32(lse, n);
    return env.Undefined();
  }
  spinlm::logprob_gather(z, dt, n, v, t, logp, lse);
  return env.Undefined();
}

// logprobGatherBackward(logits, dtype, n, v, targets, lse, dlogp, dlogits, outDtype)
Napi::Value LogprobGatherBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = ToDType(info[1], "logits dtype"), od = ToDType(info[8], "dlogits dtype");
  if (dt == DType::kI32 || od == DType::kI32) ThrowType(env, "logits and dlogits must be f32 or bf16");
  const int64_t n = ToInt(info[2], "n"), v = ToInt(info[3], "v");
  if (n > 0 && v == 0) Throw(env, "vocabulary size must be at least 1");
  const int64_t nv = CheckedMul(env, n, v, "n * v");
  const char* z = View<char>(info[0], "logits", CheckedMul(env, nv, spinlm::dtype_size(dt), "bytes"));
  const int32_t* t = View<int32_t>(info[4], "targets", n * 4);
  const float* lse = View<float>(info[5], "lse", n * 4);
  const float* dlogp = View<float>(info[6], "dlogp", n * 4);
  char* out = View<char>(info[7], "dlogits", CheckedMul(env, nv, spinlm::dtype_size(od), "bytes"));
  // Writing over the logits is allowed only exactly in place: a shifted overlap would read
  // values another row already overwrote.
  const char* zend = z + nv * spinlm::dtype_size(dt);
  const char* oend = out + nv * spinlm::dtype_size(od);
  if (nv > 0 && out < zend && z < oend && (out != z || od != dt))
    Throw(env, "dlogits overlaps logits without being exactly in place with the same dtype");
  if (BadTargets(t, n, v)) {
    PoisonAny(out, nv, od);
    return env.Undefined();
  }
  spinlm::logprob_gather_backward(z, dt, n, v, t, lse, dlogp, out, od);
  return env.Undefined();
}

bool BadSegments(const int32_t* seg, int64_t n, int64_t s) {
  return IndicesOutside(seg, n, -1, s, spinlm::napi::kNoException, spinlm::kErrSegments);
}

// sequenceLogprob(logp, seg, n, numSeqs, out)
Napi::Value SequenceLogprob(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t n = ToInt(info[2], "n"), s = ToInt(info[3], "numSeqs");
  const float* logp = View<float>(info[0], "logp", n * 4);
  const int32_t* seg = View<int32_t>(info[1], "segments", n * 4);
  float* out = View<float>(info[4], "out", s * 4);
  if (BadSegments(seg, n, s)) {
    PoisonF32(out, s);
    return env.Undefined();
  }
  spinlm::sequence_logprob(logp, seg, n, s, out);
  return env.Undefined();
}

// sequenceLogprobBackward(dseq, seg, n, numSeqs, dlogp)
Napi::Value SequenceLogprobBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t n = ToInt(info[2], "n"), s = ToInt(info[3], "numSeqs");
  const float* dseq = View<float>(info[0], "dseq", s * 4);
  const int32_t* seg = View<int32_t>(info[1], "segments", n * 4);
  float* dlogp = View<float>(info[4], "dlogp", n * 4);
  if (BadSegments(seg, n, s)) {
    PoisonF32(dlogp, n);
    return env.Undefined();
  }
  spinlm::sequence_logprob_backward(dseq, seg, n, s, dlogp);
  return env.Undefined();
}

// spinLoss(policy [2b], ref [2b], pairMask|null, b, beta, lossType, nllAlpha, answerTokens|null,
//          gradScale, perPair [7, b], means [8], dseq [2b])
Napi::Value SpinLoss(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t b = ToInt(info[3], "batch");
  if (!info[4].IsNumber()) ThrowType(env, "beta must be a number");
  const double beta = info[4].As<Napi::Number>().DoubleValue();
  const std::string type = info[5].IsString() ? info[5].As<Napi::String>().Utf8Value() : "";
  spinlm::SpinLossType loss_type;
  if (!spinlm::parse_spin_loss_type(type.c_str(), &loss_type))
    ThrowType(env, std::string("loss type must be ") + spinlm::kSpinLossNamesList);
  const float* policy = View<float>(info[0], "policy", b * 8);
  const float* ref = View<float>(info[1], "ref", b * 8);
  const float* mask = info[2].IsNull() ? nullptr : View<float>(info[2], "pairMask", b * 4);
  const double nll_alpha = info[6].IsNumber() ? info[6].As<Napi::Number>().DoubleValue() : 0.0;
  if (!std::isfinite(nll_alpha) || nll_alpha < 0) Throw(env, "nllAlpha must be a finite number >= 0");
  const float* answer_tokens = info[7].IsNull() || info[7].IsUndefined() ? nullptr : View<float>(info[7], "answerTokens", b * 4);
  if (nll_alpha != 0.0 && !answer_tokens) Throw(env, "nllAlpha > 0 needs the real answers' token counts");
  if (!info[8].IsNumber()) ThrowType(env, "gradScale must be a number");
  const float grad_scale = static_cast<float>(info[8].As<Napi::Number>().DoubleValue());
  float* per_pair = View<float>(info[9], "perPair", b * 7 * 4);
  float* means = View<float>(info[10], "means", 8 * 4);
  float* dseq = View<float>(info[11], "dseq", b * 8);
  spinlm::spin_loss(policy, ref, mask, b, beta, loss_type, nll_alpha, answer_tokens, grad_scale, per_pair, means,
                    dseq);
  return env.Undefined();
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
  exports.Set("abiVersion", Napi::Number::New(env, 7));  // src/backend/cpu/addon.ts ABI_VERSION
  exports.Set("alloc", Napi::Function::New(env, Alloc));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("write", Napi::Function::New(env, Write));
  exports.Set("read", Napi::Function::New(env, Read));
  exports.Set("fill", Napi::Function::New(env, Fill));
  exports.Set("cast", Napi::Function::New(env, Cast));
  exports.Set("logprobGather", Napi::Function::New(env, LogprobGather));
  exports.Set("logprobGatherBackward", Napi::Function::New(env, LogprobGatherBackward));
  exports.Set("sequenceLogprob", Napi::Function::New(env, SequenceLogprob));
  exports.Set("sequenceLogprobBackward", Napi::Function::New(env, SequenceLogprobBackward));
  exports.Set("spinLoss", Napi::Function::New(env, SpinLoss));
  exports.Set("takeErrors", Napi::Function::New(env, TakeErrors));
  exports.Set("streamRead", Napi::Function::New(env, StreamRead));
  exports.Set("expThroughput", Napi::Function::New(env, ExpThroughput));
  exports.Set("rowOffset", Napi::Function::New(env, RowOffset));
  exports.Set("cachedBytes", Napi::Function::New(env, CachedBytes));
  exports.Set("liveBytes", Napi::Function::New(env, LiveBytes));
  exports.Set("releaseCached", Napi::Function::New(env, ReleaseCached));
  exports.Set("peakLiveBytes", Napi::Function::New(env, PeakLiveBytes));
  exports.Set("numThreads", Napi::Function::New(env, NumThreads));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("blasCore", Napi::Function::New(env, BlasCore));
  for (RegisterFn fn : op_registry()) fn(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(spinlm, Init)
