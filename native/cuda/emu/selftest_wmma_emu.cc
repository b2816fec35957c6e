// The emulator's tensor-core self-tests (emuSelfTest("wmma...")): a correct tiled bf16 GEMM on WMMA
// fragments, and kernels that break WMMA's rules on purpose (a layout assumed, half a warp at an mma,
// a misaligned tile, a leading dimension that is not 16 bytes, another lane's stored element read
// without __syncwarp()), so the tests can check that the emulator catches each.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../cuda_common.cuh"
#include "../runtime.h"
#include "../tc.cuh"

namespace spinlm::cuda::selftest {
namespace {

constexpr int kM = 32, kN = 16, kK = 32;  // C [32 x 16] = A [32 x 32] B [32 x 16], two warps

// Stages A (row-major, kM x kK) and B (row-major, kK x kN) in dynamic shared memory, then warp w
// computes C's rows 16w..16w+15 over two k tiles; C goes through shared memory to global.
__global__ void wmma_gemm(SPIN_GP(const uint16_t) a, SPIN_GP(const uint16_t) b, SPIN_GP(float) c) {
  SPIN_DYN_SHARED(uint16_t, sa);
  auto sb = sa + kM * kK;
  auto sc = SPIN_CAST(float, sb + kK * kN);
  for (int i = threadIdx.x; i < kM * kK; i += blockDim.x) sa[i] = a[i];
  for (int i = threadIdx.x; i < kK * kN; i += blockDim.x) sb[i] = b[i];
  __syncthreads();
  const int w = threadIdx.x / 32;
  tc::FragC acc;
  tc::fill(acc, 0.0f);
  for (int k0 = 0; k0 < kK; k0 += 16) {
    tc::FragA fa;
    tc::FragB fb;
    tc::load(fa, sa + w * 16 * kK + k0, kK);
    tc::load(fb, sb + k0 * kN, kN);
    tc::mma(acc, fa, fb, acc);
  }
  tc::store(sc + w * 16 * kN, acc, kN, true);
  __syncwarp();
  for (int i = threadIdx.x % 32; i < 16 * kN; i += 32) c[w * 16 * kN + i] = sc[w * 16 * kN + i];
}

// Assumes lane l, slot s holds element l * 8 + s of the accumulator (true only for one layout).
__global__ void wmma_layout_assumed(SPIN_GP(const uint16_t) a, SPIN_GP(const uint16_t) b, SPIN_GP(float) c) {
  SPIN_DYN_SHARED(uint16_t, sa);
  auto sb = sa + 256;
  for (int i = threadIdx.x; i < 256; i += 32) {
    sa[i] = a[i];
    sb[i] = b[i];
  }
  __syncthreads();
  tc::FragA fa;
  tc::FragB fb;
  tc::FragC acc;
  tc::fill(acc, 0.0f);
  tc::load(fa, sa, 16);
  tc::load(fb, sb, 16);
  tc::mma(acc, fa, fb, acc);
  for (int s = 0; s < acc.num_elements; ++s) c[threadIdx.x * 8 + s] = acc.x[s];
}

__global__ void wmma_half_warp(SPIN_GP(float) c) {
  SPIN_DYN_SHARED(uint16_t, sa);
  for (int i = threadIdx.x; i < 256; i += 32) sa[i] = 0;
  __syncthreads();
  if (threadIdx.x >= 16) return;  // half the warp leaves before the collective load
  tc::FragA fa;
  tc::load(fa, sa, 16);
  c[threadIdx.x] = 1.0f;
}

__global__ void wmma_misaligned(SPIN_GP(float) c, int offset, int ldm) {
  SPIN_DYN_SHARED(uint16_t, sa);
  for (int i = threadIdx.x; i < 1024; i += 32) sa[i] = 0;
  __syncthreads();
  tc::FragA fa;
  tc::load(fa, sa + offset, ldm);
  c[threadIdx.x] = 1.0f;
}

// Stores an accumulator to shared memory, then each lane reads element `lane` with no __syncwarp().
__global__ void wmma_store_race(SPIN_GP(float) c) {
  SPIN_DYN_SHARED(float, sc);
  tc::FragC acc;
  tc::fill(acc, 2.0f);
  tc::store(sc, acc, 16, true);
  c[threadIdx.x] = sc[threadIdx.x];
}

// Small integers as bf16: every product and sum is exact, so the GEMM must match to the bit.
uint16_t bf16_of_int(int v) {
  const float f = static_cast<float>(v);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

std::string gemm_case(bool assume_layout) {
  const int m = assume_layout ? 16 : kM, n = assume_layout ? 16 : kN, k = assume_layout ? 16 : kK;
  std::vector<uint16_t> ha(m * k), hb(k * n);
  std::vector<double> want(m * n, 0.0);
  for (int i = 0; i < m * k; ++i) ha[i] = bf16_of_int((i * 7 + 3) % 9 - 4);
  for (int i = 0; i < k * n; ++i) hb[i] = bf16_of_int((i * 5 + 1) % 7 - 3);
  for (int r = 0; r < m; ++r)
    for (int cc = 0; cc < n; ++cc)
      for (int j = 0; j < k; ++j) want[r * n + cc] += (((r * k + j) * 7 + 3) % 9 - 4) * (((j * n + cc) * 5 + 1) % 7 - 3);
  uint16_t *da = nullptr, *db = nullptr;
  float* dc = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&da), ha.size() * 2);
  cudaMalloc(reinterpret_cast<void**>(&db), hb.size() * 2);
  cudaMalloc(reinterpret_cast<void**>(&dc), want.size() * 4);
  cudaMemcpyAsync(da, ha.data(), ha.size() * 2, cudaMemcpyHostToDevice, stream());
  cudaMemcpyAsync(db, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice, stream());
  if (assume_layout)
    SPIN_LAUNCH(wmma_layout_assumed, dim3(1), dim3(32), 512 * 2, stream(), static_cast<const uint16_t*>(da), static_cast<const uint16_t*>(db), dc);
  else
    SPIN_LAUNCH(wmma_gemm, dim3(1), dim3(64), (kM * kK + kK * kN) * 2 + kM * kN * 4, stream(), static_cast<const uint16_t*>(da),
                static_cast<const uint16_t*>(db), dc);
  std::vector<float> got(want.size());
  check(cudaMemcpyAsync(got.data(), dc, got.size() * 4, cudaMemcpyDeviceToHost, stream()), "read");
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) bad += got[i] != static_cast<float>(want[i]);
  return bad ? std::to_string(bad) + " of " + std::to_string(got.size()) + " wrong" : "exact";
}

}  // namespace

std::string wmma_case(const std::string& name, float* x) {
  if (name == "wmmaGemm") return gemm_case(false);
  if (name == "wmmaLayoutAssumed") return gemm_case(true);
  if (name == "wmmaHalfWarp") SPIN_LAUNCH(wmma_half_warp, dim3(1), dim3(32), 512, stream(), x);
  else if (name == "wmmaMisaligned") SPIN_LAUNCH(wmma_misaligned, dim3(1), dim3(32), 2048, stream(), x, 8, 16);
  else if (name == "wmmaLeadingDim") SPIN_LAUNCH(wmma_misaligned, dim3(1), dim3(32), 2048, stream(), x, 0, 12);
  else if (name == "wmmaStoreRace") SPIN_LAUNCH(wmma_store_race, dim3(1), dim3(32), 1024, stream(), x);
  else return "unknown self-test " + name;
  return "ok";
}

}  // namespace spinlm::cuda::selftest
