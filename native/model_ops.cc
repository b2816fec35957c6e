// N-API bindings of the model kernels, for both addons (native/op_binding.h). Every view is
// bounds-checked here; index tensors are range-checked on the host (CPU) or by the kernels (CUDA).
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "op_binding.h"

namespace SPINLM_BIND_NS {
namespace {

struct AttnDims {
  int64_t b, l, nh, nkv, hd;
  float scale;
  int64_t window;  // sliding window (0 = none)
  float softcap;   // attention-logit soft-cap (0 = none)
};

AttnDims ReadAttnDims(const Napi::CallbackInfo& info, size_t at) {
  Napi::Env env = info.Env();
  AttnDims d{ToInt(info[at], "batch"),     ToInt(info[at + 1], "length"),  ToInt(info[at + 2], "heads"),
             ToInt(info[at + 3], "kvHeads"), ToInt(info[at + 4], "headDim"), ToFloat(info[at + 5], "scale"),
             ToInt(info[at + 6], "window"),  ToFloat(info[at + 7], "softcap")};
  if (d.nkv == 0 || d.nh % d.nkv) Throw(env, "attention heads must be a multiple of the key-value heads");
  if (d.window < 0) Throw(env, "attention window must be 0 (none) or positive");
  if (!(d.softcap >= 0.0f) || std::isinf(d.softcap)) Throw(env, "attention softcap must be 0 (none) or finite and positive");
  CheckAttentionLimits(env, d.b, d.l, d.nh, d.hd);
  return d;
}

// The gated MLP's activation: 'silu' (SwiGLU) or 'gelu_tanh' (GeGLU, Gemma).
GluActivation ToGluActivation(Napi::Value v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "silu") return GluActivation::kSilu;
  if (s == "gelu_tanh") return GluActivation::kGeluTanh;
  ThrowType(v.Env(), "swiglu activation must be 'silu' or 'gelu_tanh'");
}

}  // namespace

// matmul(transA, transB, m, n, k, alpha, a, lda, b, bDtype, ldb, beta, c, ldc, rowInvariant, computeBf16, aDtype)
// rowInvariant (A not transposed, B transposed): rows independent of M. computeBf16 rounds A and B to
// bf16 and sums exact bf16 products in f32 (the forms and dtypes ComputeBf16Kernel says the device
// takes; A bf16 only with it).
Napi::Value js::matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool ta = info[0].ToBoolean(), tb = info[1].ToBoolean();
  const int64_t m = ToInt(info[2], "m"), n = ToInt(info[3], "n"), k = ToInt(info[4], "k");
  const float alpha = ToFloat(info[5], "alpha");
  const int64_t lda = ToInt(info[7], "lda"), ldb = ToInt(info[10], "ldb"), ldc = ToInt(info[13], "ldc");
  const DType bdt = FloatDType(info[9], "b dtype");
  const DType adt = FloatDType(info[16], "a dtype");
  const float beta = ToFloat(info[11], "beta");
  for (auto [x, what] : {std::pair{m, "m"}, {n, "n"}, {k, "k"}, {lda, "lda"}, {ldb, "ldb"}, {ldc, "ldc"}}) CheckGemmDim(env, x, what);
  // A is stored [ta ? k : m, lda], B [tb ? n : k, ldb], C [m, ldc]
  const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
  if (lda < std::max<int64_t>(1, a_cols) || ldb < std::max<int64_t>(1, b_cols) || ldc < std::max<int64_t>(1, n))
    Throw(env, "matmul: a leading dimension is smaller than its row");
  auto bytes = [&](int64_t rows, int64_t ld, int64_t cols, int64_t es) { return rows == 0 ? 0 : ((rows - 1) * ld + cols) * es; };
  const void* a = View(info[6], "a", bytes(a_rows, lda, a_cols, dtype_size(adt)));
  const void* b = View(info[8], "b", bytes(b_rows, ldb, b_cols, dtype_size(bdt)));
  float* c = View<float>(info[12], "c", bytes(m, ldc, n, 4));
  const bool bf16 = info[15].ToBoolean();
  if (adt != DType::kF32 && !bf16) Throw(env, "matmul: a bf16 a needs computeBf16");
  if (bf16 && !ComputeBf16Kernel(ta, tb, adt, bdt))
    Throw(env, "matmul: this device's computeBf16 kernel takes op(a) = a, op(b) = b^T, an f32 a and a bf16 b (bf16_compute.ts rounds other forms)");
  const bool row_invariant = info[14].ToBoolean();
  if (row_invariant && (ta || !tb)) Throw(env, "matmul: rowInvariant needs op(a) = a and op(b) = b^T (a linear layer)");
  return Run(info, [&] { kern::matmul(ta, tb, m, n, k, alpha, a, adt, lda, b, bdt, ldb, beta, c, ldc, row_invariant, bf16); });
}

// matmulRowsMany(m, k, a, lda, bs, bDtypes, ns, outs, computeBf16): outs[i] [m, ns[i]] = a [m, k] bs[i] [ns[i], k]^T,
// row-invariant, every B [n, k] and C [m, n] contiguous (the fused projections of generation); computeBf16 as matmul's.
Napi::Value js::matmulRowsMany(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t m = ToInt(info[0], "m"), k = ToInt(info[1], "k"), lda = ToInt(info[3], "lda");
  if (lda < std::max<int64_t>(1, k)) Throw(env, "matmulRowsMany: lda is smaller than a row of a");
  for (int i = 4; i < 8; ++i)
    if (!info[i].IsArray()) ThrowType(env, "matmulRowsMany: bs, bDtypes, ns and outs must be arrays");
  const Napi::Array bs = info[4].As<Napi::Array>(), dts = info[5].As<Napi::Array>(), ns = info[6].As<Napi::Array>(),
                    outs = info[7].As<Napi::Array>();
  const uint32_t count = bs.Length();
  if (count == 0 || count > 16 || dts.Length() != count || ns.Length() != count || outs.Length() != count)
    Throw(env, "matmulRowsMany: bs, bDtypes, ns and outs need the same length, 1 to 16");
  const float* a = View<float>(info[2], "a", m == 0 ? 0 : CheckedMul(env, m - 1, lda, "a bytes") * 4 + k * 4);
  const bool bf16 = info[8].ToBoolean();
  std::vector<RowsJob> jobs;
  for (uint32_t i = 0; i < count; ++i) {
    const DType dt = ToDType(dts.Get(i), "b dtype");
    if (dt == DType::kI32) ThrowType(env, "b dtype must be f32 or bf16");
    const int64_t n = ToInt(ns.Get(i), "n");
    const void* b = View(bs.Get(i), "b", CheckedMul(env, n, k * dtype_size(dt), "b bytes"));
    float* out = View<float>(outs.Get(i), "out", CheckedMul(env, m, n * 4, "out bytes"));
    if (bf16 && !ComputeBf16Kernel(false, true, DType::kF32, dt)) Throw(env, "matmulRowsMany: this device's computeBf16 kernel needs bf16 weights");
    jobs.push_back(RowsJob{b, dt, n, k, out, n});
  }
  return Run(info, [&] { kern::matmul_rows_many(m, k, a, lda, jobs.data(), static_cast<int>(jobs.size()), bf16); });
}

// embedding(ids, t, table, dtype, v, h, out)
Napi::Value js::embedding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), v = ToInt(info[4], "vocab"), h = ToInt(info[5], "hidden");
  const DType dt = FloatDType(info[3], "table dtype");
  const int32_t* ids = View<int32_t>(info[0], "ids", t * 4);
  const void* table = View(info[2], "table", CheckedMul(env, v * h, dtype_size(dt), "table bytes"));
  float* out = View<float>(info[6], "out", CheckedMul(env, t, h * 4, "out bytes"));
  if (IndicesOutsideOnHost(ids, t, 0, v, kNoException, kErrTokenIds)) {
    PoisonF32(out, t * h);
    return env.Undefined();
  }
  return Run(info, [&] { kern::embedding(ids, t, table, dt, v, h, out); });
}

// embeddingBackward(ids, t, dout, v, h, dtable)
Napi::Value js::embeddingBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), v = ToInt(info[3], "vocab"), h = ToInt(info[4], "hidden");
  const int32_t* ids = View<int32_t>(info[0], "ids", t * 4);
  const float* dout = View<float>(info[2], "dout", CheckedMul(env, t, h * 4, "dout bytes"));
  float* dtable = View<float>(info[5], "dtable", CheckedMul(env, v, h * 4, "dtable bytes"));
  if (IndicesOutsideOnHost(ids, t, 0, v, kNoException, kErrTokenIds)) return env.Undefined();
  return Run(info, [&] { kern::embedding_backward(ids, t, dout, v, h, dtable); });
}

// rmsnorm(x, w, wDtype, t, h, eps, y, rstd, unitOffset): unitOffset scales by 1 + w (Gemma)
Napi::Value js::rmsnorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType wdt = FloatDType(info[2], "weight dtype");
  const int64_t t = ToInt(info[3], "t"), h = ToInt(info[4], "hidden");
  const float eps = ToFloat(info[5], "eps");
  const float* x = View<float>(info[0], "x", CheckedMul(env, t, h * 4, "x bytes"));
  const void* w = View(info[1], "weight", h * dtype_size(wdt));
  float* y = View<float>(info[6], "y", t * h * 4);
  float* rstd = View<float>(info[7], "rstd", t * 4);
  const bool unit_offset = info[8].ToBoolean();
  return Run(info, [&] { kern::rmsnorm(x, w, wdt, t, h, eps, y, rstd, unit_offset); });
}

// rmsnormBackward(x, w, wDtype, rstd, dy, t, h, dx, dw|null, unitOffset)
Napi::Value js::rmsnormBackward(const Napi::CallbackInfo& info) {
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
  const bool unit_offset = info[9].ToBoolean();
  return Run(info, [&] { kern::rmsnorm_backward(x, w, wdt, rstd, dy, t, h, dx, dw, unit_offset); });
}

// rope(x, positions, invFreq, t, heads, hd, attnScale, inverse): invFreq is a host Float32Array [hd / 2]
Napi::Value js::rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[3], "t"), heads = ToInt(info[4], "heads"), hd = ToInt(info[5], "headDim");
  if (hd % 2) Throw(env, "rope needs an even head dimension");
  if (hd / 2 > kRopeMaxHalf) Throw(env, "rope supports head dimensions up to " + std::to_string(2 * kRopeMaxHalf));
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    ThrowType(env, "rope invFreq must be a Float32Array");
  Napi::Float32Array fa = info[2].As<Napi::Float32Array>();
  if (static_cast<int64_t>(fa.ElementLength()) != hd / 2) Throw(env, "rope invFreq must hold headDim / 2 values");
  const float attn = static_cast<float>(ToFloat(info[6], "attnScale"));
  if (!std::isfinite(attn)) Throw(env, "rope attnScale must be finite");
  std::vector<float> inv_freq(fa.Data(), fa.Data() + hd / 2);
  float* x = View<float>(info[0], "x", CheckedMul(env, t, heads * hd * 4, "x bytes"));
  const int32_t* pos = View<int32_t>(info[1], "positions", t * 4);
  const bool inverse = info[7].ToBoolean();
  if (IndicesOutsideOnHost(pos, t, 0, INT32_MAX + int64_t{1}, kNoException, kErrPositions)) return env.Undefined();
  return Run(info, [&] { kern::rope(x, pos, t, heads, hd, inv_freq.data(), attn, inverse); });
}

// attention(q, k, v, keyMask, spans|null, b, l, nh, nkv, hd, scale, window, softcap, out, lse, bf16)
// spans i32 [B, L, 3] (lo, hideLo, hideHi per query: AttentionOpts.spans in src/backend/backend.ts);
// bf16: computeDtype 'bf16' (a tensor-core kernel where the device header has one, else refused)
Napi::Value js::attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const AttnDims d = ReadAttnDims(info, 5);
  const int64_t qb = CheckedMul(env, d.b * d.l, d.nh * d.hd * 4, "q bytes"), kb = d.b * d.l * d.nkv * d.hd * 4;
  const float* q = View<float>(info[0], "q", qb);
  const float* k = View<float>(info[1], "k", kb);
  const float* v = View<float>(info[2], "v", kb);
  const int32_t* mask = View<int32_t>(info[3], "keyMask", d.b * d.l * 4);
  const int32_t* spans = OptView<int32_t>(info[4], "spans", d.b * d.l * 3 * 4);
  float* out = View<float>(info[13], "out", qb);
  float* lse = View<float>(info[14], "lse", d.b * d.nh * d.l * 4);
  const bool bf16 = info[15].ToBoolean();
  if (bf16)
    if (const char* why = Bf16AttentionRefusal(d.hd)) Throw(env, std::string("attention: ") + why);
  if (SpansInvalidOnHost(spans, d.b, d.l)) {
    PoisonF32(out, d.b * d.l * d.nh * d.hd);
    PoisonF32(lse, d.b * d.nh * d.l);
    return env.Undefined();
  }
  return Run(info, [&] {
    kern::attention(q, k, v, mask, spans, d.b, d.l, d.nh, d.nkv, d.hd, d.scale, d.window, d.softcap, out, lse, bf16);
  });
}

// attentionBackward(q, k, v, keyMask, spans|null, out, lse, dout, b, l, nh, nkv, hd, scale, window, softcap, dq, dk, dv, bf16)
// bf16: AttentionOpts.computeDtype 'bf16' on a device with a kernel for it (kBf16AttentionBackwardKernel)
Napi::Value js::attentionBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const AttnDims d = ReadAttnDims(info, 8);
  const int64_t qb = CheckedMul(env, d.b * d.l, d.nh * d.hd * 4, "q bytes"), kb = d.b * d.l * d.nkv * d.hd * 4;
  const float* q = View<float>(info[0], "q", qb);
  const float* k = View<float>(info[1], "k", kb);
  const float* v = View<float>(info[2], "v", kb);
  const int32_t* mask = View<int32_t>(info[3], "keyMask", d.b * d.l * 4);
  const int32_t* spans = OptView<int32_t>(info[4], "spans", d.b * d.l * 3 * 4);
  const float* out = View<float>(info[5], "out", qb);
  const float* lse = View<float>(info[6], "lse", d.b * d.nh * d.l * 4);
  const float* dout = View<float>(info[7], "dout", qb);
  float* dq = View<float>(info[16], "dq", qb);
  float* dk = View<float>(info[17], "dk", kb);
  float* dv = View<float>(info[18], "dv", kb);
  const bool bf16 = info[19].ToBoolean();
  if (bf16 && !kBf16AttentionBackwardKernel)
    Throw(env, "attentionBackward: bf16 is not a kernel of this device (bf16_compute.ts rounds q, k, v and dout first)");
  if (bf16 && d.hd % 16) Throw(env, "attentionBackward: the bf16 kernel takes head dimensions that are multiples of 16");
  if (SpansInvalidOnHost(spans, d.b, d.l)) {
    for (auto [p, n] : {std::pair{dq, d.b * d.l * d.nh * d.hd}, {dk, d.b * d.l * d.nkv * d.hd}, {dv, d.b * d.l * d.nkv * d.hd}}) PoisonF32(p, n);
    return env.Undefined();
  }
  return Run(info, [&] {
    kern::attention_backward(q, k, v, mask, spans, out, lse, dout, d.b, d.l, d.nh, d.nkv, d.hd, d.scale, d.window, d.softcap, dq, dk,
                             dv, bf16);
  });
}

// attentionDecode(q, kCache, vCache, cacheDtype, lengths, keyMask|null, b, lmax, nh, nkv, hd, scale, window, softcap, out)
Napi::Value js::attentionDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const AttnDims d = ReadAttnDims(info, 6);  // l = lmax
  const DType cdt = FloatDType(info[3], "cache dtype");
  const int64_t qb = d.b * d.nh * d.hd * 4, cb = CheckedMul(env, d.b * d.l, d.nkv * d.hd * dtype_size(cdt), "cache bytes");
  const float* q = View<float>(info[0], "q", qb);
  const void* kc = View(info[1], "kCache", cb);
  const void* vc = View(info[2], "vCache", cb);
  const int32_t* lengths = View<int32_t>(info[4], "lengths", d.b * 4);
  const int32_t* mask = OptView<int32_t>(info[5], "keyMask", d.b * d.l * 4);
  float* out = View<float>(info[14], "out", qb);
  if (IndicesOutsideOnHost(lengths, d.b, 0, d.l + 1, kNoException, kErrDecodeLengths)) {
    PoisonF32(out, d.b * d.nh * d.hd);
    return env.Undefined();
  }
  return Run(info, [&] { kern::attention_decode(q, kc, vc, cdt, lengths, mask, d.b, d.l, d.nh, d.nkv, d.hd, d.scale, d.window, d.softcap, out);
  });
}

// swiglu(gate, up, n, out, activation): activation(gate) * up, activation 'silu' or 'gelu_tanh'
Napi::Value js::swiglu(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  const GluActivation act = ToGluActivation(info[4]);
  const float* g = View<float>(info[0], "gate", n * 4);
  const float* u = View<float>(info[1], "up", n * 4);
  float* out = View<float>(info[3], "out", n * 4);
  return Run(info, [&] { kern::swiglu(g, u, n, out, act); });
}

// swigluBackward(gate, up, dout, n, dgate, dup, activation)
Napi::Value js::swigluBackward(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[3], "n");
  const GluActivation act = ToGluActivation(info[6]);
  const float* g = View<float>(info[0], "gate", n * 4);
  const float* u = View<float>(info[1], "up", n * 4);
  const float* dout = View<float>(info[2], "dout", n * 4);
  float* dg = View<float>(info[4], "dgate", n * 4);
  float* du = View<float>(info[5], "dup", n * 4);
  return Run(info, [&] { kern::swiglu_backward(g, u, dout, n, dg, du, act); });
}

// scatterRows(src, index, rows, cols, dst, dstDtype, dstRows): dst[index[r]] = src[r] (bf16 dst: rounded)
Napi::Value js::scatterRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = ToInt(info[2], "rows"), cols = ToInt(info[3], "cols"), dst_rows = ToInt(info[6], "dstRows");
  const DType ddt = FloatDType(info[5], "dst dtype");
  const int32_t* index = View<int32_t>(info[1], "index", rows * 4);
  if (IndicesOutsideOnHost(index, rows, 0, dst_rows, kNoException, kErrScatterIndex)) return env.Undefined();
  const float* src = View<float>(info[0], "src", CheckedMul(env, rows, cols * 4, "src bytes"));
  void* dst = View(info[4], "dst", CheckedMul(env, dst_rows, cols * dtype_size(ddt), "dst bytes"));
  return Run(info, [&] { kern::scatter_rows(src, index, rows, cols, dst, ddt, dst_rows); });
}

// add(a, b, n, y)
Napi::Value js::add(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  const float* a = View<float>(info[0], "a", n * 4);
  const float* b = View<float>(info[1], "b", n * 4);
  float* y = View<float>(info[3], "y", n * 4);
  return Run(info, [&] { kern::add(a, b, n, y); });
}

// addBias(x, bias, biasDtype, t, n)
Napi::Value js::addBias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = FloatDType(info[2], "bias dtype");
  const int64_t t = ToInt(info[3], "t"), n = ToInt(info[4], "n");
  float* x = View<float>(info[0], "x", CheckedMul(env, t, n * 4, "x bytes"));
  const void* bias = View(info[1], "bias", n * dtype_size(dt));
  return Run(info, [&] { kern::add_bias(x, bias, dt, t, n); });
}

// biasBackward(dy, t, n, dbias): dbias += column sums of dy
Napi::Value js::biasBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), n = ToInt(info[2], "n");
  const float* dy = View<float>(info[0], "dy", CheckedMul(env, t, n * 4, "dy bytes"));
  float* db = View<float>(info[3], "dbias", n * 4);
  return Run(info, [&] { kern::bias_backward(dy, t, n, db); });
}

}  // namespace SPINLM_BIND_NS
