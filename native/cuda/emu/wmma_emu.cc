// The emulated WMMA fragment layouts (wmma_emu.h): one per fragment kind, drawn from
// SPINLM_CUDA_EMU_SEED so that a kernel assuming a layout WMMA leaves unspecified shows it.
#include "cuda_emu.h"

namespace emu::wmma {

const FragLayout& frag_layout(int kind) {
  static const auto layouts = [] {
    static FragLayout all[kKinds];
    const uint64_t seed = order_seed();
    for (int k = 0; k < kKinds; ++k) {
      int perm[256];
      for (int e = 0; e < 256; ++e) perm[e] = e;
      uint64_t x = seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(k) * 0xbf58476d1ce4e5b9ULL;
      if (seed != 0) {
        for (int i = 255; i > 0; --i) {  // Fisher-Yates with splitmix64
          uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
          z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
          z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
          z ^= z >> 31;
          std::swap(perm[i], perm[static_cast<int>(z % static_cast<uint64_t>(i + 1))]);
        }
      }
      for (int i = 0; i < 256; ++i) {
        const int lane = i / 8, slot = i % 8, e = perm[i];
        all[k].elem[lane][slot] = static_cast<uint8_t>(e);
        all[k].lane[e] = static_cast<uint8_t>(lane);
        all[k].slot[e] = static_cast<uint8_t>(slot);
      }
    }
    return all;
  }();
  return layouts[kind];
}

}  // namespace emu::wmma
