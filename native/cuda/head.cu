// The LM head fused with the target log-probs on CUDA (docs/ops.md "Fused head"): the logits h w^T
// exist only as a panel of rows x vocabulary columns at a time, never as [n, v]. The design is the
// CPU's (native/cpu/head.cc).
//
// Forward: for each panel of kPanel vocabulary columns (in order), for each chunk of kRows rows, the
// panel's logits come from the row-invariant tiled GEMM (gemm.cu: each output one thread's sum over k
// in order, whatever m; with bf16 compute and bf16 w the tensor-core one of gemm_rows_tc.cu, h rounded once),
// into a device scratch [rows, panel]; head_panel_kernel (one block per row,
// a fixed column-to-thread split and a fixed reduction order) soft-caps them, reduces the row's
// panel to a (max, sum) pair and merges it into the row's running pair in device memory, and keeps
// the target's logit when its column is in the panel; head_finish_kernel writes lse and logp. So a
// row's lse and logp depend only on its row of h, on w and on its target, bit for bit (computeDtype
// 'bf16': only with rowInvariant; without it the panel logits come from cuBLASLt).
//
// Backward: the same panels again; the logits are recomputed by matmul (cuBLAS on a GPU) from the
// panel of w (widened once to f32 when w is bf16), turned in place into g = dlogp (1[j = y] - p_j)
// (times the soft-cap's derivative) by head_grad_kernel, then dh (+)= g w_panel and
// dw_panel += g^T h, two more matmul calls.
//
// computeDtype 'bf16' (compute_bf16): h is rounded once into a bf16 scratch, w goes in as it is (bf16)
// or is rounded panel by panel by matmul, and every product is matmul's bf16 compute: the forward's
// panel logits through cuBLASLt unless row_invariant (then the tiled kernel on the bf16 operands, as
// in the emulator), the backward's three GEMMs through cuBLASLt, g rounded to bf16 by matmul's cast
// before dh = g w and dw = g^T h (as autocast's bf16 gradients are).
//
// Targets are checked on the device: a target outside [0, v) other than -100 gives NaN outputs for
// its row (forward), NaN gradient entries for its row (backward: so dh's row and dw turn NaN), and
// raises kErrTargets in the error word. Scratch comes from the caching allocator (device_alloc, not
// runtime.h scratch(), which matmul itself uses for its bf16 widening) and goes back at the end: one
// stream orders every use, so the blocks can be reused at once.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_common.cuh"
#include "kernels.h"
#include "model_kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int64_t kPanel = 2048;  // vocabulary columns per panel: the same for every n (row-invariance)
constexpr int64_t kRows = 4096;   // rows per chunk: the logits scratch is kRows x kPanel f32 (32 MiB)
constexpr int kThreads = 256;     // head_panel_kernel: one block per row
constexpr int kGradThreads = 256;
constexpr float kNaN = __builtin_nanf("");

// The row's panel of logits z [vc] (soft-capped when cap > 0) merged into its running (max, sum) in
// state [2, n] (first panel: from empty); the target's logit into zy[r] when y is in [v0, v0 + vc).
// Block b takes row r0 + b of the chunk. Rows with an ignored or bad target are left to the finish.
__global__ void __launch_bounds__(kThreads) head_panel_kernel(SPIN_GP(const float) z, int64_t vc, int64_t r0, int64_t n,
                                                              int64_t v0, int64_t v, SPIN_GP(const int32_t) targets, float cap,
                                                              int first, SPIN_GP(float) state, SPIN_GP(float) zy) {
  SPIN_SHARED(LseAcc, red, kThreads / 32);
  const int64_t i = blockIdx.x, r = r0 + i;
  const int32_t y = targets[r];
  if (y < 0 || y >= v) return;  // ignored or bad: the whole block leaves before any barrier
  const auto row = z + i * vc;
  const int64_t yl = y - v0;  // the target's column in this panel (may be outside it)
  const float inv = cap > 0.0f ? 1.0f / cap : 0.0f;
  LseAcc acc = lse_empty();
  for (int64_t j = threadIdx.x; j < vc; j += kThreads) {
    float x = row[j];
    if (cap > 0.0f) x = cap * tanhf(x * inv);
    lse_push(acc, x);
    if (j == yl) zy[r] = x;
  }
  const LseAcc panel = block_lse<kThreads>(acc, &red[0]);
  if (threadIdx.x == 0) {
    const LseAcc prev = first ? lse_empty() : LseAcc{state[r], state[n + r]};
    const LseAcc m = lse_merge(prev, panel);
    state[r] = m.max;
    state[n + r] = m.sum;
  }
}

__global__ void head_finish_kernel(int64_t n, int64_t v, SPIN_GP(const int32_t) targets, SPIN_GP(const float) state,
                                   SPIN_GP(const float) zy, SPIN_GP(float) logp, SPIN_GP(float) lse, SPIN_GP(uint32_t) err) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < n; r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t y = targets[r];
    if (y == kIgnoreIndex) {
      logp[r] = lse[r] = 0.0f;
      continue;
    }
    if (y < 0 || y >= v) {
      logp[r] = lse[r] = kNaN;
      atomicOr(err, static_cast<uint32_t>(kErrTargets));
      continue;
    }
    const float l = lse_value(LseAcc{state[r], state[n + r]});
    lse[r] = l;
    logp[r] = zy[r] - l;
  }
}

// In place over the chunk's panel z [rc, vc]: g = dlogp (1[j = y] - exp(z - lse)) (soft-capped: with
// the capped z, times 1 - tanh^2); ignored rows and rows with dlogp 0 give 0, bad targets NaN (and
// the error bit). Grid (column blocks, rows of the chunk); each element read and written by one thread.
__global__ void __launch_bounds__(kGradThreads) head_grad_kernel(SPIN_GP(float) z, int64_t vc, int64_t r0, int64_t v0, int64_t v,
                                                                 SPIN_GP(const int32_t) targets, float cap, SPIN_GP(const float) lse,
                                                                 SPIN_GP(const float) dlogp, SPIN_GP(uint32_t) err) {
  const int64_t i = blockIdx.y, r = r0 + i;
  const int32_t y = targets[r];
  auto row = z + i * vc;
  const int64_t j0 = blockIdx.x * static_cast<int64_t>(kGradThreads) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kGradThreads;
  const bool bad = y != kIgnoreIndex && (y < 0 || y >= v);
  const float g = bad || y == kIgnoreIndex ? 0.0f : dlogp[r];
  if (bad || g == 0.0f) {
    const float fill = bad ? kNaN : 0.0f;
    for (int64_t j = j0; j < vc; j += stride) row[j] = fill;
    if (bad && j0 == 0 && v0 == 0) atomicOr(err, static_cast<uint32_t>(kErrTargets));
    return;
  }
  const float l = lse[r];
  const int64_t yl = y - v0;
  if (cap > 0.0f) {
    const float inv = 1.0f / cap;
    for (int64_t j = j0; j < vc; j += stride) {
      const float t = tanhf(row[j] * inv), capped = cap * t;
      const float d = j == yl ? g * -expm1f(capped - l) : -g * expf(capped - l);
      row[j] = d * (1.0f - t * t);
    }
  } else {
    for (int64_t j = j0; j < vc; j += stride) {
      const float x = row[j];
      row[j] = j == yl ? g * -expm1f(x - l) : -g * expf(x - l);
    }
  }
}

// A block from the caching allocator for the length of an op (counted in the live bytes).
class DeviceScratch {
 public:
  DeviceScratch(size_t bytes, const char* op) : bytes_(std::max<size_t>(bytes, 4)) {
    AllocResult a = device_alloc(bytes_);
    if (!a.ptr) throw std::runtime_error(std::string(op) + ": " + a.error);
    p_ = a.ptr;
  }
  ~DeviceScratch() { device_free(p_, bytes_); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  float* f32() const { return static_cast<float*>(p_); }

 private:
  size_t bytes_;
  void* p_;
};

const void* w_rows(const void* w, DType wdt, int64_t row, int64_t hdim) {
  return static_cast<const char*>(w) + row * hdim * dtype_size(wdt);
}

// h as the GEMMs take it: with compute_bf16 rounded once into `buf` (bf16), else as it is.
struct HeadInput {
  const void* p;
  DType dt;
  const void* rows(int64_t r0, int64_t hdim) const { return static_cast<const char*>(p) + r0 * hdim * dtype_size(dt); }
};
HeadInput head_input(const float* h, int64_t n, int64_t hdim, bool compute_bf16, const DeviceScratch& buf) {
  if (!compute_bf16) return {h, DType::kF32};
  spinlm::cuda::cast_values(h, DType::kF32, buf.f32(), DType::kBF16, n * hdim);
  return {buf.f32(), DType::kBF16};
}

}  // namespace

void head_logprob(const float* h, int64_t n, int64_t hdim, const void* w, DType wdt, int64_t v, const int32_t* targets,
                  float softcap, bool row_invariant, bool compute_bf16, float* logp, float* lse) {
  if (n == 0) return;
  // bf16 compute: row-invariant (generation) with a bf16 w on tensor cores (gemm_rows_tc.cu, h rounded
  // once); otherwise cuBLASLt unless asked to be row-invariant; f32 compute: always the tiled kernel
  const bool tc = compute_bf16 && row_invariant && wdt == DType::kBF16;
  const RowsTcA hr = tc ? rows_tc_round(n, hdim, h, hdim) : RowsTcA{};
  const bool rows_fixed = !compute_bf16 || row_invariant;
  DeviceScratch hbuf(compute_bf16 && !tc ? static_cast<size_t>(n * hdim) * 2 : 4, "headLogprob");
  const HeadInput hin = head_input(h, n, hdim, compute_bf16 && !tc, hbuf);
  // state [2, n] (running max, sum), then zy [n] (the target's logit)
  DeviceScratch state(static_cast<size_t>(n) * 3 * sizeof(float), "headLogprob");
  float* zy = state.f32() + 2 * n;
  DeviceScratch z(static_cast<size_t>(std::min(n, kRows) * std::min(v, kPanel)) * sizeof(float), "headLogprob");
  for (int64_t v0 = 0; v0 < v; v0 += kPanel) {
    const int64_t vc = std::min(kPanel, v - v0);
    for (int64_t r0 = 0; r0 < n; r0 += kRows) {
      const int64_t rc = std::min(kRows, n - r0);
      if (tc)
        rows_tc_gemm(RowsTcA{hr.p ? hr.p + r0 * hr.kp : nullptr, rc, hdim, hr.kp}, vc, 1.0f,
                     static_cast<const uint16_t*>(w_rows(w, wdt, v0, hdim)), hdim, 0.0f, z.f32(), vc);
      else
        matmul(false, true, rc, vc, hdim, 1.0f, hin.rows(r0, hdim), hin.dt, hdim, w_rows(w, wdt, v0, hdim), wdt, hdim, 0.0f,
               z.f32(), vc, rows_fixed, compute_bf16);
      SPIN_LAUNCH(head_panel_kernel, dim3(static_cast<unsigned>(rc)), dim3(kThreads), 0, stream(),
                  static_cast<const float*>(z.f32()), vc, r0, n, v0, v, targets, softcap, v0 == 0 ? 1 : 0, state.f32(), zy);
    }
  }
  SPIN_LAUNCH(head_finish_kernel, dim3(elementwise_blocks(n, 128)), dim3(128), 0, stream(), n, v, targets,
              static_cast<const float*>(state.f32()), static_cast<const float*>(zy), logp, lse, error_word());
  check_launch("headLogprob");
}

void head_logprob_backward(const float* h, int64_t n, int64_t hdim, const void* w, DType wdt, int64_t v,
                           const int32_t* targets, float softcap, const float* lse, const float* dlogp, float* dh,
                           float* dw, bool compute_bf16) {
  if (n == 0 || hdim == 0) return;  // dh and dw are empty
  DeviceScratch z(static_cast<size_t>(std::min(n, kRows) * std::min(v, kPanel)) * sizeof(float), "headLogprobBackward");
  if (compute_bf16) {
    // bf16 compute: h rounded once; w as it is (matmul rounds an f32 panel); g rounded by matmul
    DeviceScratch hbuf(static_cast<size_t>(n * hdim) * 2, "headLogprobBackward");
    const HeadInput hin = head_input(h, n, hdim, true, hbuf);
    const unsigned cb = static_cast<unsigned>((std::min(v, kPanel) + kGradThreads - 1) / kGradThreads);
    for (int64_t v0 = 0; v0 < v; v0 += kPanel) {
      const int64_t vc = std::min(kPanel, v - v0);
      const void* wp = w_rows(w, wdt, v0, hdim);
      for (int64_t r0 = 0; r0 < n; r0 += kRows) {
        const int64_t rc = std::min(kRows, n - r0);
        matmul(false, true, rc, vc, hdim, 1.0f, hin.rows(r0, hdim), hin.dt, hdim, wp, wdt, hdim, 0.0f, z.f32(), vc, false, true);
        SPIN_LAUNCH(head_grad_kernel, dim3(cb, static_cast<unsigned>(rc)), dim3(kGradThreads), 0, stream(), z.f32(), vc, r0, v0, v,
                    targets, softcap, lse, dlogp, error_word());
        matmul(false, false, rc, hdim, vc, 1.0f, z.f32(), DType::kF32, vc, wp, wdt, hdim, v0 == 0 ? 0.0f : 1.0f, dh + r0 * hdim, hdim,
               false, true);
        if (dw)
          matmul(true, false, vc, hdim, rc, 1.0f, z.f32(), DType::kF32, vc, hin.rows(r0, hdim), hin.dt, hdim, 1.0f, dw + v0 * hdim,
                 hdim, false, true);
      }
    }
    check_launch("headLogprobBackward");
    return;
  }
  const bool widen = wdt == DType::kBF16;
  DeviceScratch wide(widen ? static_cast<size_t>(std::min(v, kPanel) * hdim) * sizeof(float) : 4, "headLogprobBackward");
  const unsigned col_blocks = static_cast<unsigned>((std::min(v, kPanel) + kGradThreads - 1) / kGradThreads);
  for (int64_t v0 = 0; v0 < v; v0 += kPanel) {
    const int64_t vc = std::min(kPanel, v - v0);
    const float* wp = static_cast<const float*>(w_rows(w, DType::kF32, v0, hdim));
    if (widen) {
      spinlm::cuda::cast_values(w_rows(w, wdt, v0, hdim), wdt, wide.f32(), DType::kF32, vc * hdim);
      wp = wide.f32();
    }
    for (int64_t r0 = 0; r0 < n; r0 += kRows) {
      const int64_t rc = std::min(kRows, n - r0);
      matmul(false, true, rc, vc, hdim, 1.0f, h + r0 * hdim, hdim, wp, DType::kF32, hdim, 0.0f, z.f32(), vc, false);
      SPIN_LAUNCH(head_grad_kernel, dim3(col_blocks, static_cast<unsigned>(rc)), dim3(kGradThreads), 0, stream(), z.f32(), vc, r0,
                  v0, v, targets, softcap, lse, dlogp, error_word());
      // dh[rows] (+)= g w_panel; dw_panel += g^T h[rows]
      matmul(false, false, rc, hdim, vc, 1.0f, z.f32(), vc, wp, DType::kF32, hdim, v0 == 0 ? 0.0f : 1.0f, dh + r0 * hdim, hdim,
             false);
      if (dw) matmul(true, false, vc, hdim, rc, 1.0f, z.f32(), vc, h + r0 * hdim, DType::kF32, hdim, 1.0f, dw + v0 * hdim, hdim, false);
    }
  }
  check_launch("headLogprobBackward");
}

}  // namespace spinlm::cuda
