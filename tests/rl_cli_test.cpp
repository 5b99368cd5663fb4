// The RL program from the command line: the shipped configs, resume, eval, a NaN loss, bench train.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <set>

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
std::string config(const std::string& name) { return test::config_path(name); }
}  // namespace

TEST_CASE("rl_configs_run_a_short_job_with_every_metric_and_a_checkpoint") {
  for (const char* name : {"cartpole_ppo.yaml", "acrobot_ppo.yaml", "pendulum_ppo.yaml"}) {
    CAPTURE(std::string(name));
    test::TempDir dir;
    auto r = test::run_cli(kCli, {"run", "-q", config(name), "train.total_steps=4096", "env.num_envs=4", "stop.mean_return=100000", "run.dir=r"},
                           dir.path(), dir.path());
    REQUIRE(r.code == 0);
    auto summary = summary_of(dir.path() / "r");
    CHECK(summary["exit_reason"] == "completed");
    CHECK(summary["global_step"].get<double>() >= 4096);
    auto rows = core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl");
    REQUIRE_FALSE(rows.empty());
    std::set<std::string> names;
    for (const auto& row : rows)
      for (const auto& [k, v] : row.values) names.insert(k);
    for (const char* m : {"charts/episodic_return", "charts/episodic_length", "charts/episodes", "losses/policy_loss",
                          "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
                          "losses/explained_variance", "perf/sps", "timing_s/rollout", "timing_s/update",
                          "charts/learning_rate"})
      CHECK_MESSAGE(names.count(m), std::string(m));
    CHECK(fs::exists(dir.path() / "r" / "checkpoints"));
    auto eval = test::run_cli(kCli, {"eval", "r", "--episodes", "3", "--json"}, dir.path(), dir.path());
    REQUIRE(eval.code == 0);
    auto e = nlohmann::json::parse(eval.out);
    CHECK(e["episodes"] == 3);
    CHECK(std::isfinite(e["mean_return"].get<double>()));
  }
}

TEST_CASE("rl_cartpole_stop_condition_records_when_it_was_solved") {
  test::TempDir dir;
  // A reachable threshold so the short test run meets it.
  auto r = test::run_cli(kCli, {"run", "-q", config("cartpole_ppo.yaml"), "stop.mean_return=30", "stop.window=5", "run.dir=r"},
                         dir.path(), dir.path());
  REQUIRE(r.code == 0);
  auto s = summary_of(dir.path() / "r");
  CHECK(s["exit_reason"] == "stop_condition");
  CHECK(s["solved_at_step"].get<double>() > 0);
  CHECK(s["solved_at_time_s"].get<double>() > 0);
  CHECK(s["recent_mean_return"].get<double>() >= 30);
}

TEST_CASE("rl_ctrl_c_then_resume_finishes_the_run_in_the_same_directory") {
  test::TempDir dir;
  const std::vector<std::string> args = {"run", config("cartpole_ppo.yaml"), "train.total_steps=3000000", "env.num_envs=4",
                                         "stop.mean_return=100000", "run.dir=r"};
  {
    test::CliProcess p(kCli, args, dir.path(), dir.path());
    // Ctrl-C once the run has logged a few rows (an event, not a fixed time: CI machines are loaded).
    const fs::path metrics = dir.path() / "r" / "metrics.jsonl";
    REQUIRE(test::wait_until([&] { return fs::exists(metrics) && core::read_metrics_jsonl(metrics).size() >= 3; }, 60));
    p.signal(SIGINT);
    auto r = p.wait(60);
    CHECK(r.code == 130);
  }
  auto s = summary_of(dir.path() / "r");
  CHECK(s["exit_reason"] == "interrupted");
  const double stopped_at = s["global_step"].get<double>();
  const size_t rows_before = core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl").size();
  // Resume with a nearer end: override by editing nothing; the saved config is the run's.
  // resume takes run's output options.
  auto resumed = test::CliProcess(kCli, {"resume", "--progress", "lines", "r"}, dir.path(), dir.path());
  // Ctrl-C once the resumed run has logged rows of its own.
  const fs::path metrics = dir.path() / "r" / "metrics.jsonl";
  REQUIRE(test::wait_until([&] { return core::read_metrics_jsonl(metrics).size() > rows_before + 2; }, 60));
  resumed.signal(SIGINT);
  auto r2 = resumed.wait(60);
  CHECK(r2.code == 130);
  CHECK(contains(r2.err, " steps"));  // plain progress lines, no terminal bar
  CHECK_FALSE(contains(r2.err, "\r"));
  auto s2 = summary_of(dir.path() / "r");
  CHECK(s2["global_step"].get<double>() > stopped_at);
  auto rows = core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl");
  CHECK(rows.size() > rows_before);
  for (size_t i = 1; i < rows.size(); ++i) CHECK(rows[i].step > rows[i - 1].step);  // the run continued, no repeats
  CHECK(contains(core::read_file(dir.path() / "r" / "log.txt"), "resuming from"));
}

TEST_CASE("rl_non_finite_loss_stops_with_the_iteration_and_keeps_the_last_checkpoint") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"run", "-q", config("cartpole_ppo.yaml"), "algo.lr=1e30", "algo.max_grad_norm=0", "algo.anneal_lr=false",
                                "algo.num_minibatches=1", "algo.update_epochs=1",
                                "checkpoint.every=1", "stop.mean_return=100000", "train.total_steps=40000", "run.dir=r"},
                         dir.path(), dir.path());
  CHECK(r.code == 1);
  CHECK(contains(r.err, "the PPO loss is not finite (losses/"));
  auto s = summary_of(dir.path() / "r");
  CHECK(s["exit_reason"] == "error");
  CHECK(contains(s["error"].get<std::string>(), "iteration "));
  CHECK(fs::exists(dir.path() / "r" / "checkpoints" / "ckpt-1.json"));
}

TEST_CASE("rl_bad_config_values_exit_2_before_running") {
  test::TempDir dir;
  test::check_config_error(kCli, {"validate", config("cartpole_ppo.yaml"), "algo.nam=ppo"}, dir.path(), "did you mean 'name'?");
  test::check_config_error(kCli, {"validate", config("cartpole_ppo.yaml"), "algo.name=ppp"}, dir.path(), "did you mean 'ppo'?");
  test::check_config_error(kCli, {"validate", config("pendulum_ppo.yaml"), "algo.gamma=1.5"}, dir.path(), "algo.gamma: expected a value in [0, 1]");
  test::check_config_error(kCli, {"validate", config("cartpole_ppo.yaml"), "model.distribution=diag_gaussian"}, dir.path(), "does not fit the action space Discrete(2)");
  test::check_config_error(kCli, {"eval", dir.path().string()}, dir.path(), "no checkpoint");
}

TEST_CASE("rl_bench_train_reports_per_seed_and_median") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"bench", "train", config("cartpole_ppo.yaml"), "stop.mean_return=30", "stop.window=5",
                                "--seeds", "2", "--out", "b"},
                         dir.path(), dir.path());
  CHECK(r.code == 0);
  CHECK(contains(r.out, "seed 1: solved at step "));
  CHECK(contains(r.out, "seed 2: solved at step "));
  CHECK(contains(r.out, "solved: 2/2"));
  CHECK(contains(r.out, "median_steps_to_solve: "));
  CHECK(contains(r.out, "median_seconds_to_solve: "));
}

TEST_CASE("a_damaged_checkpoint_is_found_named_and_passed_over_for_the_one_before") {
  test::TempDir dir;
  // Three checkpoints (every iteration of 512 steps, the newest three kept).
  auto r = test::run_cli(kCli, {"run", config("cartpole_ppo.yaml"), "train.total_steps=2048", "env.num_envs=4", "train.num_steps=128",
                                "stop.mean_return=100000", "checkpoint.every=1", "checkpoint.keep=3", "run.dir=r"},
                         dir.path(), dir.path());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  auto ok = test::run_cli(kCli, {"checkpoint", "verify", "r"}, dir.path(), dir.path());
  CHECK_MESSAGE(ok.code == 0, ok.out);
  const fs::path ckpts = dir.path() / "r" / "checkpoints";
  std::vector<fs::path> tensors;
  for (const auto& e : fs::directory_iterator(ckpts))
    if (e.path().extension() == ".safetensors") tensors.push_back(e.path());
  std::sort(tensors.begin(), tensors.end(), [](const fs::path& a, const fs::path& b) {
    return std::stoll(a.stem().string().substr(5)) < std::stoll(b.stem().string().substr(5));
  });
  REQUIRE(tensors.size() == 3);
  const auto manifest = nlohmann::json::parse(core::read_file(fs::path(tensors[2]).replace_extension(".json")));
  CHECK(manifest["files"].size() == 1);
  CHECK(manifest["files"].begin().value()["sha256"].get<std::string>().size() == 64);

  // Messages name files as the run directory was given ("r/checkpoints/...").
  auto named = [](const fs::path& p, const char* ext) { return "r/checkpoints/" + fs::path(p.filename()).replace_extension(ext).string(); };

  // One byte flipped in the newest, the middle one cut short.
  std::string bytes = core::read_file(tensors[2]);
  bytes[bytes.size() / 2] ^= 0x5a;
  core::write_file_atomically(tensors[2], [&](std::ostream& o) { o << bytes; });
  fs::resize_file(tensors[1], fs::file_size(tensors[1]) / 2);
  auto bad = test::run_cli(kCli, {"checkpoint", "verify", "r"}, dir.path(), dir.path());
  CHECK(bad.code == 1);
  CHECK(contains(bad.out, named(tensors[2], ".safetensors") + ": SHA-256 differs from the manifest's (corrupted)"));
  CHECK(contains(bad.out, named(tensors[1], ".safetensors") + ": "));
  CHECK(contains(bad.out, "(truncated)"));
  CHECK(contains(bad.out, named(tensors[0], ".json") + ": ok"));

  // Resume passes over both, saying why, and continues from the oldest, which is whole.
  auto resumed = test::run_cli(kCli, {"resume", "r", "train.total_steps=2560"}, dir.path(), dir.path());
  REQUIRE_MESSAGE(resumed.code == 0, resumed.err);
  CHECK(contains(resumed.err, "checkpoint " + named(tensors[2], ".json") + " is damaged"));
  CHECK(contains(resumed.err, "SHA-256 differs"));
  CHECK(contains(resumed.err, "(truncated)"));
  CHECK(contains(core::read_file(dir.path() / "r" / "log.txt"), "resuming from " + named(tensors[0], ".json")));

  // Nothing whole left: a clear error, not a crash.
  for (const auto& e : fs::directory_iterator(ckpts))
    if (e.path().extension() == ".safetensors") fs::resize_file(e.path(), 10);
  auto none = test::run_cli(kCli, {"resume", "r", "train.total_steps=4096"}, dir.path(), dir.path());
  CHECK(none.code != 0);
  CHECK(contains(none.err, "every checkpoint is damaged"));
}
