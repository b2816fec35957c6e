// The emulator's tensor-core fragments: the subset of CUDA's nvcuda::wmma that native/cuda/tc.cuh uses
// (m16n16k16, bf16 A and B, f32 accumulator), run per warp on the CPU.
//
// WMMA leaves the fragment layout unspecified (which lane holds which element of the 16 x 16 tile), so a
// correct kernel touches fragment elements only element-wise between fragments of one type (scaling an
// accumulator, filling). The emulator draws each fragment type's layout from SPINLM_CUDA_EMU_SEED (seed 0:
// lane e / 8, slot e % 8 of element e = row * 16 + col), so a kernel that assumes a layout, or converts
// between fragment types element by element, gives wrong results here as it would on some GPU.
//
// Every load, store and mma is a warp-collective operation, as on a GPU: the 32 lanes meet (a lane that
// does not come is warp divergence, lanes at different calls too), all lanes must pass the same pointer
// and leading dimension, the pointer must be 256-bit aligned and the leading dimension a multiple of
// 16 bytes (CUDA's rules for load_matrix_sync / store_matrix_sync). Each lane reads or writes its own
// elements through the checked pointer it was given (bounds; shared memory through the race detector).
// The meetings do not order memory between lanes: a lane reading elements another lane stored needs
// __syncwarp() (or __syncthreads()) between, as on a GPU with independent thread scheduling.
//
// mma_sync: d = a b + c, the 16 products of each element exact (bf16 x bf16 fits f32), summed with c in
// double and rounded to f32 once (tensor cores do not promise IEEE order; the tests' tolerances cover it).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace emu {

// Publishes `mine` to the warp and waits until all 32 lanes have; all[l] is then lane l's (valid until
// warp_collective_end). These meetings check convergence but do not order memory (see above).
void warp_collective_begin(const void* mine, const void** all, const char* file, int line);
void warp_collective_end(const char* file, int line);

namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// The fragment layouts, one per kind: elem[lane][slot] = row * 16 + col of the element that slot holds.
enum Kind { kARow, kACol, kBRow, kBCol, kAcc, kKinds };
struct FragLayout {
  uint8_t elem[32][8];
  uint8_t lane[256], slot[256];  // the inverse
};
const FragLayout& frag_layout(int kind);

template <class Use, class L>
constexpr int kind_of() {
  if constexpr (std::is_same_v<Use, accumulator>) return kAcc;
  else if constexpr (std::is_same_v<Use, matrix_a>) return std::is_same_v<L, row_major> ? kARow : kACol;
  else return std::is_same_v<L, row_major> ? kBRow : kBCol;
}

template <class Use, int M, int N, int K, class T, class L = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has the m16n16k16 shape only");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float> : std::is_same_v<T, uint16_t>,
                "bf16 (uint16_t bits) A and B, f32 accumulators");
  static constexpr int kind = kind_of<Use, L>();
  static constexpr int num_elements = 8;
  T x[8];
};

namespace detail {
inline int lane() { return static_cast<int>(::emu::current_thread().linear & 31u); }
inline float widen(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
struct MemArgs {
  const void* p;
  unsigned ldm;
  int layout;
};
template <class P>
uintptr_t addr(const P& p) {
  return reinterpret_cast<uintptr_t>(p.p);
}
// Checks the warp's arguments of one load or store: the same for every lane, aligned.
inline void check_args(const MemArgs& mine, const void** all, size_t elem_bytes, const char* what) {
  for (int l = 0; l < 32; ++l) {
    const auto* o = static_cast<const MemArgs*>(all[l]);
    if (!o) fault(std::string(what) + ": the block's last warp is not whole (WMMA needs 32 lanes)");
    if (o->p != mine.p || o->ldm != mine.ldm || o->layout != mine.layout)
      fault(std::string(what) + ": lanes of one warp pass different pointers, leading dimensions or layouts");
  }
  if (reinterpret_cast<uintptr_t>(mine.p) % 32)
    fault(std::string(what) + ": the matrix pointer is not 256-bit aligned (offset " + std::to_string(reinterpret_cast<uintptr_t>(mine.p) % 32) +
          " bytes)");
  if ((mine.ldm * elem_bytes) % 16)
    fault(std::string(what) + ": leading dimension " + std::to_string(mine.ldm) + " is not a multiple of 16 bytes");
}
// Memory offset of tile element (r, c) (row, column of the 16 x 16 tile).
inline int64_t offset(int r, int c, unsigned ldm, bool row) { return row ? int64_t{r} * ldm + c : int64_t{c} * ldm + r; }
}  // namespace detail

template <class Use, class T, class L, class P>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, P p, unsigned ldm, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators take a layout_t");
  const bool row = std::is_same_v<L, row_major>;
  const detail::MemArgs mine{p.p, ldm, row};
  const void* all[32];
  warp_collective_begin(&mine, all, file, line);
  detail::check_args(mine, all, sizeof(T), "load_matrix_sync");
  const FragLayout& lay = frag_layout(f.kind);
  const int me = detail::lane();
  for (int s = 0; s < 8; ++s) {
    const int e = lay.elem[me][s];
    f.x[s] = static_cast<T>(p[detail::offset(e / 16, e % 16, ldm, row)]);
  }
  warp_collective_end(file, line);
}

template <class P>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, P p, unsigned ldm, layout_t layout,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const bool row = layout == mem_row_major;
  const detail::MemArgs mine{p.p, ldm, row};
  const void* all[32];
  warp_collective_begin(&mine, all, file, line);
  detail::check_args(mine, all, sizeof(float), "load_matrix_sync");
  const FragLayout& lay = frag_layout(kAcc);
  const int me = detail::lane();
  for (int s = 0; s < 8; ++s) {
    const int e = lay.elem[me][s];
    f.x[s] = static_cast<float>(p[detail::offset(e / 16, e % 16, ldm, row)]);
  }
  warp_collective_end(file, line);
}

template <class P>
void store_matrix_sync(P p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout,
                       const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const bool row = layout == mem_row_major;
  const detail::MemArgs mine{p.p, ldm, row};
  const void* all[32];
  warp_collective_begin(&mine, all, file, line);
  detail::check_args(mine, all, sizeof(float), "store_matrix_sync");
  const FragLayout& lay = frag_layout(kAcc);
  const int me = detail::lane();
  for (int s = 0; s < 8; ++s) {
    const int e = lay.elem[me][s];
    p[detail::offset(e / 16, e % 16, ldm, row)] = f.x[s];
  }
  warp_collective_end(file, line);
}

template <class T, class Use, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, T v) {
  for (int s = 0; s < 8; ++s) f.x[s] = v;
}

template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, uint16_t, LA>& a,
              const fragment<matrix_b, 16, 16, 16, uint16_t, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c,
              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  struct Regs {
    const uint16_t* a;
    const uint16_t* b;
  } mine{a.x, b.x};
  const void* all[32];
  warp_collective_begin(&mine, all, file, line);
  for (int l = 0; l < 32; ++l)
    if (!all[l]) fault("mma_sync: the block's last warp is not whole (WMMA needs 32 lanes)");
  const FragLayout& la = frag_layout(a.kind);
  const FragLayout& lb = frag_layout(b.kind);
  const FragLayout& lc = frag_layout(kAcc);
  auto at = [&](const FragLayout& lay, int e, bool is_a) {
    const auto* r = static_cast<const Regs*>(all[lay.lane[e]]);
    return detail::widen((is_a ? r->a : r->b)[lay.slot[e]]);
  };
  const int me = detail::lane();
  float out[8];
  for (int s = 0; s < 8; ++s) {
    const int e = lc.elem[me][s], m = e / 16, n = e % 16;
    double acc = c.x[s];
    for (int k = 0; k < 16; ++k) acc += static_cast<double>(at(la, m * 16 + k, true)) * static_cast<double>(at(lb, k * 16 + n, false));
    out[s] = static_cast<float>(acc);
  }
  warp_collective_end(file, line);  // every lane has read the others' a and b: now d (which may be c) is written
  for (int s = 0; s < 8; ++s) d.x[s] = out[s];
}

}  // namespace wmma
}  // namespace emu
