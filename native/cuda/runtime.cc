// The CUDA backend's device, stream, error word and scratch (runtime.h).
#include "runtime.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace spinlm::cuda {
namespace {

std::once_flag g_once;
std::string g_init_error;
cudaStream_t g_stream = nullptr;
uint32_t* g_error_word = nullptr;
void* g_scratch = nullptr;
size_t g_scratch_bytes = 0;
blas::GemmMode g_gemm_mode = blas::GemmMode::kTiled;
blas::Library g_blas;
blas::Handle g_blas_handle = nullptr;
int g_blas_version = 0;
blas::LtLibrary g_lt;
void* g_lt_handle = nullptr;
void* g_lt_workspace = nullptr;
constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;
int g_sms = 1;
bool g_sync = false;  // SPINLM_CUDA_SYNC=1: synchronize after every launch

// The emulator's detail of the last error (which kernel, which limit); empty on a GPU.
std::string error_detail() {
#ifdef SPINLM_CUDA_EMU
  const std::string d = emu::last_error_detail();
  return d.empty() ? "" : " (" + d + ")";
#else
  return "";
#endif
}

// Pinned staging buffers: free ones by capacity; the capacity of each handed out.
std::mutex g_pinned_mu;
std::multimap<size_t, void*> g_pinned_free;
std::map<void*, size_t> g_pinned_used;
size_t g_pinned_cached = 0;
constexpr size_t kPinnedCacheCap = size_t{256} << 20;

size_t pinned_class(size_t bytes) {
  size_t c = 4096;
  while (c < bytes) c <<= 1;
  return c;
}

// Opens cuBLAS on the backend's stream unless SPINLM_CUDA_GEMM=tiled (GPU builds only).
void init_gemm() {
#ifndef SPINLM_CUDA_EMU
  std::string err;
  if (!blas::parse_mode(blas::process_env()("SPINLM_CUDA_GEMM"), &g_gemm_mode, &err)) throw std::runtime_error(err);
  if (g_gemm_mode == blas::GemmMode::kTiled) return;
  g_blas = blas::load(blas::search_paths(blas::process_env()));
  if (!g_blas.lib) throw std::runtime_error(g_blas.error);
  const blas::Api& api = g_blas.api;
  const int st = api.create(&g_blas_handle);
  if (st != 0)
    throw std::runtime_error("cublasCreate failed (" + g_blas.path + "): " + (api.status_string ? api.status_string(st) : "status " + std::to_string(st)));
  api.set_stream(g_blas_handle, g_stream);
  // CUBLAS_DEFAULT_MATH (0) keeps f32 compute in f32; TF32 tensor-op math (3) only when asked for.
  api.set_math_mode(g_blas_handle, g_gemm_mode == blas::GemmMode::kTF32 ? 3 : 0);
  api.get_version(g_blas_handle, &g_blas_version);
  // cuBLASLt: the one beside the cuBLAS that loaded first, then the same search. None (or no handle):
  // computeDtype 'bf16' GEMMs run as cublasGemmEx with bf16 inputs, also on tensor cores.
  std::vector<std::string> lts = blas::lt_paths({g_blas.path});
  for (const auto& p : blas::lt_paths(blas::search_paths(blas::process_env()))) lts.push_back(p);
  g_lt = blas::load_lt(lts);
  if (g_lt.lib && g_lt.api.create(&g_lt_handle) != 0) {
    g_lt.error = "cublasLtCreate failed (" + g_lt.path + ")";
    g_lt.lib = nullptr;
  }
#endif
}

}  // namespace

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  const std::string detail = error_detail();
  cudaGetLastError();  // clear it (a sticky error stays: the device is unusable after a kernel fault)
  throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e) + detail);
}

void check_launch(const char* what) { check(cudaGetLastError(), what); }

void set_sync_launches(bool on) { g_sync = on; }
bool sync_launches() { return g_sync; }

void after_launch(const char* kernel) {
  cudaError_t e = cudaPeekAtLastError();
  if (e == cudaSuccess && g_sync) {
    e = cudaStreamSynchronize(g_stream);
    if (e == cudaSuccess) e = cudaPeekAtLastError();
  }
  if (e != cudaSuccess) check(e, (std::string("kernel ") + kernel + (g_sync ? " (SPINLM_CUDA_SYNC=1)" : "")).c_str());
}

Versions versions() {
  Versions v;
  if (cudaDriverGetVersion(&v.driver) != cudaSuccess) v.driver = 0;
  if (cudaRuntimeGetVersion(&v.runtime) != cudaSuccess) v.runtime = 0;
  cudaGetLastError();
  v.built_with = CUDART_VERSION;
  v.driver_needed = CUDART_VERSION / 1000 * 1000;  // minor version compatibility: the same major suffices
  // The Linux driver releases that first support each CUDA major (NVIDIA's compatibility table).
  v.min_driver = CUDART_VERSION >= 13000 ? "580.65.06" : CUDART_VERSION >= 12000 ? "525.60.13" : "450.80.02";
  v.driver_ok = v.driver >= v.driver_needed;
  return v;
}

void* pinned_acquire(size_t bytes) {
  const size_t c = pinned_class(bytes);
  std::lock_guard<std::mutex> lock(g_pinned_mu);
  auto it = g_pinned_free.lower_bound(c);
  if (it != g_pinned_free.end() && it->first <= 2 * c) {  // reuse, wasting at most half
    void* p = it->second;
    g_pinned_used[p] = it->first;
    g_pinned_cached -= it->first;
    g_pinned_free.erase(it);
    return p;
  }
  void* p = nullptr;
  cudaError_t e = cudaMallocHost(&p, c);
  if (e != cudaSuccess) {
    cudaGetLastError();
    for (auto& [size, q] : g_pinned_free) cudaFreeHost(q);
    g_pinned_free.clear();
    g_pinned_cached = 0;
    e = cudaMallocHost(&p, c);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("CUDA error in read staging: out of pinned host memory for " + std::to_string(bytes) + " bytes");
  }
  g_pinned_used[p] = c;
  return p;
}

void pinned_release(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(g_pinned_mu);
  auto it = g_pinned_used.find(p);
  if (it == g_pinned_used.end()) {
    cudaFreeHost(p);  // not from the pool
    return;
  }
  const size_t c = it->second;
  g_pinned_used.erase(it);
  if (g_pinned_cached + c > kPinnedCacheCap) {
    cudaFreeHost(p);
    return;
  }
  g_pinned_free.emplace(c, p);
  g_pinned_cached += c;
}

size_t pinned_cached_bytes() {
  std::lock_guard<std::mutex> lock(g_pinned_mu);
  return g_pinned_cached;
}

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorInsufficientDriver) {
    cudaGetLastError();
    const Versions v = versions();
    auto cuda = [](int x) { return std::to_string(x / 1000) + "." + std::to_string(x % 1000 / 10); };
    return "no driver: the NVIDIA driver is missing or older than this build's CUDA runtime needs (CUDA " + cuda(v.built_with) +
           " needs driver " + v.min_driver + " or newer" + (v.driver > 0 ? "; the installed driver supports CUDA " + cuda(v.driver) : std::string()) + ")";
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) return "no device: the NVIDIA driver sees no GPU";
  if (e != cudaSuccess) return std::string("no usable device: ") + cudaGetErrorString(e);
  return "";
}

void init() {
  std::call_once(g_once, [] {
    try {
      const std::string why = unavailable_reason();
      if (!why.empty()) throw std::runtime_error(why);
      check(cudaSetDevice(0), "cudaSetDevice");
      check(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking), "cudaStreamCreate");
      void* p = nullptr;
      check(cudaMalloc(&p, 256), "cudaMalloc(error word)");
      g_error_word = static_cast<uint32_t*>(p);
      check(cudaMemsetAsync(g_error_word, 0, 4, g_stream), "cudaMemset(error word)");
      cudaDeviceProp prop;
      check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
      if (prop.multiProcessorCount > 0) g_sms = prop.multiProcessorCount;
      const char* sync = std::getenv("SPINLM_CUDA_SYNC");
      g_sync = sync && *sync && std::string(sync) != "0";
      init_gemm();
    } catch (const std::exception& e) {
      g_init_error = e.what();
    }
  });
  if (!g_init_error.empty()) throw std::runtime_error(g_init_error);
}

cudaStream_t stream() { return g_stream; }
int sm_count() { return g_sms; }
blas::GemmMode gemm_mode() { return g_gemm_mode; }
const blas::Library& blas_library() { return g_blas; }
blas::Handle blas_handle() { return g_blas_handle; }

std::string gemm_description() {
  if (g_gemm_mode == blas::GemmMode::kTiled) return "tiled CUDA kernel";
  const int v = g_blas_version;
  return "cuBLAS " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100) + " (" +
         g_blas.path + "), " + blas::mode_name(g_gemm_mode) + " inputs, f32 compute" +
         (g_gemm_mode == blas::GemmMode::kTF32 ? " on TF32 tensor cores" : "");
}
const blas::LtLibrary& blas_lt_library() { return g_lt; }
void* blas_lt_handle() { return g_lt_handle; }
size_t lt_workspace_bytes() { return kLtWorkspaceBytes; }

void* lt_workspace() {
  if (!g_lt_workspace) {
    cudaError_t e = cudaMalloc(&g_lt_workspace, kLtWorkspaceBytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      if (release_cache() > 0) e = cudaMalloc(&g_lt_workspace, kLtWorkspaceBytes);
    }
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      g_lt_workspace = nullptr;
      throw std::runtime_error("matmul: " + oom_message(kLtWorkspaceBytes, "cuBLASLt's workspace"));
    }
    check(e, "matmul (cuBLASLt workspace)");
  }
  return g_lt_workspace;
}

std::string gemm_bf16_description() {
  if (g_gemm_mode == blas::GemmMode::kTiled) return "tiled CUDA kernel on bf16-rounded operands";
  const std::string rows = "; row-invariant ones (generation): the tiled kernel on bf16-rounded operands";
  if (g_lt.lib) return "cuBLASLt (" + g_lt.path + "), bf16 inputs, f32 compute, one algorithm per shape" + rows;
  return "cublasGemmEx with bf16 inputs, f32 compute (no cuBLASLt: " + g_lt.error + ")" + rows;
}

uint32_t* error_word() { return g_error_word; }

uint32_t take_errors() {
  uint32_t bits = 0;
  check(cudaMemcpyAsync(&bits, g_error_word, 4, cudaMemcpyDeviceToHost, g_stream), "takeErrors");
  check(cudaMemsetAsync(g_error_word, 0, 4, g_stream), "takeErrors");
  check(cudaStreamSynchronize(g_stream), "takeErrors");
  return bits;
}

void* scratch(size_t bytes, const char* op) {
  if (bytes <= g_scratch_bytes) return g_scratch;
  const size_t want = bytes < 4096 ? 4096 : bytes;
  // The new buffer first: if it cannot be had, the old one (still in use by queued work) stays.
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, want);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    if (release_cache() > 0) e = cudaMalloc(&p, want);
  }
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw std::runtime_error(std::string(op) + ": " + oom_message(want, "a scratch request"));
  }
  check(e, op);
  if (g_scratch) {
    check(cudaStreamSynchronize(g_stream), op);  // queued kernels may still use the old buffer
    check(cudaFree(g_scratch), op);
  }
  g_scratch = p;
  g_scratch_bytes = want;
  return g_scratch;
}

DeviceInfo device_info() {
  DeviceInfo d;
  cudaDeviceProp p;
  check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  d.name = p.name;
  d.major = p.major;
  d.minor = p.minor;
  d.sms = p.multiProcessorCount;
  d.total = p.totalGlobalMem;
  d.smem_optin = p.sharedMemPerBlockOptin;
  cudaDriverGetVersion(&d.driver);
  cudaRuntimeGetVersion(&d.runtime);
  return d;
}

}  // namespace spinlm::cuda
