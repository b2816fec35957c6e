// cuBLAS for the CUDA backend's GEMMs, opened with dlopen at run time: spinlm.node never links it, so
// the addon loads where cuBLAS is missing and the backend then says what it searched. The search,
// the loading and the row-major -> column-major argument mapping are plain host code, compiled into
// the emulator build too, where tests check them (the emulator itself always uses the tiled kernel).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace spinlm::cuda::blas {

// How matmul runs (SPINLM_CUDA_GEMM): cuBLAS with f32 inputs and f32 compute (default: a bf16
// operand is widened to f32 first, so the result matches the CPU backend's f32 GEMM); `tf32`: the
// same with TF32 tensor cores (an explicit opt-in: inputs rounded to 10-bit mantissas); `bf16`: both
// operands rounded to bf16, f32 compute; `tiled`: the built-in tiled kernel, no cuBLAS.
enum class GemmMode { kF32, kTF32, kBF16, kTiled };
// Parses SPINLM_CUDA_GEMM's value ("" = the default); false with `err` set for an unknown value.
bool parse_mode(const std::string& s, GemmMode* mode, std::string* err);
const char* mode_name(GemmMode m);

// The files cuBLAS is looked for in, in order. `env` reads an environment variable ("" when unset).
// SPINLM_CUBLAS, when set, is the only candidate. Otherwise: the sonames libcublas.so.13 and .12
// through the dynamic loader's own search (LD_LIBRARY_PATH, the ldconfig cache), then lib64 of
// CUDA_HOME, CUDA_PATH and /usr/local/cuda, $CONDA_PREFIX/lib, then NVIDIA's Python wheels in each
// site-packages folder (PYTHONPATH, VIRTUAL_ENV, CONDA_PREFIX, ~/.local, the system's):
// nvidia/cu13/lib/libcublas.so.13 (CUDA 13 wheels) and nvidia/cublas/lib/libcublas.so.12 (cu12).
using EnvFn = std::function<std::string(const char*)>;
std::vector<std::string> search_paths(const EnvFn& env);
EnvFn process_env();

// The cuBLAS entry points spinlm calls (declared here: no cuBLAS header is needed to build).
using Handle = void*;
struct Api {
  int (*create)(Handle*) = nullptr;                    // cublasCreate_v2
  int (*destroy)(Handle) = nullptr;                    // cublasDestroy_v2
  int (*set_stream)(Handle, void*) = nullptr;          // cublasSetStream_v2
  int (*set_math_mode)(Handle, int) = nullptr;         // cublasSetMathMode
  int (*get_version)(Handle, int*) = nullptr;          // cublasGetVersion_v2
  int (*gemm_ex)(Handle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int, const void*, void*,
                 int, int, int, int) = nullptr;       // cublasGemmEx
  const char* (*status_string)(int) = nullptr;         // cublasGetStatusString (optional)
};
struct Library {
  void* lib = nullptr;
  std::string path;   // the candidate that loaded
  Api api;
  std::string error;  // when none loaded: one line naming every candidate and what happened
};
// Tries each candidate in order (for an absolute path, libcublasLt of the same folder and version is
// opened first, RTLD_GLOBAL); the first that opens and has every entry point wins.
Library load(const std::vector<std::string>& candidates);

// C = alpha op(A) op(B) + beta C in row-major storage, as the column-major call cuBLAS takes: the
// row-major C[m, n] is the column-major C^T[n, m] = op(B)^T op(A)^T, so cuBLAS's first operand is B
// (op T when B is stored transposed), its second A, and m and n swap. Leading dimensions carry over.
struct GemmCall {
  int transa, transb;  // 0 = N, 1 = T (cublasOperation_t), of cuBLAS's first and second operand
  int64_t m, n, k;     // cuBLAS's m, n, k
  int64_t lda, ldb, ldc;
  // cuBLAS's first operand is the caller's B and its second the caller's A (always true here).
  bool first_is_b;
};
GemmCall plan(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc);
// cuBLAS's documented column-major semantics on the host (double accumulation): the tests run a
// plan through it and compare with the tiled kernel and the CPU backend.
void reference_gemm(const GemmCall& g, float alpha, const float* first, const float* second, float beta, float* c);

}  // namespace spinlm::cuda::blas
