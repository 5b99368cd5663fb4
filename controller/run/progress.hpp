#pragma once
// The terminal view of a run: a live bar (rate, ETA, main metrics) on a terminal, a plain line
// every few seconds when output goes to a file or pipe, or nothing with --quiet. Log lines pass
// through it so they never tear the bar.
#include <spdlog/sinks/base_sink.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "core/metrics.hpp"

namespace flotilla::controller {

class Progress final : public core::MetricSink {
 public:
  enum class Mode { Bar, Lines, Quiet };
  Progress(Mode mode, int64_t total_steps, std::vector<std::string> shown, double line_interval_s);

  void update(int64_t step);
  void write(int64_t step, double time_s, const core::Scalars& values) override;
  // Prints a log line above the bar.
  void print_line(const std::string& line);
  // Draws the final state and leaves the bar on its own line.
  void finish();

  // "1.23M", "45.6k": compact numbers for the bar.
  static std::string human(double value);
  // "1:02:03", "4:05", "--:--" for unknown.
  static std::string duration(double seconds);

 private:
  std::string render_locked(double now_s) const;
  void draw_locked(bool force);
  double now_s() const;

  Mode mode_;
  int64_t total_;
  std::vector<std::string> shown_;
  double line_interval_s_;
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
  int64_t step_ = 0;
  core::Scalars latest_;
  double last_draw_s_ = -1e9;
  bool bar_visible_ = false;
};

// A spdlog sink that prints through a Progress.
class ProgressLogSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit ProgressLogSink(Progress& progress) : progress_(progress) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override {}

 private:
  Progress& progress_;
};

}  // namespace flotilla::controller
