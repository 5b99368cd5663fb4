// The single-process RL program in-process: deterministic resume and checkpoints.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <algorithm>
#include <filesystem>

#include "controller/run/experiment.hpp"
#include "controller/run/checkpoint.hpp"
#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

// Keeps every logged row without wall-clock figures; asks the run to stop after `stop_after` rows.
struct Rows final : core::MetricSink {
  std::vector<std::pair<int64_t, core::Scalars>> rows;
  std::atomic<bool>* stop = nullptr;
  size_t stop_after = 0;
  void write(int64_t step, double, const core::Scalars& values) override {
    core::Scalars kept;
    for (const auto& [k, v] : values)
      if (k.rfind("perf/", 0) != 0 && k.rfind("timing_s/", 0) != 0) kept.emplace_back(k, v);
    rows.emplace_back(step, kept);
    if (stop && rows.size() >= stop_after) stop->store(true);
  }
};

std::vector<std::pair<int64_t, core::Scalars>> run_program(const std::string& config, const fs::path& dir,
                                                           const std::vector<std::string>& overrides, size_t stop_after,
                                                           bool resume, std::string* exit_reason = nullptr) {
  auto loaded = controller::load_experiment(std::string(FLOTILLA_SOURCE_DIR) + "/configs/" + config, overrides);
  fs::create_directories(dir);
  if (!resume) core::write_file_atomically(dir / "config.yaml", [&](std::ostream& o) { o << loaded.config->resolved_yaml(); });
  if (resume) loaded.program->resume(dir);
  core::Metrics metrics;
  auto sink = std::make_unique<Rows>();
  Rows* rows = sink.get();
  std::atomic<bool> stop{false};
  if (stop_after > 0) {
    rows->stop = &stop;
    rows->stop_after = stop_after;
  }
  metrics.add_sink(std::move(sink));
  controller::RunContext ctx{loaded.experiment, dir, metrics, stop, [](int64_t) {}};
  controller::RunResult r = loaded.program->run(ctx);
  if (exit_reason) *exit_reason = r.exit_reason;
  return rows->rows;
}

}  // namespace

TEST_CASE("rl_resume_is_identical_to_an_uninterrupted_run_when_deterministic") {
  for (const std::string config : {"cartpole_ppo.yaml", "acrobot_ppo.yaml", "pendulum_ppo.yaml"}) {
    CAPTURE(config);
    test::TempDir tmp;
    const std::vector<std::string> o = {"deterministic=true", "env.num_envs=8", "train.num_steps=32",
                                        "train.total_steps=2048", "stop.mean_return=100000", "checkpoint.every=2"};
    auto whole = run_program(config, tmp.path() / "a", o, 0, false);
    REQUIRE(whole.size() == 8);
    std::string reason;
    auto first = run_program(config, tmp.path() / "b", o, 3, false, &reason);
    CHECK(reason == "interrupted");
    REQUIRE(first.size() == 3);
    CHECK(controller::latest_checkpoint(tmp.path() / "b")->filename() == "ckpt-3.json");
    // The checkpoint keeps the seconds trained so far (a resumed run counts on from them).
    const auto manifest = nlohmann::json::parse(core::read_file(*controller::latest_checkpoint(tmp.path() / "b")));
    CHECK(manifest.at("train_time_s").get<double>() > 0);
    auto rest = run_program(config, tmp.path() / "b", o, 0, true);
    REQUIRE(rest.size() == 5);
    first.insert(first.end(), rest.begin(), rest.end());
    for (size_t i = 0; i < whole.size(); ++i) {
      CAPTURE(i);
      CHECK(first[i].first == whole[i].first);
      CHECK(first[i].second == whole[i].second);
    }
  }
}

TEST_CASE("rl_keeps_the_newest_checkpoints_only") {
  test::TempDir tmp;
  run_program("cartpole_ppo.yaml", tmp.path(),
              {"env.num_envs=4", "train.num_steps=16", "train.total_steps=640", "checkpoint.every=1", "checkpoint.keep=2",
               "stop.mean_return=100000"},
              0, false);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(tmp.path() / "checkpoints")) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  CHECK((files == std::vector<std::string>{"ckpt-10.json", "ckpt-10.safetensors", "ckpt-9.json", "ckpt-9.safetensors"}));
}
