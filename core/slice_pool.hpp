#pragma once
// A fixed set of threads that run one function over contiguous slices of a range, for batched
// loops (environment steps) that must not pay a thread start, a lock or an allocation per call.
// Waiting uses C++20 atomic wait/notify (futexes) after a short spin.
#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace flotilla::core {

class SlicePool {
 public:
  using Job = std::function<void(int64_t begin, int64_t end)>;

  // `threads` >= 1 threads take part, the caller's included.
  explicit SlicePool(int threads);
  ~SlicePool();
  SlicePool(const SlicePool&) = delete;
  SlicePool& operator=(const SlicePool&) = delete;

  int threads() const { return threads_; }
  // Calls job on `threads()` contiguous slices of [0, n) and returns when all are done.
  void run(int64_t n, const Job& job);

  // The slice [begin, end) of slice `t` out of `parts` over [0, n).
  static std::pair<int64_t, int64_t> slice(int64_t n, int parts, int t);

 private:
  void worker(int t);
  int threads_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const Job* job_ = nullptr;
  int64_t n_ = 0;
};

}  // namespace flotilla::core
