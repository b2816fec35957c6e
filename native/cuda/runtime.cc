// The CUDA backend's device, stream, error word and scratch (runtime.h).
#include "runtime.h"

#include <mutex>
#include <stdexcept>

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
int g_sms = 1;

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
#endif
}

}  // namespace

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

void check_launch(const char* what) { check(cudaGetLastError(), what); }

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorInsufficientDriver) return "no driver: the NVIDIA driver is missing or older than this build's CUDA runtime needs";
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
uint32_t* error_word() { return g_error_word; }

uint32_t take_errors() {
  uint32_t bits = 0;
  check(cudaMemcpyAsync(&bits, g_error_word, 4, cudaMemcpyDeviceToHost, g_stream), "takeErrors");
  check(cudaMemsetAsync(g_error_word, 0, 4, g_stream), "takeErrors");
  check(cudaStreamSynchronize(g_stream), "takeErrors");
  return bits;
}

void* scratch(size_t bytes) {
  if (bytes > g_scratch_bytes) {
    if (g_scratch) {
      check(cudaStreamSynchronize(g_stream), "scratch");
      check(cudaFree(g_scratch), "scratch");
    }
    const size_t want = bytes < 4096 ? 4096 : bytes;
    check(cudaMalloc(&g_scratch, want), "cudaMalloc(scratch)");
    g_scratch_bytes = want;
  }
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
