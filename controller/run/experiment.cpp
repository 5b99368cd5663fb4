#include "controller/run/experiment.hpp"

#include <signal.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "controller/cluster/cluster.hpp"
#include "controller/cluster/launcher.hpp"
#include "controller/run/progress.hpp"
#include "controller/run/signals.hpp"
#include "core/curve.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "core/process.hpp"
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
  e.launcher = LauncherConfig::read(root.section("launcher"));
  e.fault = FaultConfig::read(root.section("fault"));
  core::ConfigView security = root.section("security");
  e.curve = security.get<bool>("curve", true);
  e.keys = security.get<std::string>("keys", "");
  if (!e.curve && !e.keys.empty()) security.fail("keys", "keys are given but curve is false; drop one of them");
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
  std::vector<std::string> groups;
  for (const auto& [name, count] : out.program->worker_groups()) groups.push_back(name);
  check_named_groups(groups, out.experiment.launcher, out.experiment.fault);
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
  // The owner's alone (0700): it holds the workers' addresses, logs and checkpoints.
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace, ec);
  if (ec) throw IoError(dir.string() + ": cannot make the run directory private: " + ec.message());
  return dir;
}

// RUN_DIR/run.json: where the controller runs (its pid and host, and its Slurm job), for
// `flotilla status` and `flotilla stop`.
void write_run_info(const fs::path& dir, const std::string& job, bool controller_here) {
  nlohmann::ordered_json j;
  if (controller_here) j["pid"] = ::getpid(), j["host"] = core::hostname();
  if (!job.empty()) j["slurm_job"] = job;
  core::write_file_atomically(dir / "run.json", [&](std::ostream& out) { out << j.dump(2) << '\n'; });
}

// The exit code a finished run's summary.json stands for (what its controller returned).
int exit_code_of(const fs::path& dir) {
  if (!fs::exists(dir / "summary.json")) return 1;
  const std::string reason = nlohmann::json::parse(core::read_file(dir / "summary.json")).value("exit_reason", "error");
  return reason == "error" ? 1 : reason == "interrupted" ? 130 : 0;
}

// launcher.kind slurm from outside an allocation: the run directory is made here, a batch job
// runs the controller in it, and this process follows the job (its log, to the terminal) until it
// leaves the queue, or returns at once with --detach. Ctrl-C asks the job's controller to stop
// after its step; a second one cancels the job.
int submit_and_follow(LoadedExperiment& loaded, const RunOptions& options) {
  const Experiment& e = loaded.experiment;
  const bool resuming = !options.resume_dir.empty();
  const fs::path dir = fs::absolute(resuming ? options.resume_dir : create_run_dir(e));
  if (!resuming || !options.resume_overrides.empty())
    core::write_file_atomically(dir / "config.yaml", [&](std::ostream& out) { out << loaded.config->resolved_yaml(); });
  std::vector<std::string> controller = {fs::canonical("/proc/self/exe").string()};
  if (resuming) controller.insert(controller.end(), {"resume", dir.string()});
  else controller.insert(controller.end(), {"run", (dir / "config.yaml").string(), "--in-run-dir", dir.string()});
  controller.insert(controller.end(), {"--progress", "lines", "--log-level", options.log_level});
  const std::string job = slurm::submit(e.launcher, e.name, dir, loaded.program->worker_groups(), controller);
  write_run_info(dir, job, false);
  spdlog::info("submitted Slurm job {}; run directory {}", job, dir.string());
  if (options.detach) {
    spdlog::info("follow it with `flotilla status {}`; stop it with `flotilla stop {}`", dir.string(), dir.string());
    return 0;
  }
  StopSignals signals;
  const auto stopping = signals.on_stop([job] { slurm::stop(job, false); });
  signals.on_exit_now([job] { slurm::stop(job, true); });
  std::ifstream log;
  std::string state = "PENDING", line;
  // The job's log to the terminal as it grows (with --quiet, its warnings and errors only).
  const bool quiet = options.progress == ProgressMode::Quiet;
  auto echo = [&] {
    while (std::getline(log, line))
      if (!quiet || line.find("] [warning] ") != std::string::npos || line.find("] [error] ") != std::string::npos) std::cerr << line << '\n';
    log.clear();
  };
  for (;;) {
    if (!log.is_open()) log.open(dir / "log.txt");
    if (log.is_open()) echo();
    const std::string now = slurm::job_state(job);
    if (now != state && !now.empty()) spdlog::info("job {}: {}", job, now);
    if (now.empty()) break;
    state = now;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  if (log.is_open()) echo();
  const int code = exit_code_of(dir);
  if (!fs::exists(dir / "summary.json"))
    spdlog::error("job {} ended without a summary: see {}", job, (dir / "slurm" / "job.out").string());
  return code;
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

// A run with workers secures its TCP sockets with CURVE: new keys in RUN_DIR/curve.keys, or those
// of security.keys (`flotilla keys gen DIR`); the workers load the same file.
void secure_transport(const LoadedExperiment& loaded, const fs::path& dir) {
  const Experiment& e = loaded.experiment;
  core::curve::use(std::nullopt);
  if (loaded.program->worker_groups().empty()) return;  // one process: no sockets
  if (!e.curve) {
    spdlog::warn("security.curve is false: anyone who can reach this run's TCP addresses can connect to its workers");
    return;
  }
  fs::path file = fs::absolute(e.keys.empty() ? dir / "curve.keys" : fs::path(e.keys) / "curve.keys");
  if (e.keys.empty()) core::curve::write(file, core::curve::generate());
  core::curve::use(core::curve::read(file), file);
  spdlog::info("TCP sockets authenticate with the CURVE keys in {}", file.string());
}

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
  const bool in_job = std::getenv("SLURM_JOB_ID") != nullptr;
  if (e.launcher.slurm() && !in_job && options.in_run_dir.empty()) return submit_and_follow(loaded, options);
  const bool resuming = !options.resume_dir.empty();
  const bool prepared = !options.in_run_dir.empty();
  const fs::path dir = resuming ? options.resume_dir : prepared ? options.in_run_dir : create_run_dir(e);
  write_run_info(dir, in_job ? std::getenv("SLURM_JOB_ID") : "", true);
  if (!prepared && (!resuming || !options.resume_overrides.empty()))
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
    secure_transport(loaded, dir);
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
  core::curve::use(std::nullopt);
  return code;
}

namespace {
nlohmann::json run_info(const fs::path& dir) {
  if (!fs::exists(dir / "config.yaml")) throw ConfigError(dir.string() + ": not a run directory (no config.yaml)");
  if (!fs::exists(dir / "run.json")) throw ConfigError(dir.string() + ": no run.json (a run started by an older flotilla?)");
  return nlohmann::json::parse(core::read_file(dir / "run.json"));
}
bool local_controller_runs(const nlohmann::json& info) {
  return info.contains("pid") && info.value("host", "") == core::hostname() && ::kill(info["pid"].get<pid_t>(), 0) == 0;
}
}  // namespace

int run_status(const fs::path& dir) {
  const nlohmann::json info = run_info(dir);
  std::string where;
  if (info.contains("slurm_job")) {
    const std::string job = info["slurm_job"].get<std::string>();
    const std::string state = slurm::job_state(job);
    where = "Slurm job " + job + ": " + (state.empty() ? "ended" : state);
  } else {
    where = "controller pid " + std::to_string(info.value("pid", 0)) + " on " + info.value("host", "?") + ": " +
            (local_controller_runs(info) ? "running" : "not running");
  }
  std::cout << dir.string() << "\n  " << where << "\n";
  if (fs::exists(dir / "summary.json")) {
    const auto s = nlohmann::json::parse(core::read_file(dir / "summary.json"));
    std::cout << "  ended: " << s.value("exit_reason", "?") << " at step " << s.value("last_step", 0) << " after " << s.value("wall_time_s", 0.0)
              << " s" << (s.contains("error") ? "; error: " + s["error"].get<std::string>() : "") << "\n";
  } else if (fs::exists(dir / "log.txt")) {
    std::string last, line;
    std::ifstream log(dir / "log.txt");
    while (std::getline(log, line))
      if (!line.empty()) last = line;
    std::cout << "  last log line: " << last << "\n";
  }
  return 0;
}

int stop_run(const fs::path& dir, bool now) {
  const nlohmann::json info = run_info(dir);
  if (fs::exists(dir / "summary.json")) {
    std::cout << dir.string() << " has already ended\n";
    return 0;
  }
  if (info.contains("slurm_job")) {
    slurm::stop(info["slurm_job"].get<std::string>(), now);
  } else {
    if (!local_controller_runs(info)) throw Error(dir.string() + ": its controller (pid " + std::to_string(info.value("pid", 0)) + " on " +
                                                  info.value("host", "?") + ") is not running here");
    ::kill(info["pid"].get<pid_t>(), now ? SIGKILL : SIGTERM);
  }
  std::cout << (now ? "stopping " : "asked to stop after its current step: ") << dir.string() << "\n";
  return 0;
}

}  // namespace flotilla::controller
