#include <doctest/doctest.h>

#include "controller/run/experiment.hpp"
#include "controller/run/progress.hpp"
#include "core/error.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
using controller::Progress;

TEST_CASE("progress_formats_numbers_and_durations_compactly") {
  CHECK(Progress::human(950) == "950");
  CHECK(Progress::human(12345) == "12.3k");
  CHECK(Progress::human(2.5e6) == "2.50M");
  CHECK(Progress::human(0.25) == "0.25");
  CHECK(Progress::human(-475) == "-475");
  CHECK(Progress::duration(65) == "1:05");
  CHECK(Progress::duration(3725) == "1:02:05");
  CHECK(Progress::duration(NAN) == "--:--");
}

TEST_CASE("experiment_load_reads_common_keys_and_builds_the_program") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\nseed: 4\nmetrics: {sinks: [jsonl]}\ncountdown: {steps: 9}\n");
  auto loaded = controller::load_experiment(cfg, {"deterministic=true"});
  CHECK(loaded.experiment.name == "exp");
  CHECK(loaded.experiment.seed == 4);
  CHECK(loaded.experiment.deterministic);
  CHECK(loaded.experiment.metric_sinks == std::vector<std::string>{"jsonl"});
  CHECK(loaded.program->total_steps() == 9);
}

TEST_CASE("experiment_rejects_unknown_metric_sinks") {
  test::TempDir dir;
  auto cfg = dir.write("exp.yaml", "program: countdown\nmetrics: {sinks: [jsonl, tensorbaord]}\n");
  try {
    controller::load_experiment(cfg, {});
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("did you mean 'tensorboard'") != std::string::npos);
  }
}
