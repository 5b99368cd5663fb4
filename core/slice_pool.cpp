#include "core/slice_pool.hpp"

#include <chrono>

#include "core/error.hpp"

namespace flotilla::core {

namespace {

// Polls `changed` for up to ~100 microseconds before the caller sleeps on a futex: batched steps
// come every few tens of microseconds, and a futex wake-up costs about as much as a step.
template <class F>
bool spin_until(F changed) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
  while (true) {
    for (int i = 0; i < 64; ++i) {
      if (changed()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (std::chrono::steady_clock::now() > deadline) return changed();
  }
}

}  // namespace

SlicePool::SlicePool(int threads) : threads_(threads) {
  if (threads < 1) throw ConfigError("threads must be at least 1, got " + std::to_string(threads));
  for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { worker(t); });
}

SlicePool::~SlicePool() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

std::pair<int64_t, int64_t> SlicePool::slice(int64_t n, int parts, int t) {
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = t * base + std::min<int64_t>(t, extra);
  return {begin, begin + base + (t < extra ? 1 : 0)};
}

void SlicePool::worker(int t) {
  uint64_t seen = 0;
  while (true) {
    if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
      generation_.wait(seen, std::memory_order_acquire);
      continue;
    }
    const uint64_t g = generation_.load(std::memory_order_acquire);
    seen = g;
    if (stop_.load()) return;
    auto [begin, end] = slice(n_, threads_, t);
    if (begin < end) (*job_)(begin, end);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

void SlicePool::run(int64_t n, const Job& job) {
  if (threads_ == 1) {
    if (n > 0) job(0, n);
    return;
  }
  job_ = &job;
  n_ = n;
  pending_.store(threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  auto [begin, end] = slice(n, threads_, 0);
  if (begin < end) job(begin, end);
  spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
  int left = pending_.load(std::memory_order_acquire);
  while (left != 0) {
    pending_.wait(left, std::memory_order_acquire);
    left = pending_.load(std::memory_order_acquire);
  }
}

}  // namespace flotilla::core
