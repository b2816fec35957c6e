// N-API bindings of the log-prob / SPIN loss kernels, for both addons (native/op_binding.h).
#include <cmath>
#include <string>
#include <utility>

#include "op_binding.h"

namespace SPINLM_BIND_NS {
namespace {

// A target outside [0, v) other than the ignore index -100.
bool BadTargets(const int32_t* t, int64_t n, int64_t v) {
  return IndicesOutsideOnHost(t, n, 0, v, -100, kErrTargets);
}

bool BadSegments(const int32_t* seg, int64_t n, int64_t s) {
  return IndicesOutsideOnHost(seg, n, -1, s, kNoException, kErrSegments);
}

}  // namespace

// logprobGather(logits, dtype, n, v, targets, logp, lse)
Napi::Value js::logprobGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = ToDType(info[1], "logits dtype");
  if (dt == DType::kI32) ThrowType(env, "logits must be f32 or bf16");
  const int64_t n = ToInt(info[2], "n"), v = ToInt(info[3], "v");
  if (n > 0 && v == 0) Throw(env, "vocabulary size must be at least 1");
  const int64_t zbytes = CheckedMul(env, CheckedMul(env, n, v, "n * v"), dtype_size(dt), "logits bytes");
  const void* z = View(info[0], "logits", zbytes);
  const int32_t* t = View<int32_t>(info[4], "targets", n * 4);
  float* logp = View<float>(info[5], "logp", n * 4);
  float* lse = View<float>(info[6], "lse", n * 4);
  if (BadTargets(t, n, v)) {
    PoisonF32(logp, n);
    PoisonF32(lse, n);
    return env.Undefined();
  }
  return Run(info, [&] { kern::logprob_gather(z, dt, n, v, t, logp, lse); });
}

// logprobGatherBackward(logits, dtype, n, v, targets, lse, dlogp, dlogits, outDtype)
Napi::Value js::logprobGatherBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = ToDType(info[1], "logits dtype"), od = ToDType(info[8], "dlogits dtype");
  if (dt == DType::kI32 || od == DType::kI32) ThrowType(env, "logits and dlogits must be f32 or bf16");
  const int64_t n = ToInt(info[2], "n"), v = ToInt(info[3], "v");
  if (n > 0 && v == 0) Throw(env, "vocabulary size must be at least 1");
  const int64_t nv = CheckedMul(env, n, v, "n * v");
  const char* z = View<char>(info[0], "logits", CheckedMul(env, nv, dtype_size(dt), "bytes"));
  const int32_t* t = View<int32_t>(info[4], "targets", n * 4);
  const float* lse = View<float>(info[5], "lse", n * 4);
  const float* dlogp = View<float>(info[6], "dlogp", n * 4);
  char* out = View<char>(info[7], "dlogits", CheckedMul(env, nv, dtype_size(od), "bytes"));
  // Writing over the logits is allowed only exactly in place: a shifted overlap would read
  // values another row already overwrote.
  const char* zend = z + nv * dtype_size(dt);
  const char* oend = out + nv * dtype_size(od);
  if (nv > 0 && out < zend && z < oend && (out != z || od != dt))
    Throw(env, "dlogits overlaps logits without being exactly in place with the same dtype");
  if (BadTargets(t, n, v)) {
    PoisonAny(out, nv, od);
    return env.Undefined();
  }
  return Run(info, [&] { kern::logprob_gather_backward(z, dt, n, v, t, lse, dlogp, out, od); });
}

namespace {

// The shapes and views shared by headLogprob and its backward: h [n, hdim] f32, w [v, hdim], targets [n].
struct HeadArgs {
  int64_t n, hdim, v;
  DType wdt;
  const float* h;
  const void* w;
  const int32_t* t;
  float softcap;
};

HeadArgs ReadHead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HeadArgs a{};
  a.n = ToInt(info[1], "n");
  a.hdim = ToInt(info[2], "hdim");
  a.wdt = FloatDType(info[4], "w dtype");
  a.v = ToInt(info[5], "v");
  if (a.n > 0 && a.v == 0) Throw(env, "vocabulary size must be at least 1");
  for (auto [x, what] : {std::pair{a.n, "n"}, {a.hdim, "hdim"}, {a.v, "v"}}) CheckGemmDim(env, x, what);
  a.h = View<float>(info[0], "h", CheckedMul(env, CheckedMul(env, a.n, a.hdim, "n * hdim"), 4, "h bytes"));
  a.w = View(info[3], "w", CheckedMul(env, CheckedMul(env, a.v, a.hdim, "v * hdim"), dtype_size(a.wdt), "w bytes"));
  a.t = View<int32_t>(info[6], "targets", a.n * 4);
  const double c = ToDouble(info[7], "softcap");
  if (!(c >= 0) || !std::isfinite(c)) Throw(env, "softcap must be finite and >= 0");
  a.softcap = static_cast<float>(c);
  return a;
}

}  // namespace

// headLogprob(h, n, hdim, w, wDtype, v, targets, softcap, rowInvariant, computeBf16, logp, lse)
Napi::Value js::headLogprob(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const HeadArgs a = ReadHead(info);
  const bool row_invariant = info[8].ToBoolean(), bf16 = info[9].ToBoolean();
  if (bf16 && !ComputeBf16Kernel(false, true, DType::kF32, a.wdt))
    Throw(env, "headLogprob: this device's computeBf16 kernel needs a bf16 w (bf16_compute.ts rounds an f32 w first)");
  float* logp = View<float>(info[10], "logp", a.n * 4);
  float* lse = View<float>(info[11], "lse", a.n * 4);
  if (BadTargets(a.t, a.n, a.v)) {
    PoisonF32(logp, a.n);
    PoisonF32(lse, a.n);
    return env.Undefined();
  }
  return Run(info, [&] { kern::head_logprob(a.h, a.n, a.hdim, a.w, a.wdt, a.v, a.t, a.softcap, row_invariant, bf16, logp, lse); });
}

// headLogprobBackward(h, n, hdim, w, wDtype, v, targets, softcap, lse, dlogp, dh, dw | null, computeBf16)
Napi::Value js::headLogprobBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const HeadArgs a = ReadHead(info);
  const float* lse = View<float>(info[8], "lse", a.n * 4);
  const float* dlogp = View<float>(info[9], "dlogp", a.n * 4);
  float* dh = View<float>(info[10], "dh", a.n * a.hdim * 4);
  float* dw = OptView<float>(info[11], "dw", a.v * a.hdim * 4);
  const bool bf16 = info[12].ToBoolean();
  if (BadTargets(a.t, a.n, a.v)) {
    PoisonF32(dh, a.n * a.hdim);
    if (dw) PoisonF32(dw, a.v * a.hdim);
    return env.Undefined();
  }
  return Run(info, [&] { kern::head_logprob_backward(a.h, a.n, a.hdim, a.w, a.wdt, a.v, a.t, a.softcap, lse, dlogp, dh, dw, bf16); });
}

// sequenceLogprob(logp, seg, n, numSeqs, out)
Napi::Value js::sequenceLogprob(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t n = ToInt(info[2], "n"), s = ToInt(info[3], "numSeqs");
  const float* logp = View<float>(info[0], "logp", n * 4);
  const int32_t* seg = View<int32_t>(info[1], "segments", n * 4);
  float* out = View<float>(info[4], "out", s * 4);
  if (BadSegments(seg, n, s)) {
    PoisonF32(out, s);
    return env.Undefined();
  }
  return Run(info, [&] { kern::sequence_logprob(logp, seg, n, s, out); });
}

// sequenceLogprobBackward(dseq, seg, n, numSeqs, dlogp)
Napi::Value js::sequenceLogprobBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t n = ToInt(info[2], "n"), s = ToInt(info[3], "numSeqs");
  const float* dseq = View<float>(info[0], "dseq", s * 4);
  const int32_t* seg = View<int32_t>(info[1], "segments", n * 4);
  float* dlogp = View<float>(info[4], "dlogp", n * 4);
  if (BadSegments(seg, n, s)) {
    PoisonF32(dlogp, n);
    return env.Undefined();
  }
  return Run(info, [&] { kern::sequence_logprob_backward(dseq, seg, n, s, dlogp); });
}

// spinLoss(policy [2b], ref [2b], pairMask|null, b, beta, lossType, nllAlpha, answerTokens|null,
//          gradScale, perPair [7, b], means [8], dseq [2b])
Napi::Value js::spinLoss(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t b = ToInt(info[3], "batch");
  const double beta = ToDouble(info[4], "beta");
  const std::string type = info[5].IsString() ? info[5].As<Napi::String>().Utf8Value() : "";
  SpinLossType loss_type;
  if (!parse_spin_loss_type(type.c_str(), &loss_type)) ThrowType(env, std::string("loss type must be ") + kSpinLossNamesList);
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
  return Run(info, [&] {
    kern::spin_loss(policy, ref, mask, b, beta, loss_type, nll_alpha, answer_tokens, grad_scale, per_pair, means, dseq);
  });
}

}  // namespace SPINLM_BIND_NS
