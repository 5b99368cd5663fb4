#pragma once
// What CLI tests check: a command that must fail as a config error, and what a run wrote (its
// summary.json, the metric names and rows of metrics.jsonl).
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "cli.hpp"

namespace flotilla::test {

inline std::string config_path(const std::string& name) {
  std::string path = FLOTILLA_SOURCE_DIR;
  path += "/configs/";
  return path += name;
}

// A command (`validate CONFIG key=value ...`, `eval DIR`, ...), run in `dir`, must stop with a
// config error (exit 2) whose message holds `expected`.
inline void check_config_error(const std::string& binary, const std::vector<std::string>& args, const std::filesystem::path& dir,
                               const std::string& expected) {
  const CliResult r = run_cli(binary, args, dir, dir);
  CHECK_MESSAGE(r.code == 2, r.err);
  CHECK_MESSAGE(contains(r.err, expected), "expected '" << expected << "' in: " << r.err);
}

inline nlohmann::json summary_of(const std::filesystem::path& run) {
  return nlohmann::json::parse(core::read_file(run / "summary.json"));
}

// Every logged row by step, the rows of one step merged.
inline std::map<int64_t, std::map<std::string, double>> rows_of(const std::filesystem::path& run) {
  std::map<int64_t, std::map<std::string, double>> rows;
  for (const auto& r : core::read_metrics_jsonl(run / "metrics.jsonl"))
    for (const auto& [k, v] : r.values) rows[r.step][k] = v;
  return rows;
}

inline std::set<std::string> metric_names(const std::filesystem::path& run) {
  std::set<std::string> names;
  for (const auto& r : core::read_metrics_jsonl(run / "metrics.jsonl"))
    for (const auto& [k, v] : r.values) names.insert(k);
  return names;
}

}  // namespace flotilla::test
