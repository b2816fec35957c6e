// N-API binding of the sampling kernel, for both addons (native/op_binding.h).
#include "op_binding.h"

namespace SPINLM_BIND_NS {

// sampleTokens(logits f32 [b, v], b, v, limit, rng i32 [b, 4], active i32 [b], temperature, topK, topP, out i32 [b]):
// only ids < limit (1 <= limit <= v) are chosen.
Napi::Value js::sampleTokens(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t b = ToInt(info[1], "b"), v = ToInt(info[2], "v");
  if (b > 0 && v < 1) Throw(env, "sampling needs a vocabulary of at least 1");
  const int64_t limit = ToInt(info[3], "limit");
  if (b > 0 && (limit < 1 || limit > v)) Throw(env, "sampling: limit must be in [1, v]");
  const float* logits = View<float>(info[0], "logits", CheckedMul(env, b, v * 4, "logits bytes"));
  int32_t* rng = View<int32_t>(info[4], "rng", b * 16);
  const int32_t* active = View<int32_t>(info[5], "active", b * 4);
  for (int i = 6; i <= 8; ++i)
    if (!info[i].IsNumber()) ThrowType(env, "sampling options must be numbers");
  const double temperature = info[6].As<Napi::Number>().DoubleValue(), top_p = info[8].As<Napi::Number>().DoubleValue();
  const int64_t top_k = ToInt(info[7], "topK");
  if (!(temperature >= 0) || !(top_p > 0 && top_p <= 1)) Throw(env, "temperature must be >= 0 and top_p in (0, 1]");
  int32_t* out = View<int32_t>(info[9], "out", b * 4);
  return Run(info, [&] { kern::sample_tokens(logits, b, v, limit, rng, active, temperature, top_k, top_p, out); });
}

}  // namespace SPINLM_BIND_NS
