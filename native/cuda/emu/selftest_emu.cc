// Kernels that break the CUDA programming rules on purpose, so the tests can check that the emulator
// catches each fault (an emulator that let them pass would also miss them in the real kernels), and
// one correct kernel using every emulated feature. Exported by spinlm_cuda_emu.node as emuSelfTest(name).
#include <napi.h>

#include <string>
#include <vector>

#include "../cuda_common.cuh"
#include "../kernels.h"
#include "../../napi_util.h"
#include "../runtime.h"

namespace spinlm::cuda::selftest {
namespace {

__global__ void global_overrun(SPIN_GP(float) x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  x[i] = 1.0f;  // no `i < n` guard: the last block writes past the end
  (void)n;
}

__global__ void shared_overrun(SPIN_GP(float) x) {
  SPIN_SHARED(float, buf, 32);
  buf[threadIdx.x] = 1.0f;  // 64 threads, 32 slots
  __syncthreads();
  x[threadIdx.x] = buf[0];
}

__global__ void dynamic_shared_overrun(SPIN_GP(float) x) {
  SPIN_DYN_SHARED(float, buf);
  buf[threadIdx.x + 1] = 1.0f;  // one past the launch's dynamic shared memory for the last thread
  __syncthreads();
  x[threadIdx.x] = buf[0];
}

__global__ void barrier_after_exit(SPIN_GP(float) x) {
  if (threadIdx.x >= 16) return;  // half the block leaves, the rest waits at the barrier
  __syncthreads();
  x[threadIdx.x] = 1.0f;
}

__global__ void barrier_mismatch(SPIN_GP(float) x) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  x[threadIdx.x] = 1.0f;
}

__global__ void shuffle_divergence(SPIN_GP(float) x) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) v = warp_sum(v);  // half a warp shuffles
  x[threadIdx.x] = v;
}

// Correct: a block sum by shuffles then shared memory, and a ballot.
__global__ void block_sum(SPIN_GP(const float) x, SPIN_GP(float) out, SPIN_GP(uint32_t) votes) {
  SPIN_SHARED(float, part, 32);
  float v = x[blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x];
  v = warp_sum(v);
  const unsigned ballot = __ballot_sync(kFull, (threadIdx.x & 1) != 0);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) t += part[w];
    out[blockIdx.x] = t;
    votes[blockIdx.x] = ballot;
  }
}

Napi::Value Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  init();
  float* x = nullptr;
  float* out = nullptr;
  uint32_t* votes = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&x), 100 * sizeof(float));
  cudaMalloc(reinterpret_cast<void**>(&out), 4 * sizeof(float));
  cudaMalloc(reinterpret_cast<void**>(&votes), 4 * sizeof(uint32_t));
  std::string result = "ok";
  try {
    if (name == "globalOverrun") SPIN_LAUNCH(global_overrun, dim3(4), dim3(32), 0, stream(), x, int64_t{100});
    else if (name == "sharedOverrun") SPIN_LAUNCH(shared_overrun, dim3(1), dim3(64), 0, stream(), x);
    else if (name == "dynamicSharedOverrun") SPIN_LAUNCH(dynamic_shared_overrun, dim3(1), dim3(64), 64 * sizeof(float), stream(), x);
    else if (name == "barrierAfterExit") SPIN_LAUNCH(barrier_after_exit, dim3(1), dim3(32), 0, stream(), x);
    else if (name == "barrierMismatch") SPIN_LAUNCH(barrier_mismatch, dim3(1), dim3(32), 0, stream(), x);
    else if (name == "shuffleDivergence") SPIN_LAUNCH(shuffle_divergence, dim3(1), dim3(32), 0, stream(), x);
    else if (name == "blockSum") {
      float host[100];
      for (int i = 0; i < 100; ++i) host[i] = static_cast<float>(i);
      cudaMemcpyAsync(x, host, sizeof host, cudaMemcpyHostToDevice, stream());
      SPIN_LAUNCH(block_sum, dim3(3), dim3(32), 0, stream(), static_cast<const float*>(x), out, votes);
      float sums[3];
      uint32_t v[3];
      cudaMemcpyAsync(sums, out, sizeof sums, cudaMemcpyDeviceToHost, stream());
      cudaMemcpyAsync(v, votes, sizeof v, cudaMemcpyDeviceToHost, stream());
      result = "sums " + std::to_string(static_cast<int>(sums[0])) + " " + std::to_string(static_cast<int>(sums[1])) + " " +
               std::to_string(static_cast<int>(sums[2])) + " ballot " + std::to_string(v[0]);
    } else {
      result = "unknown self-test " + name;
    }
  } catch (const std::exception& e) {
    result = e.what();
  }
  cudaFree(x);
  cudaFree(out);
  cudaFree(votes);
  return Napi::String::New(env, result);
}

// ---- cuBLAS's search, loading and argument mapping (cublas.h), which the emulator never runs ----

// cublasSearch(env: Record<string, string>) -> the candidate files for that environment.
Napi::Value CublasSearch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) spinlm::napi::ThrowType(env, "cublasSearch takes an environment object");
  Napi::Object vars = info[0].As<Napi::Object>();
  const auto paths = blas::search_paths([&](const char* name) {
    Napi::Value v = vars.Get(name);
    return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  });
  Napi::Array out = Napi::Array::New(env, paths.size());
  for (size_t i = 0; i < paths.size(); ++i) out.Set(static_cast<uint32_t>(i), paths[i]);
  return out;
}

// cublasLoad(paths: string[]) -> { path } of the one that loaded, or { error }.
Napi::Value CublasLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) spinlm::napi::ThrowType(env, "cublasLoad takes an array of paths");
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<std::string> paths;
  for (uint32_t i = 0; i < a.Length(); ++i) paths.push_back(a.Get(i).As<Napi::String>().Utf8Value());
  const blas::Library lib = blas::load(paths);
  Napi::Object o = Napi::Object::New(env);
  if (lib.lib) o.Set("path", lib.path);
  else o.Set("error", lib.error);
  return o;
}

// gemmPlanReference(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc): the row-major
// product as the cuBLAS call blas::plan makes, evaluated by blas::reference_gemm (c updated in place).
Napi::Value GemmPlanReference(const Napi::CallbackInfo& info) {
  const bool ta = info[0].ToBoolean(), tb = info[1].ToBoolean();
  auto i64 = [&](int i) { return static_cast<int64_t>(info[i].As<Napi::Number>().DoubleValue()); };
  auto f32 = [&](int i) { return info[i].As<Napi::Float32Array>().Data(); };
  const blas::GemmCall g = blas::plan(ta, tb, i64(2), i64(3), i64(4), i64(7), i64(9), i64(12));
  const float* first = g.first_is_b ? f32(8) : f32(6);
  const float* second = g.first_is_b ? f32(6) : f32(8);
  blas::reference_gemm(g, static_cast<float>(info[5].As<Napi::Number>().DoubleValue()), first, second,
                       static_cast<float>(info[10].As<Napi::Number>().DoubleValue()), f32(11));
  return info.Env().Undefined();
}

// gatherPlan(n, v, sms?) -> { splits, chunk }: logprobGather's launch plan (kernels.h) for that many
// multiprocessors, or for this device's when sms is omitted.
Napi::Value GatherPlanOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sms = 0;
  if (info[2].IsNumber()) {
    sms = info[2].As<Napi::Number>().Int32Value();
  } else {
    init();
    sms = sm_count();
  }
  const GatherPlan p = gather_plan(static_cast<int64_t>(info[0].As<Napi::Number>().DoubleValue()),
                                   static_cast<int64_t>(info[1].As<Napi::Number>().DoubleValue()), sms);
  Napi::Object o = Napi::Object::New(env);
  o.Set("splits", static_cast<double>(p.splits));
  o.Set("chunk", static_cast<double>(p.chunk));
  return o;
}

}  // namespace

void Register(Napi::Object exports) {
  Napi::Env env = exports.Env();
  exports.Set("emuSelfTest", Napi::Function::New(env, Run));
  exports.Set("cublasSearch", Napi::Function::New(env, CublasSearch));
  exports.Set("cublasLoad", Napi::Function::New(env, CublasLoad));
  exports.Set("gemmPlanReference", Napi::Function::New(env, GemmPlanReference));
  exports.Set("gatherPlan", Napi::Function::New(env, GatherPlanOf));
}

}  // namespace spinlm::cuda::selftest
