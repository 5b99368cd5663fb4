#include "controller/run/experiment.hpp"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <ctime>
#include <map>

#include "controller/run/progress.hpp"
#include "controller/run/signals.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "core/registry.hpp"
#include "core/tensorboard.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;

// ---- program registry ----

// Programs register themselves from their own files (ProgramRegistration); the flotilla binary
// links the controller library whole, so every one of them is in.
core::Registry<ProgramFactory>& programs() {
  static core::Registry<ProgramFactory> r("program");
  return r;
}

// ---- loading ----

namespace {

const std::vector<std::string> kSinks = {"jsonl", "csv", "tensorboard"};

Experiment read_experiment(core::ConfigView root, const fs::path& file) {
  Experiment e;
  e.name = root.get<std::string>("name", file.stem().string());
  if (e.name.empty() || e.name.find('/') != std::string::npos)
    root.fail("name", "expected a non-empty name without '/', found '" + e.name + "'");
  e.program = root.get<std::string>("program", "rl");
  e.seed = root.get<int64_t>("seed", 1, core::at_least<int64_t>(0));
  e.deterministic = root.get<bool>("deterministic", false);

  core::ConfigView run = root.section("run");
  e.run_dir = run.get<std::string>("dir", "");
  e.run_root = run.get<std::string>("root", "runs");

  core::ConfigView metrics = root.section("metrics");
  e.metric_sinks = metrics.get<std::vector<std::string>>("sinks", kSinks);
  for (const auto& s : e.metric_sinks) {
    if (std::find(kSinks.begin(), kSinks.end(), s) == kSinks.end()) {
      std::string hint = core::closest_match(s, kSinks);
      metrics.fail("sinks", "unknown sink '" + s + "' (known: jsonl, csv, tensorboard)" +
                                (hint.empty() ? "" : "; did you mean '" + hint + "'?"));
    }
  }

  core::ConfigView progress = root.section("progress");
  e.progress_metrics = progress.get<std::vector<std::string>>("metrics", {"charts/episodic_return"});
  e.progress_interval_s = progress.get<double>("interval_s", 10.0, core::greater_than(0.0));
  return e;
}

}  // namespace

LoadedExperiment load_experiment(const fs::path& file, const std::vector<std::string>& overrides) {
  core::ConfigTree tree = core::ConfigTree::load_file(file);
  tree.apply_overrides(overrides);
  LoadedExperiment out;
  out.config = std::make_unique<core::Config>(std::move(tree));
  core::ConfigView root = out.config->root();
  out.experiment = read_experiment(root, file);

  const ProgramFactory* factory = programs().find(out.experiment.program);
  if (!factory) root.fail("program", programs().unknown(out.experiment.program));
  out.program = (*factory)(root, out.experiment);
  out.config->check_unknown_keys();
  return out;
}

// ---- running ----

namespace {

std::string timestamp() {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::localtime(&now));
  return buf;
}

fs::path create_run_dir(const Experiment& e) {
  fs::path dir;
  if (!e.run_dir.empty()) {
    dir = e.run_dir;
    if (fs::exists(dir / "config.yaml"))
      throw ConfigError("run.dir: '" + dir.string() +
                        "' already holds a run; choose another directory (or resume that run)");
  } else {
    dir = fs::path(e.run_root) / (e.name + "-" + timestamp());
    for (int i = 2; fs::exists(dir); ++i) dir = fs::path(e.run_root) / (e.name + "-" + timestamp() + "-" + std::to_string(i));
  }
  std::error_code ec;
  fs::create_directories(dir / "checkpoints", ec);
  if (ec) throw IoError(dir.string() + ": cannot create the run directory: " + ec.message());
  return dir;
}

// Remembers the last value of every metric for summary.json.
class LastValues final : public core::MetricSink {
 public:
  void write(int64_t step, double, const core::Scalars& values) override {
    last_step = step;
    for (const auto& [name, v] : values) last[name] = v;
  }
  std::map<std::string, double> last;
  int64_t last_step = 0;
};

Progress::Mode progress_mode(ProgressMode requested) {
  switch (requested) {
    case ProgressMode::Bar: return Progress::Mode::Bar;
    case ProgressMode::Lines: return Progress::Mode::Lines;
    case ProgressMode::Quiet: return Progress::Mode::Quiet;
    case ProgressMode::Auto: break;
  }
  const char* term = std::getenv("TERM");
  const bool dumb = term && std::string(term) == "dumb";
  return ::isatty(STDERR_FILENO) && !dumb ? Progress::Mode::Bar : Progress::Mode::Lines;
}

}  // namespace

int run_experiment(LoadedExperiment& loaded, const RunOptions& options) {
  const Experiment& e = loaded.experiment;
  const bool resuming = !options.resume_dir.empty();
  const fs::path dir = resuming ? options.resume_dir : create_run_dir(e);
  if (!resuming || !options.resume_overrides.empty())
    core::write_file_atomically(dir / "config.yaml", [&](std::ostream& out) { out << loaded.config->resolved_yaml(); });

  auto progress = std::make_shared<Progress>(progress_mode(options.progress), loaded.program->total_steps(),
                                             e.progress_metrics, e.progress_interval_s);
  // --quiet silences the terminal only; the run's log file keeps every line.
  core::init_logging(options.log_level, false);
  auto terminal = std::make_shared<ProgressLogSink>(*progress);
  if (options.progress == ProgressMode::Quiet) terminal->set_level(spdlog::level::warn);
  core::add_log_sink(terminal);
  core::log_to_file(dir / "log.txt");
  spdlog::info("{} {}", resuming ? "resuming run" : "run directory", dir.string());
  for (const auto& o : options.resume_overrides) spdlog::info("resumed with {}", o);
  if (resuming) loaded.program->resume(dir);

  core::Metrics metrics;
  auto last = std::make_unique<LastValues>();
  LastValues* last_values = last.get();
  metrics.add_sink(std::move(last));
  for (const auto& s : e.metric_sinks) {
    if (s == "jsonl") metrics.add_sink(core::jsonl_sink(dir / "metrics.jsonl"));
    else if (s == "csv") metrics.add_sink(core::csv_sink(dir / "metrics.csv"));
    else if (s == "tensorboard") metrics.add_sink(core::tensorboard_sink(dir));
  }

  // Progress is a sink of its own only for drawing; it must not own the shared pointer.
  struct ProgressSink final : core::MetricSink {
    explicit ProgressSink(std::shared_ptr<Progress> p) : progress(std::move(p)) {}
    void write(int64_t step, double t, const core::Scalars& v) override { progress->write(step, t, v); }
    std::shared_ptr<Progress> progress;
  };
  metrics.add_sink(std::make_unique<ProgressSink>(progress));

  StopSignals signals;
  RunContext ctx{e, dir, metrics, signals.requested(), [progress](int64_t step) { progress->update(step); },
                 [&signals](std::function<void()> f) { return signals.on_stop(std::move(f)); }};
  RunResult result;
  int code = 0;
  std::string error;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    result = loaded.program->run(ctx);
    if (signals.requested().load() && result.exit_reason == "completed") result.exit_reason = "interrupted";
    if (result.exit_reason == "interrupted") code = 130;
  } catch (const std::exception& ex) {
    error = ex.what();
    result.exit_reason = "error";
    code = 1;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  metrics.flush();
  progress->finish();

  nlohmann::ordered_json summary;
  summary["name"] = e.name;
  summary["program"] = e.program;
  summary["exit_reason"] = result.exit_reason;
  summary["stop_reason"] = result.exit_reason;  // the name training programs document
  if (!error.empty()) summary["error"] = error;
  summary["wall_time_s"] = wall;
  summary["last_step"] = last_values->last_step;
  for (const auto& [k, v] : result.summary) summary[k] = v;
  summary["final_metrics"] = last_values->last;
  core::write_file_atomically(dir / "summary.json", [&](std::ostream& out) { out << summary.dump(2) << '\n'; });

  if (!error.empty()) spdlog::error("run failed: {}", error);
  spdlog::info("{} after {:.1f} s; results in {}", result.exit_reason, wall, dir.string());
  spdlog::default_logger()->flush();
  core::init_logging(options.log_level);  // detach from the run's sinks
  return code;
}

}  // namespace flotilla::controller
