#pragma once
// Programs: the dataflows `flotilla run` can drive (single-process RL, distributed RL, RLHF),
// chosen by the experiment's `program:` key and registered by name.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "controller/cluster/launcher.hpp"
#include "core/config.hpp"
#include "core/metrics.hpp"
#include "core/registry.hpp"

namespace flotilla::controller {

// The keys every experiment has, whatever its program.
struct Experiment {
  std::string name;
  std::string program;
  int64_t seed = 1;
  bool deterministic = false;
  std::string run_dir;    // "" = <run_root>/<name>-<timestamp>
  std::string run_root = "runs";
  std::vector<std::string> metric_sinks;
  std::vector<std::string> progress_metrics;  // shown beside the progress bar
  double progress_interval_s = 10;            // between plain progress lines off a terminal
  LauncherConfig launcher;                    // where the workers run (local processes, or Slurm)
  FaultConfig fault;                          // what a worker's failure does
  bool curve = true;                          // security.curve: TCP sockets authenticate and encrypt (CURVE)
  std::string keys;                           // security.keys: a directory with curve.keys; "" = new keys in the run directory
};

// Everything a program needs while it runs.
struct RunContext {
  const Experiment& experiment;
  std::filesystem::path dir;  // the run directory
  core::Metrics& metrics;
  const std::atomic<bool>& stop_requested;  // Ctrl-C: finish the current step, checkpoint, return
  std::function<void(int64_t step)> report_progress;
  // Registers a function Ctrl-C calls (after setting stop_requested), to end a program's wait; it
  // is called as long as the returned handle lives.
  std::function<std::shared_ptr<void>(std::function<void()>)> on_stop = [](std::function<void()>) { return std::shared_ptr<void>(); };
};

struct RunResult {
  std::string exit_reason = "completed";  // e.g. "completed", "stop_condition", "interrupted"
  std::vector<std::pair<std::string, double>> summary;  // extra numbers for summary.json
};

// True once Ctrl-C asked the run to stop, with `result` marked "interrupted": a program's loop
// ends its current step and breaks.
inline bool interrupted(const RunContext& ctx, RunResult& result) {
  if (!ctx.stop_requested.load()) return false;
  result.exit_reason = "interrupted";
  return true;
}

// (group, count) of each entry of a config's `workers:` list (anything with `role` and `count`).
template <class Workers>
std::vector<std::pair<std::string, int>> group_counts(const Workers& workers) {
  std::vector<std::pair<std::string, int>> out;
  for (const auto& g : workers) out.push_back({g.role, g.count});
  return out;
}

class Program {
 public:
  virtual ~Program() = default;
  // Steps the run will take, for the progress bar and ETA; 0 when unknown.
  virtual int64_t total_steps() const = 0;
  virtual RunResult run(RunContext& ctx) = 0;
  // The worker groups the run starts, with their worker counts, in start order (none for a
  // program that runs in the controller alone): what a Slurm job must hold.
  virtual std::vector<std::pair<std::string, int>> worker_groups() const { return {}; }
  // Continues from the run directory's newest checkpoint (flotilla resume); throws when the
  // program keeps none.
  virtual void resume(const std::filesystem::path& run_dir) {
    throw ConfigError(run_dir.string() + ": this program keeps no checkpoints to resume from");
  }
};

// Seconds a run has trained, counting those before a resume.
class TrainClock {
 public:
  explicit TrainClock(double before = 0) : before_(before), start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  double before_;
  std::chrono::steady_clock::time_point start_;
};

// Builds a program from the experiment's config, reading (and so validating) its own keys.
using ProgramFactory = std::function<std::unique_ptr<Program>(core::ConfigView root, const Experiment& experiment)>;

// Every program by name.
core::Registry<ProgramFactory>& programs();

// Registers a program from any source file: `static ProgramRegistration reg("name", factory);`.
struct ProgramRegistration {
  ProgramRegistration(const std::string& name, ProgramFactory factory) { programs().add(name, std::move(factory)); }
};

}  // namespace flotilla::controller
