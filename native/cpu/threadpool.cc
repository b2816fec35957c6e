#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace spinlm {
namespace {

// Waiting: a worker that finished a task spins for about kSpin before it sleeps on the condition
// variable, and so does the caller waiting for the workers. A model step is a chain of small ops;
// a futex wake-up per op cost 50-150 us each (decode's rope and swiglu ran at a third of their speed).
constexpr auto kSpin = std::chrono::microseconds(50);

// Spins while pred() holds, up to kSpin; returns whether it still holds.
template <class Pred>
bool spin_while(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1; pred(); ++i) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    if ((i & 63) == 0 && std::chrono::steady_clock::now() > until) return pred();
  }
  return false;
}

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    stopping_ = false;
    // New workers start at the current generation: they must not replay a finished task.
    const uint64_t gen = generation_;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, gen] { loop(i, gen); });
  }

  // Runs task(k) for k in [0, parts) with part 0 on the calling thread.
  void run(int parts, const std::function<void(int)>& task) {
    if (parts <= 1) {
      if (parts == 1) task(0);
      return;
    }
    std::unique_lock<std::mutex> lock(mu_);
    task_ = &task;
    parts_ = parts;
    pending_ = parts - 1;
    ++generation_;
    lock.unlock();
    cv_.notify_all();
    task(0);
    if (spin_while([this] { return pending_.load(std::memory_order_acquire) != 0; })) {
      lock.lock();
      done_cv_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
      lock.unlock();
    }
    task_ = nullptr;
  }

 private:
  void loop(int index, uint64_t seen) {
    for (;;) {
      spin_while([&] { return generation_.load(std::memory_order_acquire) == seen && !stopping_.load(); });
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      if (index >= parts_) continue;
      const std::function<void(int)>* task = task_;
      lock.unlock();
      (*task)(index);
      // the last one wakes the caller; under the mutex, so the caller cannot miss it between its
      // check of pending_ and its wait
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        lock.lock();
        done_cv_.notify_one();
      }
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* task_ = nullptr;
  int parts_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
};

int default_threads() {
  if (const char* env = std::getenv("SPINLM_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

std::mutex run_mu;  // one parallel region at a time (N-API calls come from one thread anyway)

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(run_mu);
  pool().resize(std::max(1, n));
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t max_parts = (n + grain - 1) / grain;
  const int parts = static_cast<int>(std::min<int64_t>(num_threads(), max_parts));
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> lock(run_mu);
  pool().run(parts, [&](int k) {
    const int64_t begin = n * k / parts, end = n * (k + 1) / parts;
    if (begin < end) fn(begin, end);
  });
}

}  // namespace spinlm
