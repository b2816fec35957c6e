// Bits of a backend's device error word. A kernel that meets an index outside its range never
// reads or writes outside a buffer: it skips the work (its outputs are then NaN or untouched) and
// ORs its bit into the word. The op layer's read() takes the word and throws an error naming the op
// (src/ops/errors.ts has the same bits and the messages). Shared by the CPU and CUDA kernels.
#pragma once
#include <cstdint>

namespace spinlm {

enum OpError : uint32_t {
  kErrTargets = 1u << 0,        // logprobGather(Backward): target outside [0, V) and not -100
  kErrSegments = 1u << 1,       // sequenceLogprob(Backward): segment outside [-1, numSeqs)
  kErrTokenIds = 1u << 2,       // embedding(Backward): id outside [0, rows of the table)
  kErrScatterIndex = 1u << 3,   // scatterRows: index outside [0, rows of dst)
  kErrDecodeLengths = 1u << 4,  // attentionDecode: length outside [0, Lmax]
  kErrPositions = 1u << 5,      // rope: negative position
  kErrAttentionSpans = 1u << 6, // attention(Backward): spans not 0 <= lo <= hideLo <= hideHi <= i
};

}  // namespace spinlm
