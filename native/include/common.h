// Definitions shared by every native target (C++ on the CPU, CUDA on NVIDIA GPUs).
// Functions marked SPINLM_HD compile as host+device under nvcc and as plain inline C++ elsewhere,
// so the CPU tests exercise exactly the math the CUDA kernels run.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SPINLM_HD __host__ __device__ __forceinline__
#else
#define SPINLM_HD inline
#endif

namespace spinlm {

// Target value that marks a token as carrying no loss (PyTorch's ignore_index).
constexpr int32_t kIgnoreIndex = -100;

// Rows per partial sum of the column reductions (weight and bias gradients): a column sums each chunk
// of this many rows in row order, then the chunks in order, in float64. Fixed, and the same on the CPU
// (native/cpu/layers.cc) and CUDA (native/cuda/layers.cu): the two backends give the same bits.
constexpr int64_t kColumnChunkRows = 64;

// Largest rope table (head_dim / 2): the CUDA kernel takes the inverse frequencies by value (1 KiB).
constexpr int64_t kRopeMaxHalf = 256;

// The activation of the gated MLP, act(gate) * up: SwiGLU's silu (Llama, Qwen, Mistral) or GeGLU's
// tanh-approximated GELU (Gemma: Hugging Face gelu_pytorch_tanh, PyTorch gelu(approximate='tanh')),
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). The kernels compute it as x sigmoid(z) with
// z = 2 sqrt(2/pi) x (1 + 0.044715 x^2): 0.5 (1 + tanh(u)) = sigmoid(2u) exactly, and sigmoid from
// exp(-|z|) has no cancellation anywhere (1 + tanh(u) loses all its digits for u << 0).
enum class GluActivation : int32_t { kSilu = 0, kGeluTanh = 1 };
constexpr float kGeluTanh2C = 1.5957691216057308f;  // 2 sqrt(2 / pi)
constexpr float kGeluTanhA = 0.044715f;

// Element offset of row `row` in a row-major [rows, cols] matrix. Always 64-bit: at real sizes
// rows * vocab passes 2^31 (4096 tokens x 152064 vocab = 6.2e8; 16k x 152064 = 2.5e9).
SPINLM_HD int64_t row_offset(int64_t row, int64_t cols) { return row * cols; }

SPINLM_HD uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
SPINLM_HD float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace spinlm
