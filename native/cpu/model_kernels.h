// CPU kernels of the Llama-family forward and backward (docs/design.md). fp32 compute; weights
// f32 or bf16. Shapes: T tokens (rows), H hidden, nH / nKV heads, hd head dim, I intermediate size.
// The N-API layer (native/model_ops.cc) validates shapes, ids and bounds before calling.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace spinlm {

// C[M, N] = alpha * op(A) op(B) + beta * C, row-major, through OpenBLAS cblas_sgemm. A is f32; B is
// f32 or bf16 (bf16 is widened into a reused f32 scratch first). lda/ldb/ldc are row strides.
void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            int64_t lda, const void* b, DType b_dt, int64_t ldb, float beta, float* c, int64_t ldc);
// C[M, N] = alpha * A[M, K] B[N, K]^T + beta * C with each element summed in one fixed order, so a
// row of C depends only on its row of A and on B (never on M or the thread count): the linear layers
// of generation (gemm_rows.cc). B f32 or bf16, read in place. compute_bf16 (B must be bf16): A is
// rounded to bf16 first and the exact bf16 products are summed in f32 (vdpbf16ps where the CPU has it).
void matmul_rows(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const void* b, DType b_dt, int64_t ldb,
                 float beta, float* c, int64_t ldc, bool compute_bf16 = false);
// One B and its C for matmul_rows_many: C[M, n] = A B[n, K]^T.
struct RowsJob {
  const void* b;
  DType b_dt;
  int64_t n, ldb;
  float* c;
  int64_t ldc;
};
// matmul_rows for several B on one A (alpha 1, beta 0), in one parallel region: the fused q/k/v and
// gate/up projections of generation. Each C is bit for bit what matmul_rows gives it alone.
void matmul_rows_many(int64_t m, int64_t k, const float* a, int64_t lda, const RowsJob* jobs, int count, bool compute_bf16 = false);

// out[t, :] = table[ids[t], :] (table [V, H] f32 or bf16).
void embedding(const int32_t* ids, int64_t t, const void* table, DType dt, int64_t h, float* out);
// dtable[ids[t], :] += dout[t, :], tokens in order (deterministic).
void embedding_backward(const int32_t* ids, int64_t t, const float* dout, int64_t h, float* dtable);

// y = x * rstd * w, rstd[t] = 1 / sqrt(mean(x[t]^2) + eps). x [T, H] f32, w [H] f32|bf16.
// unit_offset (Gemma): the scale is 1 + w, the 1 added in f32 as w is read (w itself is stored).
void rmsnorm(const float* x, const void* w, DType w_dt, int64_t t, int64_t h, float eps, float* y,
             float* rstd, bool unit_offset = false);
// dx = rstd * w * dy - x * rstd^3 * mean(w * dy * x); dw[j] += sum_t dy * x * rstd (fixed order).
// unit_offset: 1 + w for w in dx; dw is the same sum (d(1 + w)/dw = 1).
void rmsnorm_backward(const float* x, const void* w, DType w_dt, const float* rstd, const float* dy,
                      int64_t t, int64_t h, float* dx, float* dw, bool unit_offset = false);

// Rotary embedding in place on x [T, heads, hd] (HF rotate_half: pairs (i, i + hd/2)) with the host
// table inv_freq [hd/2] (as Hugging Face computes it for the rope type, src/model/rope.ts): angle =
// pos * inv_freq_i in fp32, cos and sin times attn (HF attention_scaling). inverse = true applies the
// transpose (angle -> -angle, still times attn): the backward.
void rope(float* x, const int32_t* pos, int64_t t, int64_t heads, int64_t hd, const float* inv_freq,
          float attn, bool inverse);

// Causal grouped-query attention over B sequences of L positions: q [B, L, nH, hd], k/v [B, L, nKV, hd],
// key_mask [B, L] (1 = a key to attend to). Query i attends to keys j <= i with mask 1 and, with a sliding
// window > 0, i - j < window. softcap > 0 (Gemma 2's attn_logit_softcapping, 0 = none): the scores
// scale q.k become softcap * tanh(scale q.k / softcap) before the mask and the softmax.
// out [B, L, nH, hd]; lse [B, nH, L] (-inf for a query with no key: its output is 0).
// spans (may be null) [B, L, 3]: the pair / packing layout, per query (lo, hideLo, hideHi), valid (checked
// by the binding): query i sees keys lo <= j <= i outside [hideLo, hideHi); the window counts
// dist(i, j) = i - j - (j < hideLo ? hideHi - hideLo : 0) (src/backend/backend.ts AttentionOpts.spans).
void attention(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
               int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
               float* lse);
// Backward from the saved out and lse: dq (overwritten), dk and dv (overwritten; heads sharing a kv head
// are summed in head order).
void attention_backward(const float* q, const float* k, const float* v, const int32_t* key_mask,
                        const int32_t* spans, const float* out, const float* lse, const float* dout, int64_t b, int64_t l,
                        int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* dq,
                        float* dk, float* dv);
// The two above with spans (attention_spans.cc, attention_spans_backward.cc; they call these).
void attention_spans(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans, int64_t b,
                     int64_t l, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out,
                     float* lse);
void attention_spans_backward(const float* q, const float* k, const float* v, const int32_t* key_mask, const int32_t* spans,
                              const float* out, const float* lse, const float* dout, int64_t b, int64_t l, int64_t nh, int64_t nkv,
                              int64_t hd, float scale, int64_t window, float softcap, float* dq, float* dk, float* dv);
// One new query per sequence against a KV cache: q [B, nH, hd], caches [B, nKV, Lmax, hd] (each kv
// head's positions contiguous, so a head's keys stream from memory in order); sequence b
// attends to its first lengths[b] cached positions whose key_mask (may be null) is 1 and, with a sliding
// window > 0, only the last `window` of them (the query is position lengths[b] - 1). out [B, nH, hd].
void attention_decode(const float* q, const void* k_cache, const void* v_cache, DType cache_dt,
                      const int32_t* lengths, const int32_t* key_mask, int64_t b, int64_t lmax,
                      int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t window, float softcap, float* out);

// SwiGLU: out = silu(gate) * up, or GeGLU: gelu_tanh(gate) * up (act, common.h); backward: dgate, dup.
void swiglu(const float* gate, const float* up, int64_t n, float* out, GluActivation act = GluActivation::kSilu);
void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n, float* dgate,
                     float* dup, GluActivation act = GluActivation::kSilu);

// dst[index[r], :] = src[r, :] for r < rows (dst rows of `cols` f32): writes new keys/values into a KV cache.
void scatter_rows(const float* src, const int32_t* index, int64_t rows, int64_t cols, void* dst, DType dst_dt);

// y[i] = a[i] + b[i] (y may alias a or b).
void add(const float* a, const float* b, int64_t n, float* y);
// x[t, j] += bias[j] (bias f32|bf16); dbias[j] += sum_t dy[t, j] (fixed order).
void add_bias(float* x, const void* bias, DType dt, int64_t t, int64_t n);
void bias_backward(const float* dy, int64_t t, int64_t n, float* dbias);

}  // namespace spinlm
