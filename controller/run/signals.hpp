#pragma once
// Ctrl-C and SIGTERM, handled on a Boost.Asio event loop: the first asks the run to stop at the
// next safe point (a final checkpoint where the program has one), the second exits at once.
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace flotilla::controller {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  const std::atomic<bool>& requested() const { return requested_; }
  // `f` runs on the first Ctrl-C (or SIGTERM), after requested() turns true, as long as the
  // returned handle lives (its destructor waits for a call under way).
  std::shared_ptr<void> on_stop(std::function<void()> f);
  // `f` runs on the second one, just before the process exits.
  void on_exit_now(std::function<void()> f) { exit_now_ = std::move(f); }

 private:
  struct Loop;
  void arm();
  std::atomic<bool> requested_{false};
  std::mutex mutex_;  // held while the callbacks run and while one is removed
  std::map<uint64_t, std::function<void()>> on_stop_;
  uint64_t next_ = 0;
  std::function<void()> exit_now_;
  std::unique_ptr<Loop> loop_;
};

}  // namespace flotilla::controller
