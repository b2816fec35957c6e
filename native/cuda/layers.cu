// Elementwise and per-row kernels of the Llama layers: embedding (and a deterministic backward:
// each table value gets its adds in token order, blocks split by column tile and id bucket), RMSNorm
// (one block per row, double sums; Gemma's 1 + w), RoPE, SwiGLU and GeGLU, residual adds, biases,
// KV-cache scatter. Column reductions (weight and bias gradients) are two passes over chunks of rows in
// the CPU backend's order, so their bits equal the CPU's: no atomics.
#include <algorithm>
#include <cmath>

#include "cuda_common.cuh"
#include "model_kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kNaN = __builtin_nanf("");

#define SPIN_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <class T>
__global__ void embedding_kernel(SPIN_GP(const int32_t) ids, int64_t t, SPIN_GP(const T) table, int64_t vocab, int64_t h,
                                 SPIN_GP(float) out, SPIN_GP(uint32_t) err) {
  SPIN_GRID_STRIDE(i, t * h) {
    const int64_t r = i / h, j = i - r * h;
    const int32_t id = ids[r];
    if (id < 0 || id >= vocab) {
      out[i] = kNaN;
      if (j == 0) atomicOr(err, static_cast<uint32_t>(kErrTokenIds));
    } else {
      out[i] = to_f32(table[row_offset(id, h) + j]);
    }
  }
}

// embeddingBackward: dtable[ids[r]] += dout[r] for the tokens in order, f32 adds, as the CPU does.
// blockIdx.x: a tile of columns (a thread per column); blockIdx.y: a bucket of table rows (id % buckets):
// each table value still gets its adds in token order from one thread, so the bits do not depend on
// the bucket count, and buckets x column tiles blocks fill the device where the columns alone would
// not (4096 columns are 16 blocks). A bad id anywhere skips the whole op (as the CPU backend does).
__global__ void __launch_bounds__(kThreads) embedding_backward_kernel(SPIN_GP(const int32_t) ids, int64_t t,
                                                                     SPIN_GP(const float) dout, int64_t vocab, int64_t h,
                                                                     SPIN_GP(float) dtable, SPIN_GP(uint32_t) err) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  const int64_t buckets = gridDim.y, bucket = blockIdx.y;
  bool bad = false;
  for (int64_t r = 0; r < t; ++r) bad |= ids[r] < 0 || ids[r] >= vocab;
  if (bad) {
    if (j == 0 && bucket == 0) atomicOr(err, static_cast<uint32_t>(kErrTokenIds));
    return;
  }
  if (j >= h) return;
  for (int64_t r = 0; r < t; ++r) {
    const int32_t id = ids[r];
    if (id % buckets == bucket) dtable[row_offset(id, h) + j] += dout[row_offset(r, h) + j];
  }
}

// `part` is the block's shared double[kThreads / 32] (a checked shared pointer under the emulator).
template <class P>
__device__ __forceinline__ double block_sum_double(double x, P part) {
  x = warp_sum(x);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // part may still be read by an earlier call
  if (lane == 0) part[warp] = x;
  __syncthreads();
  double t = 0;
  for (int w = 0; w < kThreads / 32; ++w) t += part[w];
  return t;
}

// RMSNorm's scale: w, or 1 + w with the 1 added in f32 (Gemma; a select, so plain w keeps its bits, -0 too).
__device__ __forceinline__ float norm_scale(float w, bool unit_offset) { return unit_offset ? 1.0f + w : w; }

template <class W>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(SPIN_GP(const float) x, SPIN_GP(const W) w, int64_t h, float eps,
                                                          SPIN_GP(float) y, SPIN_GP(float) rstd, bool unit_offset) {
  SPIN_SHARED(double, part, kThreads / 32);
  const int64_t r = blockIdx.x;
  const auto xr = x + row_offset(r, h);
  double ss = 0;
  for (int64_t j = threadIdx.x; j < h; j += kThreads) ss += static_cast<double>(xr[j]) * xr[j];
  ss = block_sum_double(ss, &part[0]);
  const float rs = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(h) + eps));
  if (threadIdx.x == 0) rstd[r] = rs;
  auto yr = y + row_offset(r, h);
  for (int64_t j = threadIdx.x; j < h; j += kThreads) yr[j] = xr[j] * rs * norm_scale(to_f32(w[j]), unit_offset);
}

template <class W>
__global__ void __launch_bounds__(kThreads) rmsnorm_backward_kernel(SPIN_GP(const float) x, SPIN_GP(const W) w,
                                                                   SPIN_GP(const float) rstd, SPIN_GP(const float) dy,
                                                                   int64_t h, SPIN_GP(float) dx, bool unit_offset) {
  SPIN_SHARED(double, part, kThreads / 32);
  const int64_t r = blockIdx.x;
  const auto xr = x + row_offset(r, h);
  const auto gr = dy + row_offset(r, h);
  double dot = 0;
  for (int64_t j = threadIdx.x; j < h; j += kThreads) dot += static_cast<double>(norm_scale(to_f32(w[j]), unit_offset)) * gr[j] * xr[j];
  dot = block_sum_double(dot, &part[0]);
  const float rs = rstd[r];
  const float c = static_cast<float>(dot / static_cast<double>(h)) * rs * rs * rs;
  auto dr = dx + row_offset(r, h);
  for (int64_t j = threadIdx.x; j < h; j += kThreads) dr[j] = rs * norm_scale(to_f32(w[j]), unit_offset) * gr[j] - xr[j] * c;
}

// Column reductions (rmsnorm's dw, a bias's gradient): acc[j] += float(sum over rows r of f(r, j)) in
// the CPU backend's order (native/cpu/layers.cc column_reduce), so the bits equal the CPU's: each chunk
// of kColumnChunkRows rows summed in row order in float64 (pass 1: a block per (column tile, chunk),
// a thread per column, coalesced row reads), then the chunks' partials in chunk order (pass 2, one
// thread per column). No atomics; the grid is a function of the shape alone. With one chunk, pass 1
// adds into acc itself (0 + p is p: the same bits).
template <bool kRms>
__device__ __forceinline__ double column_term(SPIN_GP(const float) dy, SPIN_GP(const float) x, SPIN_GP(const float) rstd,
                                              int64_t r, int64_t i) {
  if constexpr (kRms) return static_cast<double>(dy[i]) * x[i] * rstd[r];
  else return static_cast<double>(dy[i]);
}

template <bool kRms>
__global__ void __launch_bounds__(kThreads) column_partial_kernel(SPIN_GP(const float) dy, SPIN_GP(const float) x,
                                                                 SPIN_GP(const float) rstd, int64_t t, int64_t n,
                                                                 SPIN_GP(double) partial, SPIN_GP(float) acc, int direct) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n) return;
  const int64_t chunks = (t + kColumnChunkRows - 1) / kColumnChunkRows;
  for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
    const int64_t r1 = (c + 1) * kColumnChunkRows < t ? (c + 1) * kColumnChunkRows : t;
    double p = 0;
    for (int64_t r = c * kColumnChunkRows; r < r1; ++r) p += column_term<kRms>(dy, x, rstd, r, row_offset(r, n) + j);
    if (direct) acc[j] += static_cast<float>(p);
    else partial[row_offset(c, n) + j] = p;
  }
}

__global__ void __launch_bounds__(kThreads) column_finish_kernel(SPIN_GP(const double) partial, int64_t chunks, int64_t n,
                                                                SPIN_GP(float) acc) {
  SPIN_GRID_STRIDE(j, n) {
    double s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[row_offset(c, n) + j];
    acc[j] += static_cast<float>(s);
  }
}

// The inverse frequencies travel in the launch's parameters: no device buffer, no copy.
struct RopeFreq {
  float v[kRopeMaxHalf];
};

// One thread per (token, head, i < hd/2) pair of rotated values.
__global__ void rope_kernel(SPIN_GP(float) x, SPIN_GP(const int32_t) pos, int64_t t, int64_t heads, int64_t hd, RopeFreq freq,
                            float attn, int inverse, SPIN_GP(uint32_t) err) {
  const int64_t half = hd / 2;
  SPIN_GRID_STRIDE(k, t * heads * half) {
    const int64_t i = k % half, rh = k / half, r = rh / heads;
    const int32_t p = pos[r];
    if (p < 0) {
      if (i == 0 && rh % heads == 0) atomicOr(err, static_cast<uint32_t>(kErrPositions));
      continue;
    }
    const float angle = static_cast<float>(p) * freq.v[i];
    const float c = static_cast<float>(cos(static_cast<double>(angle))) * attn;  // x 1 is exact
    float s = static_cast<float>(sin(static_cast<double>(angle))) * attn;
    if (inverse) s = -s;
    auto v = x + rh * hd;
    const float a = v[i], b = v[half + i];
    v[i] = a * c - b * s;
    v[half + i] = b * c + a * s;
  }
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void swiglu_kernel(SPIN_GP(const float) gate, SPIN_GP(const float) up, int64_t n, SPIN_GP(float) out) {
  SPIN_GRID_STRIDE(i, n) {
    const float g = gate[i];
    out[i] = g * sigmoid_f(g) * up[i];
  }
}

__global__ void swiglu_backward_kernel(SPIN_GP(const float) gate, SPIN_GP(const float) up, SPIN_GP(const float) dout, int64_t n,
                                       SPIN_GP(float) dgate, SPIN_GP(float) dup) {
  SPIN_GRID_STRIDE(i, n) {
    const float g = gate[i], sg = sigmoid_f(g), d = dout[i];
    dup[i] = d * g * sg;
    dgate[i] = d * up[i] * sg * (1.0f + g * (1.0f - sg));
  }
}

// GeGLU (native/include/common.h): gelu(g) = g sigmoid(z), z = 2 sqrt(2/pi) g (1 + 0.044715 g^2); sigmoid
// from exp(-|z|) (no overflow, no cancellation).
__device__ __forceinline__ float gelu_z(float g) { return kGeluTanh2C * g * (1.0f + kGeluTanhA * g * g); }
__device__ __forceinline__ float gelu_dz(float g) { return kGeluTanh2C * (1.0f + 3.0f * kGeluTanhA * g * g); }
__device__ __forceinline__ float sigmoid_stable(float z) {
  const float e = expf(-fabsf(z));
  return z < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
}

__global__ void geglu_kernel(SPIN_GP(const float) gate, SPIN_GP(const float) up, int64_t n, SPIN_GP(float) out) {
  SPIN_GRID_STRIDE(i, n) {
    const float g = gate[i];
    out[i] = g * sigmoid_stable(gelu_z(g)) * up[i];
  }
}

// d/dg of g sigmoid(z) = s (1 + g (1 - s) dz/dg).
__global__ void geglu_backward_kernel(SPIN_GP(const float) gate, SPIN_GP(const float) up, SPIN_GP(const float) dout, int64_t n,
                                      SPIN_GP(float) dgate, SPIN_GP(float) dup) {
  SPIN_GRID_STRIDE(i, n) {
    const float g = gate[i], s = sigmoid_stable(gelu_z(g)), d = dout[i];
    dup[i] = d * g * s;
    dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s) * gelu_dz(g));
  }
}

// dst rows by index (T: float, or uint16_t bf16 rounded to nearest even as cast rounds); a bad index
// skips its row and raises the bit.
template <class T>
__global__ void scatter_rows_kernel(SPIN_GP(const float) src, SPIN_GP(const int32_t) index, int64_t rows, int64_t cols,
                                    SPIN_GP(T) dst, int64_t dst_rows, SPIN_GP(uint32_t) err) {
  SPIN_GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, j = i - r * cols;
    const int32_t d = index[r];
    if (d < 0 || d >= dst_rows) {
      if (j == 0) atomicOr(err, static_cast<uint32_t>(kErrScatterIndex));
      continue;
    }
    dst[row_offset(d, cols) + j] = from_f32<T>(src[i]);
  }
}

__global__ void add_kernel(SPIN_GA(const float) a, SPIN_GA(const float) b, int64_t n, SPIN_GA(float) y) {
  SPIN_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

template <class T>
__global__ void add_bias_kernel(SPIN_GP(float) x, SPIN_GP(const T) bias, int64_t t, int64_t n) {
  SPIN_GRID_STRIDE(i, t * n) x[i] += to_f32(bias[i % n]);
}

dim3 grid_for(int64_t n) { return dim3(elementwise_blocks(n, kThreads)); }

}  // namespace

void embedding(const int32_t* ids, int64_t t, const void* table, DType dt, int64_t vocab, int64_t h, float* out) {
  if (t * h == 0) return;
  if (dt == DType::kBF16)
    SPIN_LAUNCH(embedding_kernel<uint16_t>, grid_for(t * h), dim3(kThreads), 0, stream(), ids, t, static_cast<const uint16_t*>(table),
                vocab, h, out, error_word());
  else
    SPIN_LAUNCH(embedding_kernel<float>, grid_for(t * h), dim3(kThreads), 0, stream(), ids, t, static_cast<const float*>(table), vocab,
                h, out, error_word());
  check_launch("embedding");
}

void embedding_backward(const int32_t* ids, int64_t t, const float* dout, int64_t vocab, int64_t h, float* dtable) {
  if (t == 0 || h == 0) return;
  const int64_t tiles = (h + kThreads - 1) / kThreads;
  // about 4 blocks per multiprocessor; at most one bucket per table row, and no more than 64 (each block reads all t ids)
  int64_t buckets = (4 * static_cast<int64_t>(sm_count()) + tiles - 1) / tiles;
  buckets = std::max<int64_t>(1, std::min<int64_t>({buckets, vocab, 64}));
  SPIN_LAUNCH(embedding_backward_kernel, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(buckets)), dim3(kThreads), 0,
              stream(), ids, t, dout, vocab, h, dtable, error_word());
  check_launch("embeddingBackward");
}

// acc[j] += the column sums of f over t rows (column_partial_kernel): pass 1, then pass 2 when there
// is more than one chunk. x and rstd are read only for rmsnorm's dw (kRms).
template <bool kRms>
void column_reduce(const float* dy, const float* x, const float* rstd, int64_t t, int64_t n, float* acc, const char* op) {
  const int64_t chunks = (t + kColumnChunkRows - 1) / kColumnChunkRows;
  const unsigned threads = static_cast<unsigned>(std::min<int64_t>(kThreads, (n + 31) / 32 * 32));  // few columns: small blocks
  const dim3 grid(static_cast<unsigned>((n + threads - 1) / threads), static_cast<unsigned>(std::min<int64_t>(chunks, 65535)));
  double* partial = chunks > 1 ? static_cast<double*>(scratch(static_cast<size_t>(chunks * n) * sizeof(double), op)) : nullptr;
  SPIN_LAUNCH(column_partial_kernel<kRms>, grid, dim3(threads), 0, stream(), dy, x, rstd, t, n, partial, acc, chunks > 1 ? 0 : 1);
  if (chunks > 1) SPIN_LAUNCH(column_finish_kernel, grid_for(n), dim3(kThreads), 0, stream(), partial, chunks, n, acc);
}

void rmsnorm(const float* x, const void* w, DType w_dt, int64_t t, int64_t h, float eps, float* y, float* rstd, bool unit_offset) {
  if (t == 0) return;
  if (w_dt == DType::kBF16)
    SPIN_LAUNCH(rmsnorm_kernel<uint16_t>, dim3(static_cast<unsigned>(t)), dim3(kThreads), 0, stream(), x,
                static_cast<const uint16_t*>(w), h, eps, y, rstd, unit_offset);
  else
    SPIN_LAUNCH(rmsnorm_kernel<float>, dim3(static_cast<unsigned>(t)), dim3(kThreads), 0, stream(), x, static_cast<const float*>(w), h,
                eps, y, rstd, unit_offset);
  check_launch("rmsnorm");
}

void rmsnorm_backward(const float* x, const void* w, DType w_dt, const float* rstd, const float* dy, int64_t t, int64_t h,
                      float* dx, float* dw, bool unit_offset) {
  if (t == 0) return;
  if (w_dt == DType::kBF16)
    SPIN_LAUNCH(rmsnorm_backward_kernel<uint16_t>, dim3(static_cast<unsigned>(t)), dim3(kThreads), 0, stream(), x,
                static_cast<const uint16_t*>(w), rstd, dy, h, dx, unit_offset);
  else
    SPIN_LAUNCH(rmsnorm_backward_kernel<float>, dim3(static_cast<unsigned>(t)), dim3(kThreads), 0, stream(), x,
                static_cast<const float*>(w), rstd, dy, h, dx, unit_offset);
  if (dw) column_reduce<true>(dy, x, rstd, t, h, dw, "rmsnormBackward");
  check_launch("rmsnormBackward");
}

void rope(float* x, const int32_t* pos, int64_t t, int64_t heads, int64_t hd, const float* inv_freq, float attn, bool inverse) {
  if (t * heads * hd == 0) return;
  RopeFreq freq{};
  std::copy(inv_freq, inv_freq + hd / 2, freq.v);  // hd / 2 <= kRopeMaxHalf: checked by the binding
  SPIN_LAUNCH(rope_kernel, grid_for(t * heads * (hd / 2)), dim3(kThreads), 0, stream(), x, pos, t, heads, hd, freq, attn,
              inverse ? 1 : 0, error_word());
  check_launch("rope");
}

void swiglu(const float* gate, const float* up, int64_t n, float* out, GluActivation act) {
  if (n == 0) return;
  if (act == GluActivation::kGeluTanh)
    SPIN_LAUNCH(geglu_kernel, grid_for(n), dim3(kThreads), 0, stream(), gate, up, n, out);
  else
    SPIN_LAUNCH(swiglu_kernel, grid_for(n), dim3(kThreads), 0, stream(), gate, up, n, out);
  check_launch("swiglu");
}

void swiglu_backward(const float* gate, const float* up, const float* dout, int64_t n, float* dgate, float* dup, GluActivation act) {
  if (n == 0) return;
  if (act == GluActivation::kGeluTanh)
    SPIN_LAUNCH(geglu_backward_kernel, grid_for(n), dim3(kThreads), 0, stream(), gate, up, dout, n, dgate, dup);
  else
    SPIN_LAUNCH(swiglu_backward_kernel, grid_for(n), dim3(kThreads), 0, stream(), gate, up, dout, n, dgate, dup);
  check_launch("swigluBackward");
}

void scatter_rows(const float* src, const int32_t* index, int64_t rows, int64_t cols, void* dst, DType dst_dt, int64_t dst_rows) {
  if (rows * cols == 0) return;
  if (dst_dt == DType::kBF16)
    SPIN_LAUNCH(scatter_rows_kernel<uint16_t>, grid_for(rows * cols), dim3(kThreads), 0, stream(), src, index, rows, cols,
                static_cast<uint16_t*>(dst), dst_rows, error_word());
  else
    SPIN_LAUNCH(scatter_rows_kernel<float>, grid_for(rows * cols), dim3(kThreads), 0, stream(), src, index, rows, cols,
                static_cast<float*>(dst), dst_rows, error_word());
  check_launch("scatterRows");
}

void add(const float* a, const float* b, int64_t n, float* y) {
  if (n == 0) return;
  SPIN_LAUNCH(add_kernel, grid_for(n), dim3(kThreads), 0, stream(), a, b, n, y);
  check_launch("add");
}

void add_bias(float* x, const void* bias, DType dt, int64_t t, int64_t n) {
  if (t * n == 0) return;
  if (dt == DType::kBF16)
    SPIN_LAUNCH(add_bias_kernel<uint16_t>, grid_for(t * n), dim3(kThreads), 0, stream(), x, static_cast<const uint16_t*>(bias), t, n);
  else
    SPIN_LAUNCH(add_bias_kernel<float>, grid_for(t * n), dim3(kThreads), 0, stream(), x, static_cast<const float*>(bias), t, n);
  check_launch("addBias");
}

void bias_backward(const float* dy, int64_t t, int64_t n, float* dbias) {
  if (n == 0 || t == 0) return;
  column_reduce<false>(dy, dy, dy, t, n, dbias, "biasBackward");
  check_launch("biasBackward");
}

}  // namespace spinlm::cuda
