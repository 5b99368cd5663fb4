// The flotilla command line as a user drives it: exit codes, error messages, config composition,
// run directories, Ctrl-C, plots. FLOTILLA_TEST_CLI is the flotilla CLI with a test program
// ("countdown") built in.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <csignal>
#include <filesystem>

#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "support/cli.hpp"
#include "support/cli_checks.hpp"
#include "support/processes.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {
using test::contains;
using test::summary_of;

const std::string kCli = FLOTILLA_TEST_CLI;


fs::path only_run_dir(const fs::path& runs) {
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(runs)) dirs.push_back(e.path());
  REQUIRE(dirs.size() == 1);
  return dirs[0];
}


}  // namespace

TEST_CASE("cli_bad_value_exits_2_with_file_line_and_key") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\nname: t\nseed: abc\n");
  auto r = test::run_cli(kCli, {"validate", cfg.string()}, dir.path());
  CHECK(r.code == 2);
  CHECK(contains(r.err, "exp.yaml:3:7: seed: expected an integer, found 'abc'"));
}

TEST_CASE("cli_unknown_key_gets_a_suggestion_and_runs_nothing") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\ncountdown:\n  stesp: 5\n");
  auto r = test::run_cli(kCli, {"run", cfg.string(), "run.root=" + (dir.path() / "runs").string()}, dir.path());
  CHECK(r.code == 2);
  CHECK(contains(r.err, "exp.yaml:3:3: unknown key 'stesp' in 'countdown'; did you mean 'steps'?"));
  CHECK_FALSE(fs::exists(dir.path() / "runs"));
}

TEST_CASE("cli_unknown_program_lists_the_known_ones") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdonw\n");
  auto r = test::run_cli(kCli, {"validate", cfg.string()}, dir.path());
  CHECK(r.code == 2);
  CHECK(contains(r.err, "did you mean 'countdown'?"));
}

TEST_CASE("cli_defaults_and_overrides_compose_as_documented") {
  test::TempDir dir;
  dir.write("base/common.yaml", "seed: 5\ncountdown: {steps: 10, mode: down}\n");
  auto cfg = dir.write("exp.yaml", "defaults: [base/common.yaml]\nprogram: countdown\ncountdown: {steps: 20}\n");
  auto r = test::run_cli(kCli, {"config", "show", cfg.string(), "countdown.step_ms=0.5", "seed=9"}, dir.path());
  REQUIRE(r.code == 0);
  YAML::Node shown = YAML::Load(r.out);
  CHECK(shown["seed"].as<int>() == 9);                       // override beats the file and its defaults
  CHECK(shown["countdown"]["steps"].as<int>() == 20);        // the file beats its defaults
  CHECK(shown["countdown"]["mode"].as<std::string>() == "down");  // defaults fill the rest
  CHECK(shown["countdown"]["step_ms"].as<double>() == 0.5);
  CHECK(shown["countdown"]["fail_at"].as<int>() == -1);      // built-in defaults are written out
  CHECK(shown["name"].as<std::string>() == "exp");
  CHECK_FALSE(shown["defaults"].IsDefined());
}

TEST_CASE("cli_config_show_round_trips") {
  test::TempDir dir;
  dir.write("base.yaml", "countdown: {steps: 7}\n");
  auto cfg = dir.write("exp.yaml", "defaults: [base.yaml]\nprogram: countdown\nseed: 3\n");
  auto first = test::run_cli(kCli, {"config", "show", cfg.string(), "countdown.mode=down"}, dir.path());
  REQUIRE(first.code == 0);
  auto resolved = dir.write("resolved.yaml", first.out);
  auto second = test::run_cli(kCli, {"config", "show", resolved.string()}, dir.path());
  REQUIRE(second.code == 0);
  CHECK(second.out == first.out);
}

TEST_CASE("cli_run_writes_the_run_directory_and_summary") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\nname: demo\ncountdown: {steps: 30}\n");
  auto r = test::run_cli(kCli, {"run", cfg.string(), "run.root=runs"}, dir.path(), dir.path());
  REQUIRE(r.code == 0);
  fs::path run = only_run_dir(dir.path() / "runs");
  CHECK(run.filename().string().rfind("demo-", 0) == 0);
  for (const char* f : {"config.yaml", "log.txt", "metrics.jsonl", "metrics.csv", "summary.json", "checkpoints"})
    CHECK_MESSAGE(fs::exists(run / f), f);
  bool has_events = false;
  for (const auto& e : fs::directory_iterator(run))
    has_events |= e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  CHECK(has_events);
  auto summary = summary_of(run);
  CHECK(summary["exit_reason"] == "completed");
  CHECK(summary["last_step"] == 30);
  CHECK(summary["final_metrics"]["charts/episodic_return"] == 30.0);
  CHECK(summary["wall_time_s"].get<double>() > 0);
  CHECK(core::read_metrics_jsonl(run / "metrics.jsonl").size() == 30);
  // Off a terminal, progress comes as plain lines, ending at 100%.
  CHECK(contains(r.err, "100% 30/30 steps"));
  CHECK_FALSE(contains(r.err, "\r"));

  // The saved config reproduces the run: running it again gives the same metrics.
  auto again = test::run_cli(kCli, {"run", (run / "config.yaml").string(), "run.dir=again"}, dir.path(), dir.path());
  REQUIRE(again.code == 0);
  auto a = core::read_metrics_jsonl(run / "metrics.jsonl");
  auto b = core::read_metrics_jsonl(dir.path() / "again" / "metrics.jsonl");
  REQUIRE(a.size() == b.size());
  CHECK(a.back().values == b.back().values);

  // A run directory is never reused.
  auto clash = test::run_cli(kCli, {"run", cfg.string(), "run.dir=again"}, dir.path(), dir.path());
  CHECK(clash.code == 2);
  CHECK(contains(clash.err, "already holds a run"));
}

TEST_CASE("cli_quiet_prints_no_progress") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\ncountdown: {steps: 5}\n");
  auto r = test::run_cli(kCli, {"run", "--quiet", cfg.string(), "run.root=runs"}, dir.path(), dir.path());
  CHECK(r.code == 0);
  CHECK(r.err.empty());
}

TEST_CASE("cli_failure_at_run_time_exits_1_and_records_the_error") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\ncountdown: {steps: 10, fail_at: 4}\n");
  auto r = test::run_cli(kCli, {"run", cfg.string(), "run.root=runs"}, dir.path(), dir.path());
  CHECK(r.code == 1);
  CHECK(contains(r.err, "countdown failed at step 4"));
  auto summary = summary_of(only_run_dir(dir.path() / "runs"));
  CHECK(summary["exit_reason"] == "error");
  CHECK(contains(summary["error"].get<std::string>(), "step 4"));
  CHECK(summary["last_step"] == 3);
}

TEST_CASE("cli_ctrl_c_stops_gracefully_and_a_second_stops_at_once") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\ncountdown: {steps: 100000, step_ms: 5}\n");
  {
    test::CliProcess p(kCli, {"run", cfg.string(), "run.dir=one"}, dir.path(), dir.path());
    // Wait until the run is under way (metrics flowing), then press Ctrl-C once.
    const fs::path one = dir.path() / "one" / "metrics.jsonl";
    REQUIRE(test::wait_until([&] { return fs::exists(one) && core::read_metrics_jsonl(one).size() >= 3; }, 60));
    p.signal(SIGINT);
    auto r = p.wait(30);
    CHECK(r.code == 130);
    CHECK(contains(r.err, "stopping after the current step"));
    auto summary = summary_of(dir.path() / "one");
    CHECK(summary["exit_reason"] == "interrupted");
    CHECK(summary["last_step"].get<int64_t>() > 0);
    CHECK(summary["last_step"].get<int64_t>() < 100000);
  }
  {
    // A program that ignores the first request is still stopped by the second.
    auto stubborn = dir.write("slow.yaml", "program: countdown\ncountdown: {steps: 100000, step_ms: 5, ignore_stop: true}\n");
    test::CliProcess p(kCli, {"run", stubborn.string(), "run.dir=two"}, dir.path(), dir.path());
    const fs::path two = dir.path() / "two" / "metrics.jsonl";
    REQUIRE(test::wait_until([&] { return fs::exists(two) && core::read_metrics_jsonl(two).size() >= 3; }, 60));
    p.signal(SIGINT);
    // The second Ctrl-C once the first has been taken (the program says so).
    REQUIRE(test::wait_until([&] { return contains(p.err_so_far(), "stopping after the current step"); }, 60));
    p.signal(SIGINT);
    auto r = p.wait(30);
    CHECK(r.code == 130);
    CHECK(contains(r.err, "stopping at once"));
    CHECK_FALSE(fs::exists(dir.path() / "two" / "summary.json"));
  }
}

TEST_CASE("cli_plot_writes_a_png_per_metric") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\ncountdown: {steps: 20}\n");
  REQUIRE(test::run_cli(kCli, {"run", "-q", cfg.string(), "run.dir=r"}, dir.path(), dir.path()).code == 0);
  auto r = test::run_cli(kCli, {"plot", "r", "charts/episodic_return"}, dir.path(), dir.path());
  REQUIRE(r.code == 0);
  fs::path png = dir.path() / "r" / "plots" / "charts_episodic_return.png";
  REQUIRE(fs::exists(png));
  std::string bytes = core::read_file(png);
  CHECK(bytes.substr(1, 3) == "PNG");
  CHECK(bytes.size() > 2000);
  auto all = test::run_cli(kCli, {"plot", "r", "--out", "all"}, dir.path(), dir.path());
  CHECK(all.code == 0);
  CHECK(fs::exists(dir.path() / "all" / "losses_value_loss.png"));
  auto bad = test::run_cli(kCli, {"plot", "r", "charts/episodic_retrun"}, dir.path(), dir.path());
  CHECK(bad.code == 2);
  CHECK(contains(bad.err, "did you mean 'charts/episodic_return'?"));
}

TEST_CASE("cli_usage_errors_exit_2_and_help_exits_0") {
  test::TempDir dir;
  CHECK(test::run_cli(kCli, {}, dir.path()).code == 2);
  CHECK(test::run_cli(kCli, {"frobnicate"}, dir.path()).code == 2);
  auto missing = test::run_cli(kCli, {"run", "no/such.yaml"}, dir.path());
  CHECK(missing.code == 2);
  CHECK(contains(missing.err + missing.out, "no/such.yaml"));
  auto help = test::run_cli(kCli, {"run", "--help"}, dir.path());
  CHECK(help.code == 0);
  CHECK(contains(help.out, "--quiet"));
  auto version = test::run_cli(kCli, {"version"}, dir.path());
  CHECK(version.code == 0);
  CHECK(contains(version.out, "flotilla "));
  auto bad_override = test::run_cli(kCli, {"validate", dir.write("e.yaml", "program: countdown\n").string(), "seed"}, dir.path());
  CHECK(bad_override.code == 2);
  CHECK(contains(bad_override.err, "expected key.path=value"));
}

TEST_CASE("cli_runs_on_the_blas_kernels_the_cpu_supports") {
  // OpenBLAS falls back to its SSE kernels on a CPU model newer than it knows; the CLI then starts
  // itself again with the kernels the CPU supports. OPENBLAS_VERBOSE=2 prints each choice.
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
  test::TempDir dir;
  const char* chosen = std::getenv("OPENBLAS_CORETYPE");
  const std::string saved = chosen ? chosen : "";
  ::unsetenv("OPENBLAS_CORETYPE");
  ::setenv("OPENBLAS_VERBOSE", "2", 1);
  auto r = test::run_cli(kCli, {"version"}, dir.path());
  ::unsetenv("OPENBLAS_VERBOSE");
  if (chosen) ::setenv("OPENBLAS_CORETYPE", saved.c_str(), 1);
  CHECK(r.code == 0);
  const std::string text = r.err + r.out;
  const size_t at = text.rfind("Core: ");
  if (at == std::string::npos) {
    MESSAGE("libtorch's BLAS here is not OpenBLAS; nothing to check");
    return;
  }
  const std::string core = text.substr(at + 6, text.find('\n', at) - at - 6);
  INFO("OpenBLAS ran on its " << core << " kernels");
  for (const char* fallback : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Sandybridge"})
    CHECK(core != fallback);
#endif
}
