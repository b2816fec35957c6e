// Tensor cores for spinlm's kernels: WMMA fragments of the m16n16k16 shape, bf16 A and B (uint16_t bits,
// as every bf16 buffer of spinlm), f32 accumulators. Kernels use only these names, so the same source
// runs on a GPU (nvcuda::wmma, sm_80 and newer) and in the emulator (emu/wmma_emu.h: warp-collective,
// checked, the fragment layouts drawn from SPINLM_CUDA_EMU_SEED).
//
// Rules (CUDA's, checked by the emulator): all 32 lanes of a warp call each load / store / mma with the
// same arguments; tile pointers are 32-byte aligned and leading dimensions a multiple of 16 bytes (8 bf16,
// 4 f32); fragment elements are opaque (touch them only element-wise between fragments of one type,
// e.g. scaling an accumulator); a lane reading what another lane stored needs __syncwarp() between.
#pragma once
#include "cuda_common.cuh"

#ifndef SPINLM_CUDA_EMU
#include <cuda_bf16.h>
#include <mma.h>
#endif

namespace spinlm::cuda::tc {

#ifdef SPINLM_CUDA_EMU
namespace wmma = ::emu::wmma;
using bf16_frag_t = uint16_t;
#define SPIN_TC_SITE , const char *file = __builtin_FILE(), int line = __builtin_LINE()
#define SPIN_TC_AT , file, line
#else
namespace wmma = ::nvcuda::wmma;
using bf16_frag_t = __nv_bfloat16;
#define SPIN_TC_SITE
#define SPIN_TC_AT
#endif

constexpr int kTile = 16;  // m = n = k = 16
// A [m][k] stored row-major (element (r, c) at p[r * ldm + c]) or column-major (p[c * ldm + r]).
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_frag_t, wmma::row_major>;
using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_frag_t, wmma::col_major>;
// B [k][n] stored row-major or column-major (B column-major = B^T row-major: K^T from K's rows).
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_frag_t, wmma::row_major>;
using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_frag_t, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// A 16 x 16 bf16 tile at p (uint16_t bits, global or shared) into an A or B fragment.
template <class F, class P>
__device__ __forceinline__ void load(F& f, P p, unsigned ldm SPIN_TC_SITE) {
#ifdef SPINLM_CUDA_EMU
  wmma::load_matrix_sync(f, p, ldm SPIN_TC_AT);
#else
  wmma::load_matrix_sync(f, reinterpret_cast<const bf16_frag_t*>(p), ldm);
#endif
}

// A 16 x 16 f32 tile at p into an accumulator (row-major or column-major in memory).
template <class P>
__device__ __forceinline__ void load_acc(FragC& f, P p, unsigned ldm, bool row_major SPIN_TC_SITE) {
  wmma::load_matrix_sync(f, p, ldm, row_major ? wmma::mem_row_major : wmma::mem_col_major SPIN_TC_AT);
}

// An accumulator to a 16 x 16 f32 tile at p.
template <class P>
__device__ __forceinline__ void store(P p, const FragC& f, unsigned ldm, bool row_major SPIN_TC_SITE) {
  wmma::store_matrix_sync(p, f, ldm, row_major ? wmma::mem_row_major : wmma::mem_col_major SPIN_TC_AT);
}

// d = a b + c (d may be c).
template <class A, class B>
__device__ __forceinline__ void mma(FragC& d, const A& a, const B& b, const FragC& c SPIN_TC_SITE) {
  wmma::mma_sync(d, a, b, c SPIN_TC_AT);
}

__device__ __forceinline__ void fill(FragC& f, float v) { wmma::fill_fragment(f, v); }

#undef SPIN_TC_SITE
#undef SPIN_TC_AT

}  // namespace spinlm::cuda::tc
