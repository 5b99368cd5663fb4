#pragma once
// Metrics: one call, log(step, {{"group/name", value}, ...}), fanned out to sinks (terminal,
// JSONL, CSV, TensorBoard). Names follow `group/name`: charts/episodic_return, losses/policy_loss,
// perf/sps, timing_s/update.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::core {

using Scalars = std::vector<std::pair<std::string, double>>;

class MetricSink {
 public:
  virtual ~MetricSink() = default;
  // `time_s` is seconds since the Metrics object started.
  virtual void write(int64_t step, double time_s, const Scalars& values) = 0;
  virtual void flush() {}
};

class Metrics {
 public:
  Metrics();
  void add_sink(std::unique_ptr<MetricSink> sink);
  // Thread-safe; every sink sees the rows in one order.
  void log(int64_t step, const Scalars& values);
  void flush();
  double elapsed_s() const;

 private:
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<MetricSink>> sinks_;
};

// One JSON object per log call: {"step": ..., "time_s": ..., "<name>": value, ...}.
std::unique_ptr<MetricSink> jsonl_sink(const std::filesystem::path& path);
// A header row then one row per log call; a metric first seen late gets its column added to the
// rows already written.
std::unique_ptr<MetricSink> csv_sink(const std::filesystem::path& path);

// One row of a metrics.jsonl file.
struct MetricRow {
  int64_t step = 0;
  double time_s = 0;
  Scalars values;
};
std::vector<MetricRow> read_metrics_jsonl(const std::filesystem::path& path);

}  // namespace flotilla::core
