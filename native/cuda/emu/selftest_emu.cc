// Kernels that break the CUDA programming rules on purpose, so the tests can check that the emulator
// catches each fault (an emulator that let them pass would also miss them in the real kernels), and
// one correct kernel using every emulated feature. Exported by spinlm_cuda_emu.node as emuSelfTest(name).
#include <napi.h>

#include <cmath>
#include <string>
#include <vector>

#include "../cuda_common.cuh"
#include "../kernels.h"
#include "../../napi_util.h"
#include "../runtime.h"

namespace spinlm::cuda {
void sample_replay_check(const double* vals, int64_t n, double bound, double* out);  // sample.cu (emulator only)
}

namespace spinlm::cuda::selftest {
std::string wmma_case(const std::string& name, float* x);  // selftest_wmma_emu.cc
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

// A shared-memory race: each thread reads its neighbour's slot with no __syncthreads() after the writes.
__global__ void shared_race_raw(SPIN_GP(float) x) {
  SPIN_SHARED(float, buf, 64);
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  x[threadIdx.x] = buf[(threadIdx.x + 1) % 64];  // missing __syncthreads() before this read
}

// The other order: reads a slot, then (no barrier) another thread overwrites it (write after read).
__global__ void shared_race_war(SPIN_GP(float) x) {
  SPIN_SHARED(float, buf, 64);
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  const float mine = buf[(threadIdx.x + 1) % 64];
  buf[threadIdx.x] = mine * 2.0f;  // missing __syncthreads() between the reads and these writes
  __syncthreads();
  x[threadIdx.x] = buf[threadIdx.x];
}

// sequence_logprob_kernel's old flag (loss.cu before __syncthreads_or): every thread that sees a bad
// value stores 1 to one shared int in the same barrier interval, a write-write race (benign on a GPU
// only because every writer stores the same value; the race detector does not rely on that).
__global__ void shared_flag_race(SPIN_GP(float) x) {
  SPIN_SHARED(int, flag, 1);
  if (threadIdx.x == 0) flag[0] = 0;
  __syncthreads();
  if (threadIdx.x % 3 == 0) flag[0] = 1;
  __syncthreads();
  x[threadIdx.x] = static_cast<float>(flag[0]);
}

// Correct: the same flag through __syncthreads_or.
__global__ void barrier_or_flag(SPIN_GP(float) x) {
  const int any = __syncthreads_or(threadIdx.x == 37);
  const int all = __syncthreads_and(threadIdx.x < 64);
  const int count = __syncthreads_count(threadIdx.x % 3 == 0);
  x[threadIdx.x] = static_cast<float>(any * 100 + all * 10) + (threadIdx.x == 0 ? static_cast<float>(count) * 1000 : 0.0f);
}

// The same race in dynamic shared memory.
__global__ void dyn_shared_race(SPIN_GP(float) x) {
  SPIN_DYN_SHARED(float, buf);
  buf[threadIdx.x] = 1.0f;
  x[threadIdx.x] = buf[63 - threadIdx.x];
}

// Correct: lanes of one warp exchange through shared memory ordered by __syncwarp(); the block's
// barrier orders the warps' slots.
__global__ void warp_ordered_shared(SPIN_GP(float) x) {
  SPIN_SHARED(float, buf, 64);
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncwarp();
  const float a = buf[(threadIdx.x & ~31u) | ((threadIdx.x + 1) & 31u)];
  __syncthreads();
  x[threadIdx.x] = a + buf[63 - threadIdx.x];
}

// Reads static shared memory no thread of this block wrote: block 0 writes it, block 1 must not see
// block 0's values (each block's shared memory is fresh garbage).
__global__ void shared_read_before_write(SPIN_GP(float) x) {
  SPIN_SHARED(float, buf, 32);
  if (blockIdx.x == 0) buf[threadIdx.x] = 1.0f;
  __syncthreads();
  x[blockIdx.x * 32 + threadIdx.x] = buf[threadIdx.x];
}

// Declares 64 threads at most.
__global__ void __launch_bounds__(64) bounded_kernel(SPIN_GP(float) x) { x[threadIdx.x] = 1.0f; }

// Writes with no guard through 1000 bytes of a caching-allocator block (its size class is larger).
__global__ void write_n(SPIN_GP(float) x, int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) x[i] = 0.0f;
}

// Uses dynamic shared memory (any size); each thread writes its own slot.
__global__ void big_dyn_shared(SPIN_GP(float) x) {
  SPIN_DYN_SHARED(float, buf);
  buf[threadIdx.x] = 2.0f;
  __syncthreads();
  x[threadIdx.x] = buf[threadIdx.x];
}

// A global-memory race the shared-memory detector cannot see: every thread stores its index in one
// slot, so the value left is the last writer's, which the seeded thread order decides.
__global__ void last_writer(SPIN_GP(float) x) { x[0] = static_cast<float>(threadIdx.x); }

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

std::string floats(const float* v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " " : "") + (std::isnan(v[i]) ? std::string("nan") : std::to_string(static_cast<int>(v[i])));
  return s;
}

// Runs `f`; returns its result or the message it threw.
template <class F>
std::string attempt(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::string RunCase(const std::string& name, float* x) {
  auto read = [&](int n) {
    std::vector<float> h(n);
    check(cudaMemcpyAsync(h.data(), x, n * sizeof(float), cudaMemcpyDeviceToHost, stream()), "read");
    return floats(h.data(), n);
  };
  if (name == "globalOverrun") SPIN_LAUNCH(global_overrun, dim3(4), dim3(32), 0, stream(), x, int64_t{100});
  else if (name == "sharedOverrun") SPIN_LAUNCH(shared_overrun, dim3(1), dim3(64), 0, stream(), x);
  else if (name == "dynamicSharedOverrun") SPIN_LAUNCH(dynamic_shared_overrun, dim3(1), dim3(64), 64 * sizeof(float), stream(), x);
  else if (name == "barrierAfterExit") SPIN_LAUNCH(barrier_after_exit, dim3(1), dim3(32), 0, stream(), x);
  else if (name == "barrierMismatch") SPIN_LAUNCH(barrier_mismatch, dim3(1), dim3(32), 0, stream(), x);
  else if (name == "shuffleDivergence") SPIN_LAUNCH(shuffle_divergence, dim3(1), dim3(32), 0, stream(), x);
  else if (name == "sharedRace") SPIN_LAUNCH(shared_race_raw, dim3(1), dim3(64), 0, stream(), x);
  else if (name == "sharedRaceWriteAfterRead") SPIN_LAUNCH(shared_race_war, dim3(1), dim3(64), 0, stream(), x);
  else if (name == "sharedFlagRace") SPIN_LAUNCH(shared_flag_race, dim3(1), dim3(64), 0, stream(), x);
  else if (name == "barrierReduce") {
    SPIN_LAUNCH(barrier_or_flag, dim3(1), dim3(64), 0, stream(), x);
    return read(2);
  } else if (name == "dynamicSharedRace") SPIN_LAUNCH(dyn_shared_race, dim3(1), dim3(64), 64 * sizeof(float), stream(), x);
  else if (name == "warpOrderedShared") {
    SPIN_LAUNCH(warp_ordered_shared, dim3(1), dim3(64), 0, stream(), x);
    return read(3);
  } else if (name == "sharedReadBeforeWrite") {
    SPIN_LAUNCH(shared_read_before_write, dim3(2), dim3(32), 0, stream(), x);
    std::vector<float> h(64);
    check(cudaMemcpyAsync(h.data(), x, h.size() * sizeof(float), cudaMemcpyDeviceToHost, stream()), "read");
    return "block 0: " + floats(h.data(), 2) + ", block 1: " + floats(h.data() + 32, 2);
  } else if (name == "launchBounds") {
    // within the bound, past it, past 1024
    std::string r = attempt([&] { SPIN_LAUNCH(bounded_kernel, dim3(1), dim3(64), 0, stream(), x); return std::string("64 ok"); });
    r += "; " + attempt([&] { SPIN_LAUNCH(bounded_kernel, dim3(1), dim3(96), 0, stream(), x); return std::string("96 ran"); });
    r += "; " + attempt([&] { SPIN_LAUNCH(write_n, dim3(1), dim3(2048), 0, stream(), x, int64_t{1}); return std::string("2048 ran"); });
    return r + "; declared " + std::to_string(emu::declared_launch_bound(reinterpret_cast<const void*>(&bounded_kernel))) + ", none " +
           std::to_string(emu::declared_launch_bound(reinterpret_cast<const void*>(&write_n)));
  } else if (name == "dynamicSharedOptIn") {
    float* big = nullptr;
    check(cudaMalloc(reinterpret_cast<void**>(&big), 64 * sizeof(float)), "alloc");
    const size_t bytes = 64 * 1024;
    std::string r = attempt([&] { SPIN_LAUNCH(big_dyn_shared, dim3(1), dim3(64), bytes, stream(), big); return std::string("ran without the attribute"); });
    check(cudaFuncSetAttribute(reinterpret_cast<const void*>(&big_dyn_shared), cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), "attribute");
    r += "; " + attempt([&] { SPIN_LAUNCH(big_dyn_shared, dim3(1), dim3(64), bytes, stream(), big); return std::string("ran with it"); });
    r += "; " + attempt([&] { SPIN_LAUNCH(big_dyn_shared, dim3(1), dim3(64), bytes + 4, stream(), big); return std::string("ran past it"); });
    cudaFree(big);
    return r;
  } else if (name == "stickyError") {
    std::string r = attempt([&] { SPIN_LAUNCH(global_overrun, dim3(4), dim3(32), 0, stream(), x, int64_t{100}); return std::string("no fault"); });
    r = r.substr(0, r.find(':'));
    const cudaError_t a = cudaGetLastError(), b = cudaPeekAtLastError(), c = cudaGetLastError();
    r += "; last " + std::to_string(a) + " " + std::to_string(b) + " " + std::to_string(c);
    r += "; copy: " + attempt([&] { read(1); return std::string("ok"); });
    r += "; launch: " + attempt([&] { SPIN_LAUNCH(bounded_kernel, dim3(1), dim3(32), 0, stream(), x); return std::string("ran"); });
    emu::reset_errors();
    r += "; after reset: " + attempt([&] { SPIN_LAUNCH(bounded_kernel, dim3(1), dim3(32), 0, stream(), x); return read(1); });
    return r;
  } else if (name == "launchErrorIsNotSticky") {
    std::string r = attempt([&] { SPIN_LAUNCH(bounded_kernel, dim3(1), dim3(128), 0, stream(), x); return std::string("ran"); });
    r = r.substr(0, r.find(':'));
    return r + "; then " + std::to_string(cudaGetLastError()) + "; " +
           attempt([&] { SPIN_LAUNCH(bounded_kernel, dim3(1), dim3(32), 0, stream(), x); return read(1); });
  } else if (name == "syncNamesKernel") {
    set_sync_launches(true);
    std::string r = attempt([&] { SPIN_LAUNCH(bounded_kernel, dim3(1), dim3(128), 0, stream(), x); return std::string("ran"); });
    set_sync_launches(false);
    return r;
  } else if (name == "allocatorBounds") {
    // 1000 bytes from the caching allocator: a 1024-byte size class, but only 1000 bytes are the tensor's.
    AllocResult a = device_alloc(1000);
    if (!a.ptr) return a.error;
    float* t = static_cast<float*>(a.ptr);
    std::string r = attempt([&] { SPIN_LAUNCH(write_n, dim3(1), dim3(32), 0, stream(), t, int64_t{250}); return std::string("250 ok"); });
    emu::reset_errors();
    r += "; " + attempt([&] { SPIN_LAUNCH(write_n, dim3(1), dim3(32), 0, stream(), t, int64_t{251}); return std::string("251 ran"); });
    emu::reset_errors();
    device_free(a.ptr, 1000);
    r += "; after free: " + attempt([&] { SPIN_LAUNCH(write_n, dim3(1), dim3(32), 0, stream(), t, int64_t{1}); return std::string("ran"); });
    emu::reset_errors();
    AllocResult b = device_alloc(1000);  // the same block again, from the cache
    r += std::string("; reused ") + (b.ptr == a.ptr ? "yes" : "no") + ", " +
         attempt([&] { SPIN_LAUNCH(write_n, dim3(1), dim3(32), 0, stream(), t, int64_t{250}); return std::string("250 ok"); });
    device_free(b.ptr, 1000);
    return r;
  } else if (name == "allocRetry") {
    // A cached block holds memory a new request needs: the allocator releases its cache and retries.
    release_cache();
    size_t free_b = 0, total = 0;
    cudaMemGetInfo(&free_b, &total);
    const size_t used = total - free_b;
    emu::set_memory_limit(used + (3u << 20));
    AllocResult a = device_alloc(2u << 20);
    if (!a.ptr) return "first: " + a.error;
    device_free(a.ptr, 2u << 20);
    const size_t cached = cached_bytes();
    AllocResult b = device_alloc(3u << 20);  // fits only once the 2 MiB block is released
    std::string r = "cached " + std::to_string(cached) + "; second " + (b.ptr ? "ok" : b.error) + ", cache now " + std::to_string(cached_bytes()) +
                    ", last error " + std::to_string(cudaPeekAtLastError());
    AllocResult c = device_alloc(5u << 20);
    r += "; third: " + (c.ptr ? std::string("ok") : c.error) + ", last error " + std::to_string(cudaPeekAtLastError());
    if (b.ptr) device_free(b.ptr, 3u << 20);
    if (c.ptr) device_free(c.ptr, 5u << 20);
    release_cache();
    return r;
  } else if (name == "scratchOom") {
    void* before = scratch(64 << 10, "testOp");
    size_t free_b = 0, total = 0;
    cudaMemGetInfo(&free_b, &total);
    emu::set_memory_limit(total - free_b + (1u << 20));
    std::string r = attempt([&] { scratch(size_t{4} << 20, "testOp"); return std::string("grew"); });
    r += "; last error " + std::to_string(cudaPeekAtLastError());
    void* after = scratch(64 << 10, "testOp");
    r += std::string("; same buffer ") + (after == before ? "yes" : "no");
    // the old buffer is still a live allocation: a kernel can use it
    r += "; " + attempt([&] { SPIN_LAUNCH(write_n, dim3(1), dim3(32), 0, stream(), static_cast<float*>(after), int64_t{16}); return std::string("usable"); });
    return r;
  } else if (name == "pinnedReuse") {
    const size_t calls = emu::host_alloc_calls();
    for (int i = 0; i < 5; ++i) pinned_release(pinned_acquire(1000 + i));
    void* a = pinned_acquire(4000);
    void* b = pinned_acquire(4000);  // in use at once: two buffers
    pinned_release(a);
    pinned_release(b);
    return "cudaMallocHost calls " + std::to_string(emu::host_alloc_calls() - calls) + ", cached " + std::to_string(pinned_cached_bytes());
  } else if (name == "versions") {
    const Versions v = versions();
    return "driver " + std::to_string(v.driver) + " runtime " + std::to_string(v.runtime) + " built " + std::to_string(v.built_with) +
           " needs " + std::to_string(v.driver_needed) + " min " + v.min_driver + (v.driver_ok ? " ok" : " old");
  } else if (name == "lastWriter") {
    SPIN_LAUNCH(last_writer, dim3(1), dim3(64), 0, stream(), x);
    return read(1);
  } else if (name == "smCount") {
    return std::to_string(sm_count());
  } else if (name == "blockSum") {
    float host[100];
    for (int i = 0; i < 100; ++i) host[i] = static_cast<float>(i);
    float* out = nullptr;
    uint32_t* votes = nullptr;
    cudaMalloc(reinterpret_cast<void**>(&out), 4 * sizeof(float));
    cudaMalloc(reinterpret_cast<void**>(&votes), 4 * sizeof(uint32_t));
    cudaMemcpyAsync(x, host, sizeof host, cudaMemcpyHostToDevice, stream());
    SPIN_LAUNCH(block_sum, dim3(3), dim3(32), 0, stream(), static_cast<const float*>(x), out, votes);
    float sums[3];
    uint32_t v[3];
    cudaMemcpyAsync(sums, out, sizeof sums, cudaMemcpyDeviceToHost, stream());
    cudaMemcpyAsync(v, votes, sizeof v, cudaMemcpyDeviceToHost, stream());
    cudaFree(out);
    cudaFree(votes);
    return "sums " + std::to_string(static_cast<int>(sums[0])) + " " + std::to_string(static_cast<int>(sums[1])) + " " +
           std::to_string(static_cast<int>(sums[2])) + " ballot " + std::to_string(v[0]);
  } else if (name.rfind("wmma", 0) == 0) {
    return wmma_case(name, x);
  } else {
    return "unknown self-test " + name;
  }
  return "ok";
}

// emuSelfTest(name) -> "ok", the result, or the fault's message. Each case ends with the device's
// errors cleared (a planted fault is sticky) and the memory limit restored.
Napi::Value Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  init();
  float* x = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&x), 100 * sizeof(float));
  std::string result = attempt([&] { return RunCase(name, x); });
  emu::reset_errors();
  emu::set_memory_limit(0);
  set_sync_launches(false);
  cudaFree(x);
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

// ltPlanReference(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) -> whether the layouts
// fit: the row-major product as the cublasLtMatmul call blas::lt_plan makes (cuBLASLt's A is our B),
// evaluated by blas::reference_lt in float64 (c updated in place).
Napi::Value LtPlanReference(const Napi::CallbackInfo& info) {
  const bool ta = info[0].ToBoolean(), tb = info[1].ToBoolean();
  auto i64 = [&](int i) { return static_cast<int64_t>(info[i].As<Napi::Number>().DoubleValue()); };
  auto f32 = [&](int i) { return info[i].As<Napi::Float32Array>().Data(); };
  const blas::LtCall g = blas::lt_plan(ta, tb, i64(2), i64(3), i64(4), i64(7), i64(9), i64(12));
  const bool ok = blas::reference_lt(g, info[5].As<Napi::Number>().DoubleValue(), f32(8), f32(6), info[10].As<Napi::Number>().DoubleValue(),
                                     f32(11));
  return Napi::Boolean::New(info.Env(), ok);
}

// cublasLtLoad(cublasPaths: string[]) -> { path } of the libcublasLt that loaded (searched beside
// each cuBLAS candidate, blas::lt_paths), or { error }.
Napi::Value CublasLtLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) spinlm::napi::ThrowType(env, "cublasLtLoad takes an array of paths");
  const Napi::Array arr = info[0].As<Napi::Array>();
  std::vector<std::string> paths;
  for (uint32_t i = 0; i < arr.Length(); ++i) paths.push_back(arr.Get(i).As<Napi::String>().Utf8Value());
  const blas::LtLibrary lib = blas::load_lt(blas::lt_paths(paths));
  Napi::Object o = Napi::Object::New(env);
  if (lib.lib) o.Set("path", lib.path);
  else o.Set("error", lib.error);
  return o;
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

// sampleReplaySum(vals: Float64Array, bound) -> [sum, at, sum at] from sample.cu's block-wide replay of
// the sequential float64 sum (sample_replay_check), to compare bit for bit with one thread's loop.
Napi::Value SampleReplaySum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  init();
  const Napi::Float64Array a = info[0].As<Napi::Float64Array>();
  const int64_t n = static_cast<int64_t>(a.ElementLength());
  double* d = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&d), (n + 3) * sizeof(double)), "sampleReplaySum");
  std::vector<double> h(3);
  const std::string err = attempt([&] {
    check(cudaMemcpyAsync(d, a.Data(), n * sizeof(double), cudaMemcpyHostToDevice, stream()), "upload");
    sample_replay_check(d, n, info[1].As<Napi::Number>().DoubleValue(), d + n);
    check(cudaMemcpyAsync(h.data(), d + n, 3 * sizeof(double), cudaMemcpyDeviceToHost, stream()), "read");
    check(cudaStreamSynchronize(stream()), "sync");
    return std::string();
  });
  cudaFree(d);
  if (!err.empty()) throw Napi::Error::New(env, err);
  Napi::Float64Array out = Napi::Float64Array::New(env, 3);
  for (int i = 0; i < 3; ++i) out[i] = h[i];
  return out;
}

}  // namespace

void Register(Napi::Object exports) {
  Napi::Env env = exports.Env();
  exports.Set("emuSelfTest", Napi::Function::New(env, Run));
  exports.Set("cublasSearch", Napi::Function::New(env, CublasSearch));
  exports.Set("cublasLoad", Napi::Function::New(env, CublasLoad));
  exports.Set("cublasLtLoad", Napi::Function::New(env, CublasLtLoad));
  exports.Set("ltPlanReference", Napi::Function::New(env, LtPlanReference));
  exports.Set("gemmPlanReference", Napi::Function::New(env, GemmPlanReference));
  exports.Set("gatherPlan", Napi::Function::New(env, GatherPlanOf));
  exports.Set("sampleReplaySum", Napi::Function::New(env, SampleReplaySum));
}

}  // namespace spinlm::cuda::selftest
