// A small persistent thread pool for data-parallel loops over rows. Work is split into contiguous
// ranges whose bounds depend only on n and the thread count, and each index is owned by exactly one
// thread, so results never depend on scheduling (no atomics on floats).
#pragma once
#include <cstdint>
#include <functional>

namespace spinlm {

// Threads used by kernels: SPINLM_NUM_THREADS if set, else the hardware concurrency.
int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint ranges covering [0, n), on up to num_threads() threads
// (the caller is one of them). Ranges hold at least `grain` indices. Returns when all are done.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace spinlm
