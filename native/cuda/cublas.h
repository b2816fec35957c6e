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

// How matmul runs (SPINLM_CUDA_GEMM) for computeDtype 'f32': cuBLAS with f32 inputs and f32 compute
// (default: a bf16 operand is widened to f32 first, so the result matches the CPU backend's f32
// GEMM); `tf32`: the same with TF32 tensor cores (an explicit opt-in: inputs rounded to 10-bit
// mantissas); `bf16`: both operands rounded to bf16, f32 compute; `tiled`: the built-in tiled kernel,
// no cuBLAS. computeDtype 'bf16' GEMMs take cuBLASLt (LtApi below) in every mode but `tiled`.
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

// ---- cuBLASLt (libcublasLt.so.N, the library cuBLAS itself sits on): computeDtype 'bf16' GEMMs ----
// The entry points, by dlsym with their documented signatures (cublasLt.h; descriptors are opaque
// pointers, cublasLtMatmulAlgo_t 8 x uint64, cublasLtMatmulHeuristicResult_t 96 bytes).
struct LtAlgo {
  uint64_t data[8];
};
struct LtHeuristic {  // cublasLtMatmulHeuristicResult_t
  LtAlgo algo;
  size_t workspace_size;
  int state;
  float waves_count;
  int reserved[4];
};
static_assert(sizeof(LtHeuristic) == 96, "cublasLtMatmulHeuristicResult_t is 96 bytes");
struct LtApi {
  int (*create)(void**) = nullptr;                                        // cublasLtCreate
  int (*destroy)(void*) = nullptr;                                        // cublasLtDestroy
  int (*desc_create)(void**, int compute, int scale) = nullptr;           // cublasLtMatmulDescCreate
  int (*desc_destroy)(void*) = nullptr;                                   // cublasLtMatmulDescDestroy
  int (*desc_set)(void*, int attr, const void*, size_t) = nullptr;        // cublasLtMatmulDescSetAttribute
  int (*layout_create)(void**, int type, uint64_t rows, uint64_t cols, int64_t ld) = nullptr;  // cublasLtMatrixLayoutCreate
  int (*layout_destroy)(void*) = nullptr;                                 // cublasLtMatrixLayoutDestroy
  int (*pref_create)(void**) = nullptr;                                   // cublasLtMatmulPreferenceCreate
  int (*pref_destroy)(void*) = nullptr;                                   // cublasLtMatmulPreferenceDestroy
  int (*pref_set)(void*, int attr, const void*, size_t) = nullptr;        // cublasLtMatmulPreferenceSetAttribute
  int (*heuristic)(void* handle, void* desc, void* a, void* b, void* c, void* d, void* pref, int requested, LtHeuristic* results,
                   int* returned) = nullptr;                              // cublasLtMatmulAlgoGetHeuristic
  int (*matmul)(void* handle, void* desc, const void* alpha, const void* a, void* adesc, const void* b, void* bdesc, const void* beta,
                const void* c, void* cdesc, void* d, void* ddesc, const LtAlgo* algo, void* workspace, size_t workspace_bytes,
                void* stream) = nullptr;                                  // cublasLtMatmul
};
// The enum values spinlm passes (cublasLt.h, library_types.h, cublas_api.h; stable since CUDA 11).
constexpr int kLtDescTransA = 3, kLtDescTransB = 4;  // cublasLtMatmulDescAttributes_t (int32_t values)
constexpr int kLtPrefMaxWorkspaceBytes = 1;          // cublasLtMatmulPreferenceAttributes_t (uint64_t value)
constexpr int kCudaR32F = 0, kCudaR16BF = 14;        // cudaDataType_t
constexpr int kComputeF32 = 68;                      // cublasComputeType_t CUBLAS_COMPUTE_32F
struct LtLibrary {
  void* lib = nullptr;
  std::string path;
  LtApi api;
  std::string error;  // why none loaded ("" when one did)
};
// libcublasLt beside each cuBLAS candidate (the same folder and version; a bare soname stays a
// soname): libcublas.so.12 -> libcublasLt.so.12.
std::vector<std::string> lt_paths(const std::vector<std::string>& cublas_candidates);
// The first candidate that opens and has every LtApi entry point.
LtLibrary load_lt(const std::vector<std::string>& candidates);

// A row-major GEMM as the cublasLtMatmul call spinlm makes (from plan(): cuBLASLt's A is the
// caller's B, its B the caller's A): TRANSA / TRANSB and three column-major layouts (rows, cols, ld)
// for A, B and C = D. op(A) is [m, k], op(B) [k, n], C [m, n] in cuBLASLt's terms.
struct LtLayout {
  uint64_t rows, cols;
  int64_t ld;
};
struct LtCall {
  int transa, transb;
  LtLayout a, b, c;
};
LtCall lt_plan(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc);
// cublasLtMatmul's documented semantics on the host in float64: D = alpha op(A) op(B) + beta C over
// the layouts (column-major: X(i, j) = X[i + j ld]); false when the layouts do not fit together
// (op(A) [m, k], op(B) [k, n], C [m, n], ld >= rows), as cuBLASLt would refuse them.
bool reference_lt(const LtCall& g, double alpha, const float* a, const float* b, double beta, float* c);

// The algorithm cache key: one algorithm per shape, the first heuristic result (gemm.cu).
struct LtKey {
  int64_t m, n, k, lda, ldb, ldc;
  int transa, transb, a_type, b_type;
  bool alpha_one, beta_zero;
  bool operator<(const LtKey& o) const;
};

}  // namespace spinlm::cuda::blas
