// N-API bindings of the optimizer kernels (native/cpu/optim_kernels.h).
#include <cmath>

#include "cpu/optim_kernels.h"
#include "napi_util.h"

namespace spinlm::napi {
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

// (param, paramDtype, master|null, grad, n, ..., gradScale|null): the views every step shares.
StepArgs Common(const Napi::CallbackInfo& info, size_t scale_index) {
  Napi::Env env = info.Env();
  StepArgs a;
  a.dt = ToDType(info[1], "param dtype");
  if (a.dt == DType::kI32) ThrowType(env, "parameters must be f32 or bf16");
  a.n = ToInt(info[4], "n");
  a.param = View(info[0], "param", CheckedMul(env, a.n, dtype_size(a.dt), "param bytes"));
  a.master = info[2].IsNull() ? nullptr : View<float>(info[2], "master", a.n * 4);
  if (!a.master && a.dt == DType::kBF16) ThrowType(env, "a bf16 parameter needs an f32 master copy");
  a.grad = View<float>(info[3], "grad", a.n * 4);
  // the clip tensor f32 [2] = [norm, coefficient]: the step multiplies the gradient by element 1
  a.grad_scale = info[scale_index].IsNull() ? nullptr : View<float>(info[scale_index], "clip", 8) + 1;
  return a;
}

// rmspropStep(param, dtype, master|null, grad, n, squareAvg, {lr, alpha, eps, weightDecay}, gradScale|null)
Napi::Value RmspropStep(const Napi::CallbackInfo& info) {
  const StepArgs a = Common(info, 7);
  float* sq = View<float>(info[5], "squareAvg", a.n * 4);
  if (!info[6].IsObject()) ThrowType(info.Env(), "rmsprop hyperparameters must be an object");
  Napi::Object h = info[6].As<Napi::Object>();
  const RmspropHyper hy{Field(h, "lr"), Field(h, "alpha"), Field(h, "eps"), Field(h, "weightDecay")};
  rmsprop_step(a.param, a.dt, a.master, a.grad, sq, a.n, hy, a.grad_scale);
  return info.Env().Undefined();
}

// adamwStep(param, dtype, master|null, grad, n, expAvg, expAvgSq, {lr, beta1, beta2, eps, weightDecay, step}, gradScale|null)
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
  adamw_step(a.param, a.dt, a.master, a.grad, m, v, a.n, hy, a.grad_scale);
  return info.Env().Undefined();
}

// sumSquares(x f32, n, out f32, index): out[index] = sum of x^2 (double accumulation).
Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[1], "n"), index = ToInt(info[3], "index");
  const float* x = View<float>(info[0], "x", n * 4);
  float* out = View<float>(info[2], "out", (index + 1) * 4);
  sum_squares_into(x, n, out + index);
  return info.Env().Undefined();
}

// clipCoefficient(sumsq f32 [k], k, maxNorm, out f32 [2])
Napi::Value ClipCoefficient(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t k = ToInt(info[1], "count");
  const float* sq = View<float>(info[0], "sumsq", k * 4);
  if (!info[2].IsNumber()) ThrowType(env, "maxNorm must be a number");
  clip_coefficient(sq, k, info[2].As<Napi::Number>().DoubleValue(), View<float>(info[3], "out", 8));
  return env.Undefined();
}

// accumulate(acc f32, x f32, n, alpha): acc += alpha * x
Napi::Value Accumulate(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  if (!info[3].IsNumber()) ThrowType(info.Env(), "alpha must be a number");
  accumulate(View<float>(info[0], "acc", n * 4), View<float>(info[1], "x", n * 4), n, info[3].As<Napi::Number>().DoubleValue());
  return info.Env().Undefined();
}

// scaleInPlace(y f32, n, a)
Napi::Value ScaleInPlace(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[1], "n");
  float* y = View<float>(info[0], "y", n * 4);
  if (!info[2].IsNumber()) ThrowType(info.Env(), "scale must be a number");
  scale_inplace(y, n, static_cast<float>(info[2].As<Napi::Number>().DoubleValue()));
  return info.Env().Undefined();
}

void RegisterOptimOps(Napi::Env env, Napi::Object exports) {
  exports.Set("rmspropStep", Napi::Function::New(env, RmspropStep));
  exports.Set("adamwStep", Napi::Function::New(env, AdamwStep));
  exports.Set("sumSquares", Napi::Function::New(env, SumSquares));
  exports.Set("clipCoefficient", Napi::Function::New(env, ClipCoefficient));
  exports.Set("scaleInPlace", Napi::Function::New(env, ScaleInPlace));
  exports.Set("accumulate", Napi::Function::New(env, Accumulate));
}

OpRegistrar reg(RegisterOptimOps);

}  // namespace
}  // namespace spinlm::napi
