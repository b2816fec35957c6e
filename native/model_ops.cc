// N-API bindings of the model kernels (native/cpu/model_kernels.h). Every view is bounds-checked and
// every id range-checked here, so the kernels can assume valid input.
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/model_kernels.h"
#include "index_checks.h"
#include "napi_util.h"

namespace spinlm::napi {
namespace {

float ToFloat(Napi::Value v, const char* what) {
  if (!v.IsNumber()) ThrowType(v.Env(), std::string(what) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) Throw(v.Env(), std::string(what) + " must be finite");
  return static_cast<float>(d);
}

DType FloatDType(Napi::Value v, const char* what) {
  const DType d = ToDType(v, what);
  if (d == DType::kI32) ThrowType(v.Env(), std::string(what) + " must be f32 or bf16");
  return d;
}

// cblas takes int dimensions.
void CheckBlasDim(Napi::Env env, int64_t x, const char* what) {
  if (x > std::numeric_limits<int>::max()) Throw(env, std::string(what) + " is too large for BLAS (> 2^31 - 1)");
}

// matmul(transA, transB, m, n, k, alpha, a, lda, b, bDtype, ldb, beta, c, ldc, rowInvariant, computeBf16)
// rowInvariant (A not transposed, B transposed) takes matmul_rows: rows independent of M. computeBf16
// (the same layout, B bf16) rounds A to bf16 and sums exact bf16 products in f32, also row-invariant.
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool ta = info[0].ToBoolean(), tb = info[1].ToBoolean();
  const int64_t m = ToInt(info[2], "m"), n = ToInt(info[3], "n"), k = ToInt(info[4], "k");
  const float alpha = ToFloat(info[5], "alpha");
  const int64_t lda = ToInt(info[7], "lda"), ldb = ToInt(info[10], "ldb"), ldc = ToInt(info[13], "ldc");
  const DType bdt = FloatDType(info[9], "b dtype");
  const float beta = ToFloat(info[11], "beta");
  for (auto [x, what] : {std::pair{m, "m"}, {n, "n"}, {k, "k"}, {lda, "lda"}, {ldb, "ldb"}, {ldc, "ldc"}}) CheckBlasDim(env, x, what);
  // A is stored [ta ? k : m, lda], B [tb ? n : k, ldb], C [m, ldc]
  const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
  if (lda < std::max<int64_t>(1, a_cols) || ldb < std::max<int64_t>(1, b_cols) || ldc < std::max<int64_t>(1, n))
    Throw(env, "matmul: a leading dimension is smaller than its row");
  auto bytes = [&](int64_t rows, int64_t ld, int64_t cols, int64_t es) { return rows == 0 ? 0 : ((rows - 1) * ld + cols) * es; };
  const float* a = View<float>(info[6], "a", bytes(a_rows, lda, a_cols, 4));
  const void* b = View(info[8], "b", bytes(b_rows, ldb, b_cols, dtype_size(bdt)));
  float* c = View<float>(info[12], "c", bytes(m, ldc, n, 4));
  const bool bf16 = info[15].ToBoolean();
  if (bf16 && (ta || !tb || bdt != DType::kBF16)) Throw(env, "matmul: computeBf16 needs op(a) = a, op(b) = b^T and a bf16 b");
  if (info[14].ToBoolean() || bf16) {
    if (ta || !tb) Throw(env, "matmul: rowInvariant needs op(a) = a and op(b) = b^T (a linear layer)");
    matmul_rows(m, n, k, alpha, a, lda, b, bdt, ldb, beta, c, ldc, bf16);
  } else {
    matmul(ta, tb, m, n, k, alpha, a, lda, b, bdt, ldb, beta, c, ldc);
  }
  return env.Undefined();
}

// matmulRowsMany(m, k, a, lda, bs, bDtypes, ns, outs, computeBf16): outs[i] [m, ns[i]] = a [m, k] bs[i] [ns[i], k]^T,
// row-invariant, every B and C contiguous (the fused projections of generation); computeBf16 as matmul's.
Napi::Value MatmulRowsMany(const Napi::CallbackInfo& info) {
  const RowsManyArgs r = ParseRowsMany(info, [](Napi::Value v, const char* what, int64_t bytes) { return View(v, what, bytes); });
  const bool bf16 = info[8].ToBoolean();
  std::vector<RowsJob> jobs;
  for (const RowsManyJob& j : r.jobs) {
    if (bf16 && j.dt != DType::kBF16) Throw(info.Env(), "matmulRowsMany: computeBf16 needs bf16 weights");
    jobs.push_back(RowsJob{j.b, j.dt, j.n, r.k, j.out, j.n});
  }
  matmul_rows_many(r.m, r.k, r.a, r.lda, jobs.data(), static_cast<int>(jobs.size()), bf16);
  return info.Env().Undefined();
}

// embedding(ids, t, table, dtype, v, h, out)
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), v = ToInt(info[4], "vocab"), h = ToInt(info[5], "hidden");
  const DType dt = FloatDType(info[3], "table dtype");
  const int32_t* ids = View<int32_t>(info[0], "ids", t * 4);
  const void* table = View(info[2], "table", CheckedMul(env, v * h, dtype_size(dt), "table bytes"));
  float* out = View<float>(info[6], "out", CheckedMul(env, t, h * 4, "out bytes"));
  if (IndicesOutside(ids, t, 0, v, kNoException, kErrTokenIds)) {
    PoisonF32(out, t * h);
    return env.Undefined();
  }
  embedding(ids, t, table, dt, h, out);
  return env.Undefined();
}

// embeddingBackward(ids, t, dout, v, h, dtable)
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), v = ToInt(info[3], "vocab"), h = ToInt(info[4], "hidden");
  const int32_t* ids = View<int32_t>(info[0], "ids", t * 4);
  const float* dout = View<float>(info[2], "dout", CheckedMul(env, t, h * 4, "dout bytes"));
  float* dtable = View<float>(info[5], "dtable", CheckedMul(env, v, h * 4, "dtable bytes"));
  if (IndicesOutside(ids, t, 0, v, kNoException, kErrTokenIds)) return env.Undefined();
  embedding_backward(ids, t, dout, h, dtable);
  return env.Undefined();
}

// rmsnorm(x, w, wDtype, t, h, eps, y, rstd)
Napi::Value Rmsnorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType wdt = FloatDType(info[2], "weight dtype");
  const int64_t t = ToInt(info[3], "t"), h = ToInt(info[4], "hidden");
  const float eps = ToFloat(info[5], "eps");
  const float* x = View<float>(info[0], "x", CheckedMul(env, t, h * 4, "x bytes"));
  const void* w = View(info[1], "weight", h * dtype_size(wdt));
  float* y = View<float>(info[6], "y", t * h * 4);
  float* rstd = View<float>(info[7], "rstd", t * 4);
  rmsnorm(x, w, wdt, t, h, eps, y, rstd);
  return env.Undefined();
}

// rmsnormBackward(x, w, wDtype, rstd, dy, t, h, dx, dw|null)
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
  float* dw = info[8].IsNull() ? nullptr : View<float>(info[8], "dw", h * 4);
  rmsnorm_backward(x, w, wdt, rstd, dy, t, h, dx, dw);
  return env.Undefined();
}

// rope(x, positions, t, heads, hd, theta, scale, inverse)
Napi::Value Rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[2], "t"), heads = ToInt(info[3], "heads"), hd = ToInt(info[4], "headDim");
  if (hd % 2) Throw(env, "rope needs an even head dimension");
  const double theta = ToFloat(info[5], "theta"), scale = ToFloat(info[6], "scale");
  if (!(theta > 0) || !(scale > 0)) Throw(env, "rope theta and scale must be positive");
  float* x = View<float>(info[0], "x", CheckedMul(env, t, heads * hd * 4, "x bytes"));
  const int32_t* pos = View<int32_t>(info[1], "positions", t * 4);
  if (IndicesOutside(pos, t, 0, INT32_MAX + int64_t{1}, kNoException, kErrPositions)) return env.Undefined();
  rope(x, pos, t, heads, hd, theta, scale, info[7].ToBoolean());
  return env.Undefined();
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
  CheckBlasDim(env, d.l * d.nh * d.hd, "length x heads x headDim");
  return d;
}

// attention(q, k, v, keyMask, b, l, nh, nkv, hd, scale, out, lse)
Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const AttnDims d = ReadAttnDims(info, 4);
  const int64_t qb = CheckedMul(env, d.b * d.l, d.nh * d.hd * 4, "q bytes"), kb = d.b * d.l * d.nkv * d.hd * 4;
  attention(View<float>(info[0], "q", qb), View<float>(info[1], "k", kb), View<float>(info[2], "v", kb),
            View<int32_t>(info[3], "keyMask", d.b * d.l * 4), d.b, d.l, d.nh, d.nkv, d.hd, d.scale,
            View<float>(info[10], "out", qb), View<float>(info[11], "lse", d.b * d.nh * d.l * 4));
  return env.Undefined();
}

// attentionBackward(q, k, v, keyMask, out, lse, dout, b, l, nh, nkv, hd, scale, dq, dk, dv)
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const AttnDims d = ReadAttnDims(info, 7);
  const int64_t qb = CheckedMul(env, d.b * d.l, d.nh * d.hd * 4, "q bytes"), kb = d.b * d.l * d.nkv * d.hd * 4;
  attention_backward(View<float>(info[0], "q", qb), View<float>(info[1], "k", kb), View<float>(info[2], "v", kb),
                     View<int32_t>(info[3], "keyMask", d.b * d.l * 4), View<float>(info[4], "out", qb),
                     View<float>(info[5], "lse", d.b * d.nh * d.l * 4), View<float>(info[6], "dout", qb),
                     d.b, d.l, d.nh, d.nkv, d.hd, d.scale, View<float>(info[13], "dq", qb),
                     View<float>(info[14], "dk", kb), View<float>(info[15], "dv", kb));
  return env.Undefined();
}

// attentionDecode(q, kCache, vCache, cacheDtype, lengths, keyMask|null, b, lmax, nh, nkv, hd, scale, out)
Napi::Value AttentionDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const AttnDims d = ReadAttnDims(info, 6);  // l = lmax
  const DType cdt = FloatDType(info[3], "cache dtype");
  const int64_t qb = d.b * d.nh * d.hd * 4, cb = CheckedMul(env, d.b * d.l, d.nkv * d.hd * dtype_size(cdt), "cache bytes");
  const int32_t* lengths = View<int32_t>(info[4], "lengths", d.b * 4);
  const int32_t* mask = info[5].IsNull() ? nullptr : View<int32_t>(info[5], "keyMask", d.b * d.l * 4);
  float* out = View<float>(info[12], "out", qb);
  if (IndicesOutside(lengths, d.b, 0, d.l + 1, kNoException, kErrDecodeLengths)) {
    PoisonF32(out, d.b * d.nh * d.hd);
    return env.Undefined();
  }
  attention_decode(View<float>(info[0], "q", qb), View(info[1], "kCache", cb), View(info[2], "vCache", cb), cdt, lengths, mask, d.b,
                   d.l, d.nh, d.nkv, d.hd, d.scale, out);
  return env.Undefined();
}

// swiglu(gate, up, n, out); swigluBackward(gate, up, dout, n, dgate, dup)
Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  swiglu(View<float>(info[0], "gate", n * 4), View<float>(info[1], "up", n * 4), n, View<float>(info[3], "out", n * 4));
  return info.Env().Undefined();
}
Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[3], "n");
  swiglu_backward(View<float>(info[0], "gate", n * 4), View<float>(info[1], "up", n * 4), View<float>(info[2], "dout", n * 4), n,
                  View<float>(info[4], "dgate", n * 4), View<float>(info[5], "dup", n * 4));
  return info.Env().Undefined();
}

// scatterRows(src, index, rows, cols, dst, dstDtype, dstRows): dst[index[r]] = src[r] (bf16 dst: rounded)
Napi::Value ScatterRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = ToInt(info[2], "rows"), cols = ToInt(info[3], "cols"), dst_rows = ToInt(info[6], "dstRows");
  const DType ddt = FloatDType(info[5], "dst dtype");
  const int32_t* index = View<int32_t>(info[1], "index", rows * 4);
  if (IndicesOutside(index, rows, 0, dst_rows, kNoException, kErrScatterIndex)) return env.Undefined();
  scatter_rows(View<float>(info[0], "src", CheckedMul(env, rows, cols * 4, "src bytes")), index, rows, cols,
               View(info[4], "dst", CheckedMul(env, dst_rows, cols * dtype_size(ddt), "dst bytes")), ddt);
  return env.Undefined();
}

// add(a, b, n, y)
Napi::Value Add(const Napi::CallbackInfo& info) {
  const int64_t n = ToInt(info[2], "n");
  add(View<float>(info[0], "a", n * 4), View<float>(info[1], "b", n * 4), n, View<float>(info[3], "y", n * 4));
  return info.Env().Undefined();
}

// addBias(x, bias, biasDtype, t, n); biasBackward(dy, t, n, dbias)
Napi::Value AddBias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = FloatDType(info[2], "bias dtype");
  const int64_t t = ToInt(info[3], "t"), n = ToInt(info[4], "n");
  add_bias(View<float>(info[0], "x", CheckedMul(env, t, n * 4, "x bytes")), View(info[1], "bias", n * dtype_size(dt)), dt, t, n);
  return env.Undefined();
}
Napi::Value BiasBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t t = ToInt(info[1], "t"), n = ToInt(info[2], "n");
  bias_backward(View<float>(info[0], "dy", CheckedMul(env, t, n * 4, "dy bytes")), t, n, View<float>(info[3], "dbias", n * 4));
  return env.Undefined();
}

void RegisterModelOps(Napi::Env env, Napi::Object exports) {
  exports.Set("matmul", Napi::Function::New(env, Matmul));
  exports.Set("matmulRowsMany", Napi::Function::New(env, MatmulRowsMany));
  exports.Set("embedding", Napi::Function::New(env, Embedding));
  exports.Set("embeddingBackward", Napi::Function::New(env, EmbeddingBackward));
  exports.Set("rmsnorm", Napi::Function::New(env, Rmsnorm));
  exports.Set("rmsnormBackward", Napi::Function::New(env, RmsnormBackward));
  exports.Set("rope", Napi::Function::New(env, Rope));
  exports.Set("attention", Napi::Function::New(env, Attention));
  exports.Set("attentionBackward", Napi::Function::New(env, AttentionBackward));
  exports.Set("attentionDecode", Napi::Function::New(env, AttentionDecode));
  exports.Set("swiglu", Napi::Function::New(env, Swiglu));
  exports.Set("swigluBackward", Napi::Function::New(env, SwigluBackward));
  exports.Set("scatterRows", Napi::Function::New(env, ScatterRows));
  exports.Set("add", Napi::Function::New(env, Add));
  exports.Set("addBias", Napi::Function::New(env, AddBias));
  exports.Set("biasBackward", Napi::Function::New(env, BiasBackward));
}

OpRegistrar reg(RegisterModelOps);

}  // namespace
}  // namespace spinlm::napi
