// CUDA kernels of the Llama-family forward and backward: the signatures of native/cpu/model_kernels.h
// in namespace spinlm::cuda, over device pointers (see kernels.h).
#pragma once
#include <cstdint>

#include "kernels.h"

namespace spinlm::cuda {

// row_invariant: the tiled kernel even where cuBLAS would run (cuBLAS picks its algorithm, and so its
// summation order, by shape; the tiled kernel sums every element over k in order, whatever M is).
// compute_bf16 (computeDtype 'bf16'): a and b each f32 or bf16, both rounded to bf16, f32 sums
// (cuBLASLt on a GPU unless row_invariant or SPINLM_CUDA_GEMM=tiled; gemm.cu). Without it a is f32.
void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a, DType a_dt, int64_t lda,
            const void* b, DType b_dt, int64_t ldb, float beta, float* c, int64_t ldc, bool row_invariant, bool compute_bf16);
inline void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                   const void* b, DType b_dt, int64_t ldb, float beta, float* c, int64_t ldc, bool row_invariant = false) {
  matmul(trans_a, trans_b, m, n, k, alpha, a, DType::kF32, lda, b, b_dt, ldb, beta, c, ldc, row_invariant, false);
}
// bf16 compute's row-invariant GEMM on tensor cores (gemm_rows_tc.cu): C[M, N] = alpha bf16(A)[M, K]
// B[N, K]^T (+ beta C), B bf16, f32 accumulation; each row of C depends only on its row of A and on B.
// rows_tc_round rounds A once into the runtime's scratch (valid until the next scratch() user), laid out
// as rows_tc_gemm reads it; several rows_tc_gemm calls may share one (the fused projections).
struct RowsTcA {
  const uint16_t* p;  // [ceil(m / 16) * 16, kp] bf16, zeros past m rows and k columns
  int64_t m, k, kp;   // kp = ceil(k / 16) * 16
};
RowsTcA rows_tc_round(int64_t m, int64_t k, const float* a, int64_t lda);
void rows_tc_gemm(const RowsTcA& a, int64_t n, float alpha, const uint16_t* b, int64_t ldb, float beta, float* c, int64_t ldc);
void matmul_rows_tc(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const uint16_t* b, int64_t ldb,
                    float beta, float* c, int64_t ldc);
// Here the vocabulary size is an argument too: ids are checked on the device.
void embedding(const int32_t* ids, int64_t t, const void* table, DType dt, int64_t vocab, int64_t h, float* out);
void embedding_backward(const int32_t* ids, int64_t t, const float* dout, int64_t vocab, int64_t h, float* dtable);
// unit_offset (Gemma): the scale is 1 + w, the 1 added in f32 as w is read.
void rmsnorm(const float* x, const void* w, DType w_dt, int64_t t, int64_t h, float eps, float* y, float* rstd,
             bool unit_offset = false);
void rmsnorm_backward(const float* x, const void* w, DType w_dt, const float* rstd, const float* dy,
                      int64_t t, int64_t h, float* dx, float* dw, bool unit_offset = false);
// inv_freq: a host table [hd / 2 <= kRopeMaxHalf], passed to the kernel by value.
void rope(float* x, const int32_t* pos, int64_t t, int64_t heads, int64_t hd, const float* inv_freq, float attn, bool inverse);
// window: the sliding window (0 = none); softcap: the attention-logit soft-cap (0 = none), as the CPU
// kernels (native/cpu/model_kernels.h). spans (may be null) [B, L, 3] per query (lo, hideLo, hideHi), as
// there; the kernels check them on the device (a row with invalid spans: NaN, kErrAttentionSpans).
void attention(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
               int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
               float* lse);
void attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask,
                        const int32_t* spans, const float* out, const float* lse, const float* dout, int64_t b, int64_t l,
                        int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* dq,
                        float* dk, float* dv);
// The same on tensor cores (flash_bwd.cu, AttentionOpts.computeDtype 'bf16'): q, k, v, dout rounded to
// bf16, P and dS too before their products, f32 sums; hd a multiple of 16 up to kMaxHeadDim.
void flash_attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask,
                              const int32_t* spans, const float* out, const float* lse, const float* dout, int64_t b,
                              int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap,
                              float* dq, float* dk, float* dv);
// computeDtype 'bf16' (flash_fwd.cu): the same on tensor cores, q, k, v and P rounded to bf16, f32
// softmax and sums; head dims that flash_attention_takes (multiples of 16 up to 256).
bool flash_attention_takes(int64_t hd);
void flash_attention(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
                     int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
                     float* lse);
// Both caches hold cache_dt (f32 or bf16, widened to f32 as read: the math is f32 either way).
void attention_decode(const float* q, const void* k_cache, const void* v_cache, DType cache_dt, const int32_t* lengths,
                      const int32_t* key_mask, int64_t b, int64_t lmax, int64_t nh, int64_t nkv, int64_t hd,
                      float scale, int64_t window, float softcap, float* out);
// act: silu (SwiGLU) or the tanh GELU (GeGLU, Gemma), computed as native/include/common.h says.
void swiglu(const float* gate, const float* up, int64_t n, float* out, GluActivation act = GluActivation::kSilu);
void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n, float* dgate, float* dup,
                     GluActivation act = GluActivation::kSilu);
// Here the destination's row count is an argument too: indices are checked on the device. A bf16
// destination gets the values rounded to nearest even (as cast_values rounds them).
void scatter_rows(const float* src, const int32_t* index, int64_t rows, int64_t cols, void* dst, DType dst_dt, int64_t dst_rows);
void add(const float* a, const float* b, int64_t n, float* y);
void add_bias(float* x, const void* bias, DType dt, int64_t t, int64_t n);
void bias_backward(const float* dy, int64_t t, int64_t n, float* dbias);

// Largest head dimension the attention kernels take (registers hold hd / 32 values per lane).
constexpr int64_t kMaxHeadDim = 256;

}  // namespace spinlm::cuda
