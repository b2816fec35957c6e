// N-API binding of the sampling kernel (native/cpu/sample.cc).
#include "cpu/kernels.h"
#include "napi_util.h"

namespace spinlm::napi {
namespace {

// sampleTokens(logits f32 [b, v], b, v, rng i32 [b, 4], active i32 [b], temperature, topK, topP, out i32 [b])
Napi::Value SampleTokens(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t b = ToInt(info[1], "b"), v = ToInt(info[2], "v");
  if (b > 0 && v < 1) Throw(env, "sampling needs a vocabulary of at least 1");
  const float* logits = View<float>(info[0], "logits", CheckedMul(env, b, v * 4, "logits bytes"));
  int32_t* rng = View<int32_t>(info[3], "rng", b * 16);
  const int32_t* active = View<int32_t>(info[4], "active", b * 4);
  for (int i = 5; i <= 7; ++i)
    if (!info[i].IsNumber()) ThrowType(env, "sampling options must be numbers");
  const double temperature = info[5].As<Napi::Number>().DoubleValue(), top_p = info[7].As<Napi::Number>().DoubleValue();
  const int64_t top_k = ToInt(info[6], "topK");
  if (!(temperature >= 0) || !(top_p > 0 && top_p <= 1)) Throw(env, "temperature must be >= 0 and top_p in (0, 1]");
  sample_tokens(logits, b, v, rng, active, temperature, top_k, top_p, View<int32_t>(info[8], "out", b * 4));
  return env.Undefined();
}

void RegisterSampleOps(Napi::Env env, Napi::Object exports) {
  exports.Set("sampleTokens", Napi::Function::New(env, SampleTokens));
}

OpRegistrar reg(RegisterSampleOps);

}  // namespace
}  // namespace spinlm::napi
