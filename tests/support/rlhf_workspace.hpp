#pragma once
// The RLHF CLI tests' workspace: a tiny model and the addition task's data sets, made as a user
// makes them, and runs of the shipped configs in it.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "cli.hpp"
#include "core/fs.hpp"
#include "cli_checks.hpp"
#include "temp_dir.hpp"

namespace flotilla::test {

inline std::string config(const std::string& name) { return config_path("rlhf/" + name); }

// A tiny model and the addition task's data sets, made as a user makes them.
struct Workspace {
  TempDir dir;
  Workspace() {
    auto run = [&](std::vector<std::string> args) {
      auto r = run_cli(FLOTILLA_TEST_CLI, args, dir.path(), dir.path());
      REQUIRE_MESSAGE(r.code == 0, r.err);
    };
    run({"lm", "init", "--arch", "qwen3", "--preset", "tiny", "--vocab", "259", "--out", "init"});
    run({"data", "make", "addition", "--max-digits", "2", "--n", "64", "--seed", "1", "--kind", "sft", "--out", "sft.jsonl"});
    run({"data", "make", "addition", "--max-digits", "2", "--n", "64", "--seed", "2", "--out", "data/train.jsonl"});
    run({"data", "make", "addition", "--max-digits", "2", "--n", "8", "--seed", "3", "--out", "val.jsonl"});
    run({"data", "make", "addition", "--max-digits", "2", "--n", "64", "--seed", "4", "--kind", "preference", "--out", "pairs.jsonl"});
    run({"data", "make", "addition", "--max-digits", "2", "--n", "8", "--seed", "5", "--kind", "preference", "--out", "pairs_val.jsonl"});
  }
  std::filesystem::path path() const { return dir.path(); }
  CliResult run(const std::string& file, std::vector<std::string> overrides, const std::string& run_dir) const {
    std::vector<std::string> args = {"run", "-q", config(file), "run.dir=" + run_dir, "model.path=init", "eval.n=8"};
    args.insert(args.end(), overrides.begin(), overrides.end());
    return run_cli(FLOTILLA_TEST_CLI, args, dir.path(), dir.path());
  }
  // Resumes `run_dir`'s run with `overrides` (e.g. train.steps raised, another worker layout).
  CliResult resume(const std::string& run_dir, std::vector<std::string> overrides) const {
    overrides.insert(overrides.begin(), {"resume", "-q", run_dir});
    return run_cli(FLOTILLA_TEST_CLI, overrides, dir.path(), dir.path());
  }
  // A run that must succeed, with `extra` overrides after `overrides`.
  void run_ok(const std::string& file, std::vector<std::string> overrides, const std::vector<std::string>& extra,
              const std::string& run_dir) const {
    overrides.insert(overrides.end(), extra.begin(), extra.end());
    auto r = run(file, overrides, run_dir);
    REQUIRE_MESSAGE(r.code == 0, r.err);
  }
};

}  // namespace flotilla::test
