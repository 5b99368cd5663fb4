// Asynchronous RLHF from the command line: runs under each staleness bound stay within it and use
// it, the decoupled objective weights stale samples, a checkpoint keeps the finished groups not yet
// trained, a stream that stops delivering ends the run with an error naming the wait, a killed
// rollout ends it naming the worker, a deterministic run repeats from its schedule, and `bench rlhf`
// compares variants.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <csignal>
#include <filesystem>
#include <map>
#include <string>

#include "core/fs.hpp"
#include "core/safetensors.hpp"
#include "support/cli.hpp"
#include "support/cli_checks.hpp"
#include "support/processes.hpp"
#include "support/rlhf_workspace.hpp"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {
using test::contains;
using test::rows_of;
const std::string kCli = FLOTILLA_TEST_CLI;
// GRPO on the addition task with split workers; the untrained model earns the format reward (a
// digit in the response) on about a quarter of its samples.
const std::vector<std::string> kAsync = {"data.train=data/train.jsonl", "data.val=val.jsonl", "algo.batch_size=4", "algo.group_size=4",
                                         "placement=split", "eval.every=0", "eval.at_start=false", "reward.format=.*[0-9].*",
                                         "reward.format_weight=1", "algo.actor.lr=0.01"};
std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
}  // namespace

TEST_CASE("async_runs_stay_within_the_staleness_bound_and_use_it") {
  test::Workspace w;
  for (int64_t max : {int64_t{1}, int64_t{2}, int64_t{-1}}) {
    CAPTURE(max);
    const std::string run = std::string("s") + std::to_string(max);
    w.run_ok("addition_grpo.yaml", kAsync, {"train.steps=6", "async.max_staleness=" + std::to_string(max)}, run);
    const auto rows = rows_of(w.path() / run);
    int64_t most = 0;
    for (int64_t step = 1; step <= 6; ++step) {
      CAPTURE(step);
      REQUIRE(rows.count(step));
      const auto& r = rows.at(step);
      const auto stale = static_cast<int64_t>(r.at("async/staleness_max"));
      if (max >= 0) CHECK(stale <= max);
      most = std::max(most, stale);
      // Stale samples are weighted by pi_proximal / pi_behaviour, near 1 for these small updates.
      CHECK(r.at("actor/behaviour_weight/mean") > 0.5);
      CHECK(r.at("actor/behaviour_weight/mean") < 2.0);
      double counted = 0;
      for (int64_t s = 0; s <= 8; ++s)
        if (r.count("async/staleness_hist/" + std::to_string(s))) counted += r.at("async/staleness_hist/" + std::to_string(s));
      CHECK(counted == 4);  // every group of the batch, once
    }
    // Generation ran ahead of training: some batch was made by weights older than the trainer's.
    CHECK(most >= 1);
  }
  // The plain objective clips against the rollout's log-probs and has no behaviour weight; the
  // other ways in-flight sequences take a weight sync run too.
  for (const std::string extra : {"async.objective=plain", "async.on_update=abort", "async.on_update=recompute"}) {
    CAPTURE(extra);
    w.run_ok("addition_grpo.yaml", kAsync, {"train.steps=3", "async.max_staleness=1", extra}, "other");
    const auto rows = rows_of(w.path() / "other");
    REQUIRE(rows.count(3));
    CHECK(rows.at(3).count("actor/behaviour_weight/mean") == (extra == "async.objective=plain" ? 0u : 1u));
    fs::remove_all(w.path() / "other");
  }
  // Online DPO learns from the stale pairs as they are.
  w.run_ok("addition_online_dpo.yaml", kAsync, {"train.steps=3", "async.max_staleness=1"}, "dpo");
  const auto dpo = rows_of(w.path() / "dpo");
  bool trained = false;
  for (int64_t step = 1; step <= 3; ++step) {
    REQUIRE(dpo.count(step));
    CHECK(dpo.at(step).at("async/staleness_max") <= 1);
    trained |= dpo.at(step).count("actor/dpo_loss") > 0;
  }
  CHECK(trained);
}

TEST_CASE("async_checkpoints_keep_the_finished_groups_and_resume_trains_them") {
  test::Workspace w;
  const auto args = with(kAsync, {"async.max_staleness=2", "checkpoint.every=2"});
  w.run_ok("addition_grpo.yaml", args, {"train.steps=2"}, "half");
  // At version 1 the bound admits prompts up to version 3's batch: 16 groups, 8 trained.
  const auto manifest = nlohmann::json::parse(core::read_file(w.path() / "half" / "checkpoints" / "ckpt-2.json"));
  CHECK(manifest.at("stream").at("submitted") == 16);
  CHECK(manifest.at("stream").at("ready").size() == 8);
  const auto saved = core::load_safetensors(w.path() / "half" / "checkpoints" / "step-2" / "stream.safetensors");
  CHECK(saved.at("tokens").size(0) == 32);  // 8 groups of 4 samples
  CHECK(saved.at("scores").size(0) == 32);
  // Extend the run to 4 steps and resume: steps 3 and 4 train the saved groups (made by the
  // weights of versions 0 and 1, so at least one version old).
  auto resumed = w.resume("half", {"train.steps=4"});
  REQUIRE_MESSAGE(resumed.code == 0, resumed.err);
  const auto rows = rows_of(w.path() / "half");
  for (int64_t step : {3, 4}) {
    CAPTURE(step);
    REQUIRE(rows.count(step));
    CHECK(rows.at(step).at("async/staleness_max") >= 1);
    CHECK(rows.at(step).at("async/staleness_max") <= 2);
  }
}

TEST_CASE("async_waits_end_with_an_error_naming_what_they_waited_for") {
  test::Workspace w;
  // A reward command slower than the wait limit: no group finishes scoring in time.
  auto r = w.run("addition_grpo.yaml",
                 with(kAsync, {"train.steps=2", "async.max_staleness=1", "async.wait_timeout_s=0.5", "reward.kind=command",
                               "reward.command=sleep 5", "reward.timeout_s=30"}),
                 "slow");
  CHECK(r.code == 1);
  CHECK_MESSAGE(contains(r.err, "waited 0.5 s for the samples that train version 0"), r.err);
  CHECK_MESSAGE(contains(r.err, "being scored"), r.err);
  CHECK_MESSAGE(contains(r.err, "async.wait_timeout_s"), r.err);
}

namespace {
// A run's rows without wall-clock figures and the rollouts' live counters (snapshots taken when a
// collection happened to return).
std::map<int64_t, std::map<std::string, double>> trained_rows(const fs::path& run) {
  auto rows = rows_of(run);
  for (auto& [step, row] : rows)
    for (auto it = row.begin(); it != row.end();) {
      const std::string& k = it->first;
      const bool live = k.rfind("timing_s/", 0) == 0 || k.rfind("perf/", 0) == 0 || k.rfind("rollout/", 0) == 0 ||
                        k.rfind("transfer/", 0) == 0 || k == "async/actor_wait_s" || k == "async/sync_pause_s" ||
                        k == "async/inflight_at_update";
      it = live ? row.erase(it) : std::next(it);
    }
  return rows;
}
}  // namespace

TEST_CASE("a_deterministic_async_run_repeats_bit_for_bit_from_its_schedule_and_across_a_resume") {
  test::Workspace w;
  // A checkpoint drains the stream, so checkpoints are part of a schedule: every run here
  // checkpoints every 2 steps, as the recorded one did.
  const auto args = with(kAsync, {"async.max_staleness=2", "async.deterministic=true", "eval.every=2", "eval.at_start=true",
                                  "checkpoint.every=2"});
  w.run_ok("addition_grpo.yaml", args, {"train.steps=6"}, "recorded");
  REQUIRE(fs::exists(w.path() / "recorded" / "schedule.json"));
  const std::string schedule = "async.schedule=recorded/schedule.json";
  w.run_ok("addition_grpo.yaml", args, {"train.steps=6", schedule}, "repeat");
  const auto a = trained_rows(w.path() / "recorded"), b = trained_rows(w.path() / "repeat");
  REQUIRE(a.size() == b.size());
  CHECK(a == b);  // every loss, score, staleness and accuracy, bit for bit
  // The recorded run was asynchronous for real: stale batches, and a stream of them.
  double most = 0;
  for (const auto& [step, row] : a)
    if (row.count("async/staleness_max")) most = std::max(most, row.at("async/staleness_max"));
  CHECK(most >= 1);

  // Following the schedule, stopped at a checkpoint after step 2 and resumed to step 6.
  w.run_ok("addition_grpo.yaml", args, {"train.steps=2", schedule}, "resumed");
  // Its checkpoint was written in the background (checkpoint.async, the default).
  CHECK(core::read_file(w.path() / "resumed" / "checkpoints" / "step-2" / "actor" / "written") == "ok\n");
  auto r = w.resume("resumed", {"train.steps=6"});
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto c = trained_rows(w.path() / "resumed");
  REQUIRE(c.size() == a.size());
  CHECK(c == a);

  // Checkpointing where the recorded run did not would leave the rollouts waiting for a weight
  // sync the schedule lands mid-generation: said before the run starts.
  auto elsewhere = w.run("addition_grpo.yaml", with(args, {"train.steps=3", schedule}), "elsewhere");
  CHECK(elsewhere.code != 0);
  CHECK_MESSAGE(contains(elsewhere.err, "would checkpoint after step 3, where the recorded run did not (it checkpointed at versions 2, 4, 6)"),
                elsewhere.err);

  // What a schedule needs, said as config errors.
  auto check = [&](std::vector<std::string> overrides, const std::string& expected) {
    std::vector<std::string> v = {"validate", test::config("addition_grpo.yaml"), "model.path=init"};
    for (const auto& o : with(kAsync, overrides)) v.push_back(o);
    test::check_config_error(kCli, v, w.path(), expected);
  };
  check({"async.max_staleness=1", schedule}, "only with async.deterministic: true");
  check({"async.max_staleness=1", "async.deterministic=true", "async.max_inflight=2"}, "leave max_inflight at 0");
  check({"async.max_staleness=-1", "async.deterministic=true"}, "needs a staleness bound");
  core::write_file_atomically(w.path() / "bad.json", [](std::ostream& o) { o << "{\"starts\": 3}"; });
  auto bad = w.run("addition_grpo.yaml", with(kAsync, {"train.steps=1", "async.deterministic=true", "async.schedule=bad.json"}), "bad");
  CHECK(bad.code != 0);
  CHECK_MESSAGE(contains(bad.err, "bad.json: not a schedule recorded by an RLHF run"), bad.err);
  auto missing = w.run("addition_grpo.yaml", with(kAsync, {"train.steps=1", "async.deterministic=true", "async.schedule=nope.json"}), "missing");
  CHECK(missing.code == 2);
  CHECK_MESSAGE(contains(missing.err, "nope.json does not exist"), missing.err);
}

TEST_CASE("bench_rlhf_compares_variants_by_accuracy_against_wall_time") {
  test::Workspace w;
  std::vector<std::string> args = {"bench", "rlhf", test::config("addition_grpo.yaml"), "model.path=init", "data.train=data/train.jsonl",
                                   "data.val=val.jsonl", "train.steps=2", "eval.every=1", "eval.n=8", "algo.batch_size=4",
                                   "algo.group_size=4", "--out", "bench", "--json"};
  auto with_variants = [&](std::vector<std::string> v) {
    std::vector<std::string> a = args;
    a.insert(a.end(), v.begin(), v.end());
    return a;
  };
  auto r = test::run_cli(kCli, with_variants({"--variant", "sync:placement=split,workers=[{role: actor, threads: 1}, {role: rollout}]",
                                              "--variant", "s1:placement=split,async.max_staleness=1"}),
                         w.path(), w.path());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto out = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  CHECK(out.at("baseline") == "sync");
  REQUIRE(out.at("variants").size() == 2);
  CHECK(out["variants"][0]["label"] == "sync");
  CHECK(out["variants"][0]["mean_staleness"].get<double>() == 0.0);
  CHECK(out["variants"][1]["mean_staleness"].get<double>() > 0.0);  // the s1 run was stale, the baseline not
  CHECK(out["variants"][1]["median_step_s"].get<double>() > 0.0);
  CHECK(out["variants"][0]["wall_ratio"].get<double>() == 1.0);  // the baseline against itself
  CHECK(out["variants"][1]["wall_ratio"].get<double>() ==
        doctest::Approx(out["variants"][0]["wall_s"].get<double>() / out["variants"][1]["wall_s"].get<double>()));
  const fs::path runs = out.at("runs").get<std::string>();
  const std::string curves = core::read_file(w.path() / runs / "curves.csv");
  CHECK(contains(curves, "variant,step,wall_s,val_accuracy\nsync,0,"));
  CHECK(contains(curves, "\ns1,2,"));
  // Variants and baselines are checked before anything runs.
  auto bad = test::run_cli(kCli, with_variants({"--variant", "placement=split"}), w.path(), w.path());
  CHECK(bad.code == 2);
  CHECK_MESSAGE(contains(bad.err, "LABEL:key=value"), bad.err);
  auto base = test::run_cli(kCli, with_variants({"--variant", "a:seed=1", "--baseline", "b"}), w.path(), w.path());
  CHECK(base.code == 2);
  CHECK_MESSAGE(contains(base.err, "--baseline 'b' is not one of"), base.err);
}

TEST_CASE("with_fault_policy_stop_an_async_run_fails_naming_a_killed_rollout_and_leaves_no_workers") {
  test::Workspace w;
  const std::string run = (w.path() / "r").string();
  std::vector<std::string> args = {"run", "-q", test::config("addition_grpo.yaml"), "run.dir=r", "model.path=init", "train.steps=100000",
                                   "fault.on_worker_failure=stop"};
  for (const auto& a : with(kAsync, {"async.max_staleness=2"})) args.push_back(a);
  test::CliProcess p(kCli, args, w.path(), w.path());
  REQUIRE(test::wait_until([&] { return fs::exists(w.path() / "r" / "metrics.jsonl") && rows_of(w.path() / "r").size() >= 3; }, 120));
  REQUIRE(test::kill_worker(run, "rollout"));
  // The trainer was waiting on the stream, or soon is: the run ends, naming the dead worker.
  auto r = p.wait(60);
  CAPTURE(r.err);
  CHECK(r.code == 1);
  CHECK(contains(r.err, "worker rollout/0"));
  CHECK(contains(r.err, "killed by signal 9"));
  CHECK(test::wait_until([&] { return test::workers_of(run).empty(); }, 10));
}
