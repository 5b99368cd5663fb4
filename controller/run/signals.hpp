#pragma once
// Ctrl-C and SIGTERM, handled on a Boost.Asio event loop: the first asks the run to stop at the
// next safe point (a final checkpoint where the program has one), the second exits at once.
#include <atomic>
#include <memory>

namespace flotilla::controller {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  const std::atomic<bool>& requested() const { return requested_; }

 private:
  struct Loop;
  void arm();
  std::atomic<bool> requested_{false};
  std::unique_ptr<Loop> loop_;
};

}  // namespace flotilla::controller
