// N-API bindings of the optimizer kernels, for both addons (native/op_binding.h).
#include <cmath>
#include <string>

#include "op_binding.h"

namespace SPINLM_BIND_NS {
namespace {

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

// (param, paramDtype, master|null, grad, n, ..., clip|null): the views every step shares.
StepArgs Common(const Napi::CallbackInfo& info, size_t clip_index) {
  Napi::Env env = info.Env();
  StepArgs a;
  a.dt = ToDType(info[1], "param dtype");
  if (a.dt == DType::kI32) ThrowType(env, "parameters must be f32 or bf16");
  a.n = ToInt(info[4], "n");
  a.param = View(info[0], "param", CheckedMul(env, a.n, dtype_size(a.dt), "param bytes"));
  a.master = OptView<float>(info[2], "master", a.n * 4);
  if (!a.master && a.dt == DType::kBF16) ThrowType(env, "a bf16 parameter needs an f32 master copy");
  a.grad = View<float>(info[3], "grad", a.n * 4);
  // the clip tensor f32 [2] = [norm, coefficient]: the step multiplies the gradient by element 1
  const float* clip = OptView<float>(info[clip_index], "clip", 8);
  a.grad_scale = clip ? clip + 1 : nullptr;
  return a;
}

}  // namespace

// rmspropStep(param, dtype, master|null, grad, n, squareAvg, {lr, alpha, eps, weightDecay}, clip|null)
Napi::Value js::rmspropStep(const Napi::CallbackInfo& info) {
  const StepArgs a = Common(info, 7);
  float* sq = View<float>(info[5], "squareAvg", a.n * 4);
  if (!info[6].IsObject()) ThrowType(info.Env(), "rmsprop hyperparameters must be an object");
  Napi::Object h = info[6].As<Napi::Object>();
  const RmspropHyper hy{Field(h, "lr"), Field(h, "alpha"), Field(h, "eps"), Field(h, "weightDecay")};
  return Run(info, [&] { kern::rmsprop_step(a.param, a.dt, a.master, a.grad, sq, a.n, hy, a.grad_scale); });
}

// adamwStep(param, dtype, master|null, grad, n, expAvg, expAvgSq, {lr, beta1, beta2, eps, weightDecay, step}, clip|null)
Napi::Value js::adamwStep(const Napi::CallbackInfo& info) {
  const StepArgs a = Common(info, 8);
  float* m = View<float>(info[5], "expAvg", a.n * 4);
  float* v = View<float>(info[6], "expAvgSq", a.n * 4);
  if (!info[7].IsObject()) ThrowType(info.Env(), "adamw hyperparameters must be an object");
  Napi::Object h = info[7].As<Napi::Object>();
  const double step = Field(h, "step");
  if (step < 1 || step != std::floor(step)) Throw(info.Env(), "adamw 'step' must be an integer >= 1");
  const AdamwHyper hy{Field(h, "lr"),          Field(h, "beta1"), Field(h, "beta2"), Field(h, "eps"),
                      Field(h, "weightDecay"), static_cast<int64_t>(step)};
  return Run(info, [&] { kern::adamw_step(a.param, a.dt, a.master, a.grad, m, v, a.n, hy, a.grad_scale); });
}

// sumSquares(x f32, n, out f32, index): out[index] = sum of x^2 (double accumulation).
Napi::Value js::sumSquares(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[1], "n"), index = ToInt(info[3], "index");
  const float* x = View<float>(info[0], "x", n * 4);
  float* out = View<float>(info[2], "out", (index + 1) * 4);
  return Run(info, [&] { kern::sum_squares_into(x, n, out + index); });
}

// clipCoefficient(sumsq f32 [k], k, maxNorm, out f32 [2])
Napi::Value js::clipCoefficient(const Napi::CallbackInfo& info) {
  const int64_t k = ToInt(info[1], "count");
  const float* sq = View<float>(info[0], "sumsq", k * 4);
  const double max_norm = ToDouble(info[2], "maxNorm");
  float* out = View<float>(info[3], "out", 8);
  return Run(info, [&] { kern::clip_coefficient(sq, k, max_norm, out); });
}

// accumulate(acc f32, x f32, n, alpha): acc += alpha * x
Napi::Value js::accumulate(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  const double alpha = ToDouble(info[3], "alpha");
  float* acc = View<float>(info[0], "acc", n * 4);
  const float* x = View<float>(info[1], "x", n * 4);
  return Run(info, [&] { kern::accumulate(acc, x, n, alpha); });
}

// scaleInPlace(y f32, n, a)
Napi::Value js::scaleInPlace(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[1], "n");
  float* y = View<float>(info[0], "y", n * 4);
  const float a = static_cast<float>(ToDouble(info[2], "scale"));
  return Run(info, [&] { kern::scale_inplace(y, n, a); });
}

// softcapInPlace(y f32, n, c): y = c tanh(y / c), c finite and > 0
Napi::Value js::softcapInPlace(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[1], "n");
  float* y = View<float>(info[0], "y", n * 4);
  const double cd = ToDouble(info[2], "softcap");
  const float c = static_cast<float>(cd);
  if (!(std::isfinite(c) && c > 0.0f)) Throw(info.Env(), "softcap must be a finite number > 0, got " + std::to_string(cd));
  return Run(info, [&] { kern::softcap_inplace(y, n, c); });
}

}  // namespace SPINLM_BIND_NS
