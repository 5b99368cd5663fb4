#pragma once
// The experiment life cycle behind `flotilla run`, `validate` and `config show`: compose and
// validate the config, build the program, create the run directory, run with progress, metrics
// and Ctrl-C handling, and write summary.json.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "controller/run/program.hpp"
#include "core/config.hpp"

namespace flotilla::controller {

// A fully validated experiment: the config as read, its common keys and its program.
struct LoadedExperiment {
  std::unique_ptr<core::Config> config;
  Experiment experiment;
  std::unique_ptr<Program> program;
};

// Loads `file` with `overrides`, reads every key (building the program) and rejects unknown
// keys. Throws ConfigError naming the file, line, key, expectation and finding.
LoadedExperiment load_experiment(const std::filesystem::path& file, const std::vector<std::string>& overrides);

enum class ProgressMode { Auto, Bar, Lines, Quiet };

struct RunOptions {
  ProgressMode progress = ProgressMode::Auto;
  std::string log_level = "info";
  std::filesystem::path resume_dir;  // continue this run (flotilla resume) instead of starting one
  std::vector<std::string> resume_overrides;  // changes to the resumed run's config (kept in its config.yaml)
  bool detach = false;            // launcher slurm: submit the job and return
  std::filesystem::path in_run_dir;  // run in this prepared directory (a Slurm job's controller)
};

// Runs the experiment to its end; returns the process exit code (0 done, 1 failed, 130 stopped by
// Ctrl-C).
int run_experiment(LoadedExperiment& loaded, const RunOptions& options);

// `flotilla status RUN_DIR`: prints where the run is (its Slurm job's state, or whether its
// controller's process runs) and how far it got; 0, or 2 when the directory holds no run.
int run_status(const std::filesystem::path& dir);
// `flotilla stop RUN_DIR [--now]`: SIGTERM to the run's controller (through Slurm for a job), or
// with `now` cancels the job or kills the controller.
int stop_run(const std::filesystem::path& dir, bool now);

}  // namespace flotilla::controller
