// GEMM: C[M, N] = alpha op(A) op(B) + beta C (row-major, leading dimensions as row strides), A f32,
// B f32 or bf16, f32 accumulation. On a GPU: cublasGemmEx through dlopen (cublas.h; the mode comes
// from SPINLM_CUDA_GEMM). The 32 x 32 shared-memory tiled kernel here (each of 256 threads computes
// 4 outputs of a tile) is the emulator's GEMM, SPINLM_CUDA_GEMM=tiled's, and the fallback for
// dimensions past cuBLAS's 32-bit int arguments, and the row-invariant matmul of generation (rows
// independent of M: each output is one thread's sum over k in order).
//
// compute_bf16 (computeDtype 'bf16', docs/ops.md "bf16 compute"): A and B each f32 or bf16; an f32
// operand is rounded (nearest even) into a bf16 device scratch by one cast kernel, a bf16 one goes in
// as it is. On a GPU (mode not `tiled`, not row-invariant, dimensions within int): cublasLtMatmul,
// CUDA_R_16BF A and B, f32 C = D, CUBLAS_COMPUTE_32F, a fixed workspace, and one algorithm per shape
// (the first heuristic result, cached by LtKey: the same shape always runs the same algorithm); no
// libcublasLt: cublasGemmEx with CUDA_R_16BF inputs. Otherwise (and always in the emulator): the
// tiled kernel on the bf16 operands (exact products, f32 sums in k order).
#include <climits>
#include <initializer_list>
#include <map>
#include <utility>
#include <stdexcept>
#include <string>

#include "cuda_common.cuh"
#include "kernels.h"
#include "model_kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kTile = 32;
constexpr int kThreads = 256;  // 32 columns x 8 row groups; each thread 4 rows of the tile

template <class TA, class TB>
__global__ void __launch_bounds__(kThreads) gemm_kernel(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                                       SPIN_GP(const TA) a, int64_t lda, SPIN_GP(const TB) b, int64_t ldb,
                                                       float beta, SPIN_GP(float) c, int64_t ldc) {
  SPIN_SHARED(float, as, kTile * (kTile + 1));
  SPIN_SHARED(float, bs, kTile * (kTile + 1));
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;  // ty in [0, 8)
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
    __syncthreads();
    for (int rr = ty; rr < kTile; rr += 8) {
      // as[r][kk] = A(row0 + r, k0 + kk); bs[kk][cc] = B(k0 + kk, col0 + cc); tx indexes the contiguous side
      {
        const int64_t r = trans_a ? row0 + tx : row0 + rr, kk = trans_a ? k0 + rr : k0 + tx;
        const float val = r < m && kk < k ? to_f32(trans_a ? a[kk * lda + r] : a[r * lda + kk]) : 0.0f;
        if (trans_a) as[tx * (kTile + 1) + rr] = val;
        else as[rr * (kTile + 1) + tx] = val;
      }
      {
        const int64_t kk = trans_b ? k0 + tx : k0 + rr, cc = trans_b ? col0 + rr : col0 + tx;
        const float val = kk < k && cc < n ? to_f32(trans_b ? b[cc * ldb + kk] : b[kk * ldb + cc]) : 0.0f;
        if (trans_b) bs[tx * (kTile + 1) + rr] = val;
        else bs[rr * (kTile + 1) + tx] = val;
      }
    }
    __syncthreads();
    for (int kk = 0; kk < kTile; ++kk) {
      const float bv = bs[kk * (kTile + 1) + tx];
      for (int i = 0; i < 4; ++i) acc[i] += as[(ty + 8 * i) * (kTile + 1) + kk] * bv;
    }
  }
  const int64_t col = col0 + tx;
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty + 8 * i;
    if (row < m && col < n) {
      float r = alpha * acc[i];
      if (beta != 0.0f) r += beta * c[row * ldc + col];
      c[row * ldc + col] = r;
    }
  }
}

#ifndef SPINLM_CUDA_EMU
using blas::kComputeF32;
using blas::kCudaR16BF;
using blas::kCudaR32F;
constexpr int kComputeF32FastTF32 = 77, kGemmDefault = -1;  // cublasComputeType_t, cublasGemmAlgo_t

bool fits_int(std::initializer_list<int64_t> xs) {
  for (int64_t x : xs)
    if (x > INT_MAX) return false;
  return true;
}
#endif

// Elements a row-major [rows, cols] operand with leading dimension ld spans.
int64_t span(int64_t rows, int64_t cols, int64_t ld) { return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols; }

#ifndef SPINLM_CUDA_EMU

void matmul_cublas(const blas::GemmCall& g, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                   int64_t lda, const void* b, DType b_dt, int64_t ldb, float beta, float* c) {
  const blas::GemmMode mode = gemm_mode();
  const int64_t a_span = span(trans_a ? k : m, trans_a ? m : k, lda), b_span = span(trans_b ? n : k, trans_b ? k : n, ldb);
  const void* first = b;   // cuBLAS's first operand is our B, its second our A (blas::plan)
  const void* second = a;
  int type = kCudaR32F;
  if (mode == blas::GemmMode::kBF16) {
    // Both operands as bf16 (an f32 B too), f32 compute: A lands at the scratch's start, B after it.
    const size_t a_bytes = (static_cast<size_t>(a_span) * 2 + 255) / 256 * 256;
    char* s = static_cast<char*>(scratch(a_bytes + (b_dt == DType::kBF16 ? 0 : static_cast<size_t>(b_span) * 2), "matmul"));
    spinlm::cuda::cast_values(a, DType::kF32, s, DType::kBF16, a_span);
    second = s;
    if (b_dt != DType::kBF16) {
      spinlm::cuda::cast_values(b, DType::kF32, s + a_bytes, DType::kBF16, b_span);
      first = s + a_bytes;
    }
    type = kCudaR16BF;
  } else if (b_dt == DType::kBF16) {
    // cublasGemmEx takes one input type: widen the bf16 B to f32 (exact), so the product is the f32
    // GEMM the CPU backend computes.
    void* s = scratch(static_cast<size_t>(b_span) * 4, "matmul");
    spinlm::cuda::cast_values(b, DType::kBF16, s, DType::kF32, b_span);
    first = s;
  }
  const blas::Api& api = blas_library().api;
  auto call = [&] {
    return api.gemm_ex(blas_handle(), g.transa, g.transb, static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k), &alpha,
                       first, type, static_cast<int>(g.lda), second, type, static_cast<int>(g.ldb), &beta, c, kCudaR32F,
                       static_cast<int>(g.ldc), mode == blas::GemmMode::kTF32 ? kComputeF32FastTF32 : kComputeF32, kGemmDefault);
  };
  int st = call();
  constexpr int kStatusAllocFailed = 3;  // CUBLAS_STATUS_ALLOC_FAILED: cuBLAS could not get its workspace
  if (st == kStatusAllocFailed) {
    cudaGetLastError();
    if (release_cache() > 0) st = call();
  }
  if (st != 0) {
    cudaGetLastError();  // a CUDA error cuBLAS met must not be reported by the next op under its name
    throw std::runtime_error(std::string("cublasGemmEx failed in matmul: ") + (api.status_string ? api.status_string(st) : "status " + std::to_string(st)));
  }
}
#endif

// Both operands of a bf16-compute GEMM as bf16: an f32 one rounded into runtime scratch (A at its
// start, B 256 bytes aligned after it), a bf16 one as it is.
struct Bf16Operands {
  const uint16_t* a;
  const uint16_t* b;
};
Bf16Operands bf16_operands(const void* a, DType a_dt, int64_t a_span, const void* b, DType b_dt, int64_t b_span) {
  const size_t a_bytes = a_dt == DType::kBF16 ? 0 : (static_cast<size_t>(a_span) * 2 + 255) / 256 * 256;
  const size_t b_bytes = b_dt == DType::kBF16 ? 0 : static_cast<size_t>(b_span) * 2;
  char* s = a_bytes + b_bytes > 0 ? static_cast<char*>(scratch(a_bytes + b_bytes, "matmul")) : nullptr;
  Bf16Operands o{static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b)};
  if (a_dt != DType::kBF16 && a_span > 0) {
    spinlm::cuda::cast_values(a, DType::kF32, s, DType::kBF16, a_span);
    o.a = reinterpret_cast<const uint16_t*>(s);
  }
  if (b_dt != DType::kBF16 && b_span > 0) {
    spinlm::cuda::cast_values(b, DType::kF32, s + a_bytes, DType::kBF16, b_span);
    o.b = reinterpret_cast<const uint16_t*>(s + a_bytes);
  }
  return o;
}

#ifndef SPINLM_CUDA_EMU
// The alignment (bytes, up to 256) cuBLASLt may assume of a pointer: part of the algorithm's key.
uint32_t alignment(const void* p) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 2 && (x % a) != 0) a /= 2;
  return a;
}

// One cuBLASLt plan per shape: descriptors, layouts and the first heuristic algorithm, made on the
// first call of the shape and reused (the same algorithm, so the same sums, every time).
struct LtEntry {
  void* desc = nullptr;
  void* la = nullptr;
  void* lb = nullptr;
  void* lc = nullptr;
  blas::LtAlgo algo{};
  bool has_algo = false;  // false: cuBLASLt offered none for the shape; cublasGemmEx bf16 runs it
};
std::map<std::pair<blas::LtKey, uint32_t>, LtEntry> g_lt_plans;  // (key, packed alignments of A, B, C)

std::string lt_status(int st) {
  const blas::Api& api = blas_library().api;
  return api.status_string ? api.status_string(st) : "status " + std::to_string(st);
}

const LtEntry& lt_entry(const blas::LtCall& call, const blas::LtKey& key, uint32_t aligns[3]) {
  const uint32_t packed = (aligns[0] << 18) | (aligns[1] << 9) | aligns[2];
  auto it = g_lt_plans.find({key, packed});
  if (it != g_lt_plans.end()) return it->second;
  const blas::LtApi& lt = blas_lt_library().api;
  LtEntry e;
  auto ok = [](int st, const char* what) {
    if (st != 0) throw std::runtime_error(std::string(what) + " failed in matmul (computeDtype bf16): " + lt_status(st));
  };
  ok(lt.desc_create(&e.desc, kComputeF32, kCudaR32F), "cublasLtMatmulDescCreate");
  const int32_t ta = call.transa, tb = call.transb;
  ok(lt.desc_set(e.desc, blas::kLtDescTransA, &ta, sizeof ta), "cublasLtMatmulDescSetAttribute(TRANSA)");
  ok(lt.desc_set(e.desc, blas::kLtDescTransB, &tb, sizeof tb), "cublasLtMatmulDescSetAttribute(TRANSB)");
  ok(lt.layout_create(&e.la, kCudaR16BF, call.a.rows, call.a.cols, call.a.ld), "cublasLtMatrixLayoutCreate(A)");
  ok(lt.layout_create(&e.lb, kCudaR16BF, call.b.rows, call.b.cols, call.b.ld), "cublasLtMatrixLayoutCreate(B)");
  ok(lt.layout_create(&e.lc, kCudaR32F, call.c.rows, call.c.cols, call.c.ld), "cublasLtMatrixLayoutCreate(C)");
  void* pref = nullptr;
  ok(lt.pref_create(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = lt_workspace_bytes();
  int st = lt.pref_set(pref, blas::kLtPrefMaxWorkspaceBytes, &ws, sizeof ws);
  // MIN_ALIGNMENT_A/B/C/D_BYTES (5..8, uint32_t): only algorithms valid for these pointers.
  const uint32_t al[4] = {aligns[0], aligns[1], aligns[2], aligns[2]};
  for (int i = 0; i < 4 && st == 0; ++i) st = lt.pref_set(pref, 5 + i, &al[i], sizeof al[i]);
  blas::LtHeuristic h{};
  int returned = 0;
  if (st == 0) st = lt.heuristic(blas_lt_handle(), e.desc, e.la, e.lb, e.lc, e.lc, pref, 1, &h, &returned);
  lt.pref_destroy(pref);
  if (st != 0 && st != 15 /* CUBLAS_STATUS_NOT_SUPPORTED: no algorithm */) ok(st, "cublasLtMatmulAlgoGetHeuristic");
  e.has_algo = st == 0 && returned > 0 && h.state == 0;
  e.algo = h.algo;
  return g_lt_plans.emplace(std::make_pair(key, packed), e).first->second;
}

// C = alpha op(A) op(B) + beta C with bf16 A and B (device pointers), as cuBLASLt (or, without it or an
// algorithm for the shape, cublasGemmEx with bf16 inputs) runs it.
void matmul_bf16_blas(const blas::GemmCall& g, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (blas_lt_library().lib) {
    const blas::LtCall call = blas::lt_plan(trans_a, trans_b, m, n, k, lda, ldb, ldc);
    const blas::LtKey key{g.m, g.n, g.k, g.lda, g.ldb, g.ldc, g.transa, g.transb, kCudaR16BF, kCudaR16BF, alpha == 1.0f, beta == 0.0f};
    uint32_t aligns[3] = {alignment(b), alignment(a), alignment(c)};  // cuBLASLt's A is our B (plan)
    const LtEntry& e = lt_entry(call, key, aligns);
    if (e.has_algo) {
      const int st = blas_lt_library().api.matmul(blas_lt_handle(), e.desc, &alpha, b, e.la, a, e.lb, &beta, c, e.lc, c, e.lc, &e.algo,
                                                  lt_workspace(), lt_workspace_bytes(), stream());
      if (st != 0) {
        cudaGetLastError();
        throw std::runtime_error("cublasLtMatmul failed in matmul (computeDtype bf16): " + lt_status(st));
      }
      return;
    }
  }
  const blas::Api& api = blas_library().api;
  const int st = api.gemm_ex(blas_handle(), g.transa, g.transb, static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k),
                             &alpha, b, kCudaR16BF, static_cast<int>(g.lda), a, kCudaR16BF, static_cast<int>(g.ldb), &beta, c,
                             kCudaR32F, static_cast<int>(g.ldc), kComputeF32, kGemmDefault);
  if (st != 0) {
    cudaGetLastError();
    throw std::runtime_error("cublasGemmEx (bf16 inputs) failed in matmul: " + lt_status(st));
  }
}
#endif

template <class TA, class TB>
void launch_tiled(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const TA* a, int64_t lda, const TB* b,
                  int64_t ldb, float beta, float* c, int64_t ldc) {
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile), static_cast<unsigned>((m + kTile - 1) / kTile));
  SPIN_LAUNCH((gemm_kernel<TA, TB>), grid, dim3(kThreads), 0, stream(), trans_a ? 1 : 0, trans_b ? 1 : 0, m, n, k, alpha,
              k ? a : nullptr, lda, k ? b : nullptr, ldb, beta, c, ldc);
  check_launch("matmul");
}

}  // namespace

void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a, DType a_dt, int64_t lda,
            const void* b, DType b_dt, int64_t ldb, float beta, float* c, int64_t ldc, bool row_invariant, bool compute_bf16) {
  if (m == 0 || n == 0) return;
  if (compute_bf16) {
    const Bf16Operands o = bf16_operands(a, a_dt, span(trans_a ? k : m, trans_a ? m : k, lda), b, b_dt,
                                         span(trans_b ? n : k, trans_b ? k : n, ldb));
#ifndef SPINLM_CUDA_EMU
    if (gemm_mode() != blas::GemmMode::kTiled && k > 0 && !row_invariant) {
      const blas::GemmCall g = blas::plan(trans_a, trans_b, m, n, k, lda, ldb, ldc);
      if (fits_int({g.m, g.n, g.k, g.lda, g.ldb, g.ldc})) {
        matmul_bf16_blas(g, trans_a, trans_b, m, n, k, alpha, o.a, lda, o.b, ldb, beta, c, ldc);
        return;
      }
    }
#endif
    launch_tiled(trans_a, trans_b, m, n, k, alpha, o.a, lda, o.b, ldb, beta, c, ldc);
    return;
  }
  if (a_dt != DType::kF32) throw std::runtime_error("matmul: a bf16 a needs computeDtype 'bf16'");
  const float* af = static_cast<const float*>(a);
#ifndef SPINLM_CUDA_EMU
  if (gemm_mode() != blas::GemmMode::kTiled && k > 0 && !row_invariant) {
    const blas::GemmCall g = blas::plan(trans_a, trans_b, m, n, k, lda, ldb, ldc);
    if (fits_int({g.m, g.n, g.k, g.lda, g.ldb, g.ldc})) {
      matmul_cublas(g, trans_a, trans_b, m, n, k, alpha, af, lda, b, b_dt, ldb, beta, c);
      return;
    }
  }
#endif
  if (b_dt == DType::kBF16) launch_tiled(trans_a, trans_b, m, n, k, alpha, af, lda, static_cast<const uint16_t*>(b), ldb, beta, c, ldc);
  else launch_tiled(trans_a, trans_b, m, n, k, alpha, af, lda, static_cast<const float*>(b), ldb, beta, c, ldc);
}

}  // namespace spinlm::cuda
