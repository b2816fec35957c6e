// Next-token choice on the device: the algorithm of native/cpu/sample.cc (and src/generate/sampler.ts),
// one block of 256 threads per row, the same tokens as the CPU backend for every seed.
// Greedy rows: a block-wide argmax (ties to the lowest id). Sampled rows (docs/cuda.md "Sampling"):
//   1. the candidates (logit > -inf) get 32-bit sort keys, ascending key = descending logit (-0 and +0
//      share a key: the CPU compares them equal);
//   2. top-k: a radix select (8 passes of 4-bit digits, per-thread counters in shared memory) finds
//      the k-th key; an ordered compaction (block-wide prefix counts, ids in order) keeps every key
//      below it and, of the keys equal to it, the lowest ids: the CPU's order (larger logit, then
//      lower id);
//   3. the k candidates are sorted by a stable block-wide LSD radix sort (1-bit splits, only over the
//      key bits that differ) in a per-row scratch slice: larger logit first, ties by id;
//   4. softmax, top-p and the draw in the CPU's float64 arithmetic. The CPU sums in sorted order, one
//      rounding per add; `replay_sum` reproduces that sequential sum exactly with the whole block: while
//      the running sum stays in one binade every add rounds to a multiple of the same ulp, so the
//      rounded addends are integers whose block-wide prefix sums are exact; an add that leaves the
//      binade, a rounding tie (its result depends on the running sum's parity) and anything not a
//      finite non-negative number are done as the CPU does them, one add.
// Only the first `limit` ids of a row (rows are v apart) are candidates: a padded vocabulary is never
// sampled.
#include <cfloat>
#include <cmath>

#include "cuda_common.cuh"
#include "kernels.h"
#include "runtime.h"

namespace spinlm::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kDigitBits = 4;
constexpr int kDigits = 1 << kDigitBits;
constexpr int64_t kBinade = int64_t{1} << 53;  // a double's significand: s / ulp < 2^53 in s's binade

__device__ __forceinline__ int popc32(uint32_t x) {
#ifdef SPINLM_CUDA_EMU
  return __builtin_popcount(x);
#else
  return __popc(x);
#endif
}
__device__ __forceinline__ int ffs32(uint32_t x) {
#ifdef SPINLM_CUDA_EMU
  return __builtin_ffs(static_cast<int>(x));
#else
  return __ffs(static_cast<int>(x));
#endif
}

__device__ __forceinline__ uint32_t rotl32(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

__device__ uint32_t next_u32(uint32_t* s) {
  const uint32_t r = rotl32(s[1] * 5u, 7) * 9u;
  const uint32_t t = s[1] << 9;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl32(s[3], 11);
  return r;
}

// Ascending key = descending logit (x > -inf, not NaN); -0 is +0.
__device__ __forceinline__ uint32_t sort_key(float x) {
  const uint32_t b = f32_bits(x == 0.0f ? 0.0f : x);
  return (b & 0x80000000u) ? b : (~b & 0x7fffffffu);
}

__device__ __forceinline__ int64_t warp_sum_i64(int64_t x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

// The helpers below each start with a barrier, so one may reuse the shared slots right after another.

// Sum of x over the block (every thread gets it).
template <class P>
__device__ int64_t block_sum_i64(int64_t x, P part) {
  x = warp_sum_i64(x);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = x;
  __syncthreads();
  int64_t t = 0;
  for (int w = 0; w < kWarps; ++w) t += part[w];
  return t;
}

// How many threads below this one have `flag`; *total: how many in the block.
template <class P>
__device__ int count_before(bool flag, P part, int* total) {
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t bal = __ballot_sync(kFull, flag);
  __syncthreads();
  if (lane == 0) part[warp] = popc32(bal);
  __syncthreads();
  int before = 0, tot = 0;
  for (unsigned w = 0; w < kWarps; ++w) {
    const int c = part[w];
    if (w < warp) before += c;
    tot += c;
  }
  *total = tot;
  return before + popc32(bal & ((1u << lane) - 1u));
}

// The lowest thread index with `flag`, or kThreads.
template <class P>
__device__ int block_first(bool flag, P part) {
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t bal = __ballot_sync(kFull, flag);
  __syncthreads();
  if (lane == 0) part[warp] = bal ? static_cast<int>(warp * 32) + ffs32(bal) - 1 : kThreads;
  __syncthreads();
  int m = kThreads;
  for (int w = 0; w < kWarps; ++w) m = part[w] < m ? part[w] : m;
  return m;
}

// Inclusive prefix sum of x over the block, in thread order.
template <class P>
__device__ int64_t block_scan_i64(int64_t x, P part) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t t = __shfl_sync(kFull, x, lane >= o ? lane - o : lane);
    if (lane >= o) x += t;
  }
  __syncthreads();
  if (lane == 31) part[warp] = x;
  __syncthreads();
  for (int w = 0; w < warp; ++w) x += part[w];
  return x;
}

struct Replay {
  int64_t at;  // the first i where stop(sum of vals[0..i]) held; n if none
  double sum;  // the running sum there (or the whole sum)
};

// `s = 0; for i in [0, n) { s += vals[i]; if (stop(s)) break; }` in float64, bit for bit as one
// thread runs it, with the block: see the file comment. Uniform: every thread returns the same.
// Ends with a barrier: the caller may overwrite vals at once.
template <class V, class F, class P64, class P32>
__device__ Replay replay_sum(V vals, int64_t n, F stop, P64 p64, P32 p32, P64 bcast) {
  double s = 0;
  int64_t pos = 0, at = n;
  while (pos < n) {
    // a NaN sum stays NaN: stop(NaN) was false at the add that made it, and stays false
    if (s != s) break;
    if (s >= DBL_MIN && s < static_cast<double>(kBinade)) {
      int e = 0;
      frexp(s, &e);
      const double ulp = ldexp(1.0, e - 53);
      const int64_t s_int = static_cast<int64_t>(s / ulp);  // exact: s is a multiple of its ulp
      const int64_t i = pos + threadIdx.x;
      int64_t q = 0;
      bool odd = false;  // an add this thread cannot vouch for
      if (i < n) {
        const double f = vals[i] / ulp;  // exact: a power-of-two scale
        if (!(f >= 0 && f < static_cast<double>(kBinade))) {
          odd = true;
        } else {
          const double fl = floor(f), fr = f - fl;
          q = static_cast<int64_t>(fl) + (fr > 0.5 ? 1 : 0);
          odd = fr == 0.5;  // a tie: rounds to even, which depends on the running sum
        }
      }
      const int64_t incl = block_scan_i64(q, p64);
      const bool halt = i < n && (odd || s_int + incl >= kBinade || stop(static_cast<double>(s_int + incl) * ulp));
      const int first = block_first(halt || i == n - 1, p32);
      // threads [0, first) are adds the integer sum did exactly; `first` is done below as one add
      if (first > 0) {
        if (static_cast<int>(threadIdx.x) == first - 1) *bcast = incl;
        __syncthreads();
        s = static_cast<double>(s_int + *bcast) * ulp;
        pos += first;
      }
      if (first == kThreads) continue;  // no halt in this chunk and the chunk is not the last
    }
    if (pos >= n) break;
    s += vals[pos];
    if (stop(s)) {
      at = pos;
      break;
    }
    ++pos;
  }
  __syncthreads();  // every thread's last read of vals is done
  return {at, s};
}

__global__ void __launch_bounds__(kThreads) greedy_kernel(SPIN_GP(const float) logits, int64_t v, int64_t limit,
                                                         SPIN_GP(const int32_t) active, SPIN_GP(int32_t) out) {
  SPIN_SHARED(float, best_val, kThreads);
  SPIN_SHARED(int32_t, best_id, kThreads);
  const int64_t r = blockIdx.x;
  if (!active[r]) {
    if (threadIdx.x == 0) out[r] = 0;
    return;
  }
  const auto row = logits + row_offset(r, v);
  float bv = -INFINITY;
  int32_t bi = -1;
  for (int64_t j = threadIdx.x; j < limit; j += kThreads) {
    const float x = row[j];
    if (bi < 0 || x > bv) {  // strictly greater: the lowest id of a tie within a thread
      bv = x;
      bi = static_cast<int32_t>(j);
    }
  }
  best_val[threadIdx.x] = bv;
  best_id[threadIdx.x] = bi;
  __syncthreads();
  for (unsigned s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float ov = best_val[threadIdx.x + s];
      const int32_t oi = best_id[threadIdx.x + s];
      const float mv = best_val[threadIdx.x];
      const int32_t mi = best_id[threadIdx.x];
      // as the CPU's scan: the first index whose value no later value exceeds (NaN never wins)
      if (oi >= 0 && (mi < 0 || ov > mv || (ov == mv && oi < mi))) {
        best_val[threadIdx.x] = ov;
        best_id[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[r] = best_id[0] < 0 ? 0 : best_id[0];
}

// Scratch per row: keys and ids twice (the sort's two buffers), float64 probabilities once.
__global__ void __launch_bounds__(kThreads) sample_kernel(SPIN_GP(const float) logits, int64_t v, int64_t limit,
                                                         SPIN_GP(int32_t) rng, SPIN_GP(const int32_t) active,
                                                         double temperature, int64_t top_k, double top_p,
                                                         SPIN_GP(int32_t) out, SPIN_GP(uint32_t) keys_all,
                                                         SPIN_GP(int32_t) ids_all, SPIN_GP(double) probs_all) {
  SPIN_SHARED(int, counts, kDigits * kThreads);  // the select's per-thread digit counters, [digit][thread]
  SPIN_SHARED(int, digit_total, kDigits);
  SPIN_SHARED(int64_t, p64, kWarps);
  SPIN_SHARED(int, p32, kWarps);
  SPIN_SHARED(uint32_t, pbits, 2 * kWarps);
  SPIN_SHARED(int64_t, bcast, 1);
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (!active[r]) {
    if (tid == 0) out[r] = 0;
    return;
  }
  const auto row = logits + row_offset(r, v);
  // the row's draw: every thread computes it, thread 0 stores the advanced state after all have read
  uint32_t st[4];
  for (int k = 0; k < 4; ++k) st[k] = static_cast<uint32_t>(rng[4 * r + k]);
  const double hi = static_cast<double>(next_u32(st) >> 5);
  const double lo = static_cast<double>(next_u32(st) >> 6);
  const double u = (hi * 67108864.0 + lo) / 9007199254740992.0;
  int64_t mine = 0;
  for (int64_t j = tid; j < limit; j += kThreads) mine += row[j] > -INFINITY ? 1 : 0;
  const int64_t n_all = block_sum_i64(mine, &p64[0]);  // its barriers also order the rng reads before the store
  if (tid == 0)
    for (int k = 0; k < 4; ++k) rng[4 * r + k] = static_cast<int32_t>(st[k]);
  if (n_all == 0) {  // no logit above -inf: the CPU's argmax of such a row is id 0, its only candidate
    if (tid == 0) out[r] = 0;
    return;
  }
  const int64_t n = top_k > 0 && top_k < n_all ? top_k : n_all;

  // 2. top-k: the key of the n-th candidate in sorted order (thr), and how many of its ties to keep
  const bool select = n < n_all;
  uint32_t thr = 0;
  int64_t ties_kept = 0;
  if (select) {
    uint32_t prefix = 0, mask = 0;
    int64_t need = n;
    for (int shift = 32 - kDigitBits; shift >= 0; shift -= kDigitBits) {
      for (int d = 0; d < kDigits; ++d) counts[d * kThreads + tid] = 0;
      for (int64_t j = tid; j < limit; j += kThreads) {
        const float x = row[j];
        if (!(x > -INFINITY)) continue;
        const uint32_t k = sort_key(x);
        if ((k & mask) == prefix) {
          const int at = static_cast<int>((k >> shift) & (kDigits - 1)) * kThreads + tid;
          counts[at] = counts[at] + 1;
        }
      }
      __syncthreads();
      for (int d = warp; d < kDigits; d += kWarps) {
        int64_t c = 0;
        for (int t = lane; t < kThreads; t += 32) c += counts[d * kThreads + t];
        c = warp_sum_i64(c);
        if (lane == 0) digit_total[d] = static_cast<int>(c);
      }
      __syncthreads();
      int d = 0;
      while (d < kDigits - 1 && digit_total[d] < need) need -= digit_total[d++];
      prefix |= static_cast<uint32_t>(d) << shift;
      mask |= static_cast<uint32_t>(kDigits - 1) << shift;
      __syncthreads();  // digit_total and counts are rewritten by the next pass
    }
    thr = prefix;
    ties_kept = need;
  }

  // compaction in id order: keys below thr, and the first ties_kept ids whose key is thr
  auto keys = keys_all + row_offset(r, 2 * v);
  auto ids = ids_all + row_offset(r, 2 * v);
  uint32_t k_and = ~0u, k_or = 0;
  {
    int64_t base = 0, ties_before = 0;
    for (int64_t c = 0; c < limit; c += kThreads) {
      const int64_t j = c + tid;
      bool cand = false;
      uint32_t k = 0;
      if (j < limit) {
        const float x = row[j];
        cand = x > -INFINITY;
        if (cand) k = sort_key(x);
      }
      bool take = cand;
      if (select) {
        int ties = 0;
        const int tie_rank = count_before(cand && k == thr, &p32[0], &ties);
        take = cand && (k < thr || (k == thr && ties_before + tie_rank < ties_kept));
        ties_before += ties;
      }
      int taken = 0;
      const int at = count_before(take, &p32[0], &taken);
      if (take) {
        keys[base + at] = k;
        ids[base + at] = static_cast<int32_t>(j);
        k_and &= k;
        k_or |= k;
      }
      base += taken;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    k_and &= __shfl_xor_sync(kFull, k_and, o);
    k_or |= __shfl_xor_sync(kFull, k_or, o);
  }
  __syncthreads();
  if (lane == 0) {
    pbits[warp] = k_and;
    pbits[kWarps + warp] = k_or;
  }
  __syncthreads();
  uint32_t differ = 0;
  {
    uint32_t a = ~0u, o = 0;
    for (int w = 0; w < kWarps; ++w) {
      a &= pbits[w];
      o |= pbits[kWarps + w];
    }
    differ = a ^ o;  // the bits some keys differ in: only these need a sort pass
  }

  // 3. stable LSD radix sort of keys[0..n) ascending, one bit per pass (ids follow; equal keys keep id order)
  int cur = 0;
  for (int bit = 0; bit < 32; ++bit) {
    if (!((differ >> bit) & 1u)) continue;
    const auto ks = keys + cur * v, kd = keys + (1 - cur) * v;
    const auto is = ids + cur * v, id = ids + (1 - cur) * v;
    int64_t zeros = 0;
    for (int64_t i = tid; i < n; i += kThreads) zeros += (ks[i] >> bit) & 1u ? 0 : 1;
    zeros = block_sum_i64(zeros, &p64[0]);
    int64_t base0 = 0, base1 = 0;
    for (int64_t c = 0; c < n; c += kThreads) {
      const int64_t i = c + tid;
      const bool valid = i < n;
      const uint32_t k = valid ? ks[i] : 0u;
      const bool zero = valid && !((k >> bit) & 1u);
      int zt = 0;
      const int zb = count_before(zero, &p32[0], &zt);
      if (valid) {
        const int64_t dst = zero ? base0 + zb : zeros + base1 + (tid - zb);
        kd[dst] = k;
        id[dst] = is[i];
      }
      const int64_t in_chunk = n - c < kThreads ? n - c : kThreads;
      base0 += zt;
      base1 += in_chunk - zt;
    }
    __syncthreads();  // the next pass reads what this one wrote, and overwrites what it read
    cur = 1 - cur;
  }
  const auto sorted = ids + cur * v;

  // 4. softmax in float64 over the sorted candidates, top-p, the draw: the CPU's arithmetic and order
  auto probs = probs_all + row_offset(r, v);
  const double m = static_cast<double>(row[sorted[0]]) / temperature;
  for (int64_t i = tid; i < n; i += kThreads) probs[i] = exp(static_cast<double>(row[sorted[i]]) / temperature - m);
  __syncthreads();
  const double z = replay_sum(probs, n, [](double) { return false; }, &p64[0], &p32[0], &bcast[0]).sum;
  for (int64_t i = tid; i < n; i += kThreads) probs[i] /= z;
  __syncthreads();
  int64_t kept = n;
  if (top_p < 1) {
    const Replay cut = replay_sum(probs, n, [top_p](double s) { return !(s < top_p); }, &p64[0], &p32[0], &bcast[0]);
    kept = cut.at < n ? cut.at + 1 : n;
    const double z2 = cut.sum;
    for (int64_t i = tid; i < kept; i += kThreads) probs[i] /= z2;
    __syncthreads();
  }
  const Replay draw = replay_sum(probs, kept, [u](double s) { return u < s; }, &p64[0], &p32[0], &bcast[0]);
  if (tid == 0) out[r] = sorted[draw.at < kept ? draw.at : kept - 1];
}

#ifdef SPINLM_CUDA_EMU
// The emulator's test hook (emu/selftest_emu.cc sampleReplaySum): out = {the whole sum, the first i
// where the running sum reaches `bound` (n if never), the running sum there}.
__global__ void __launch_bounds__(kThreads) replay_check_kernel(SPIN_GP(const double) vals, int64_t n, double bound,
                                                               SPIN_GP(double) out) {
  SPIN_SHARED(int64_t, p64, kWarps);
  SPIN_SHARED(int, p32, kWarps);
  SPIN_SHARED(int64_t, bcast, 1);
  const double z = replay_sum(vals, n, [](double) { return false; }, &p64[0], &p32[0], &bcast[0]).sum;
  const Replay cut = replay_sum(vals, n, [bound](double s) { return !(s < bound); }, &p64[0], &p32[0], &bcast[0]);
  if (threadIdx.x == 0) {
    out[0] = z;
    out[1] = static_cast<double>(cut.at);
    out[2] = cut.sum;
  }
}
#endif

}  // namespace

#ifdef SPINLM_CUDA_EMU
void sample_replay_check(const double* vals, int64_t n, double bound, double* out) {
  SPIN_LAUNCH(replay_check_kernel, dim3(1), dim3(kThreads), 0, stream(), vals, n, bound, out);
  check_launch("sampleReplaySum");
}
#endif

void sample_tokens(const float* logits, int64_t b, int64_t v, int64_t limit, int32_t* rng, const int32_t* active,
                   double temperature, int64_t top_k, double top_p, int32_t* out) {
  if (b == 0) return;
  if (temperature == 0 || top_k == 1) {
    SPIN_LAUNCH(greedy_kernel, dim3(static_cast<unsigned>(b)), dim3(kThreads), 0, stream(), logits, v, limit, active, out);
    check_launch("sampleTokens");
    return;
  }
  // per row: v float64 probabilities, 2v keys, 2v ids (24 bytes per logit)
  const size_t per = static_cast<size_t>(b * v);
  char* s = static_cast<char*>(scratch(per * 24 + 16, "sampleTokens"));
  auto* probs = reinterpret_cast<double*>(s);
  auto* keys = reinterpret_cast<uint32_t*>(s + per * 8);
  auto* ids = reinterpret_cast<int32_t*>(s + per * 16);
  SPIN_LAUNCH(sample_kernel, dim3(static_cast<unsigned>(b)), dim3(kThreads), 0, stream(), logits, v, limit, rng, active,
              temperature, top_k, top_p, out, keys, ids, probs);
  check_launch("sampleTokens");
}

}  // namespace spinlm::cuda
