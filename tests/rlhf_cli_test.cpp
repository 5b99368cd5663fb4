// RLHF jobs from the command line: every shipped config for a few steps, split placement against
// colocated (the same numbers when the weight sync works), data-parallel actors, resume, external
// reward commands that fail, config errors, and parallel layouts: sharded training and
// tensor-parallel generation against data-parallel, checkpoints resumed under another layout.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <set>

#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "core/safetensors.hpp"
#include "support/cli.hpp"
#include "support/cli_checks.hpp"
#include "support/rlhf_workspace.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {
using test::contains;
using test::metric_names;
using test::rows_of;
const std::string kCli = FLOTILLA_TEST_CLI;
using test::config;
using test::Workspace;

const std::vector<std::string> kRl = {"data.train=data/train.jsonl", "data.val=val.jsonl", "train.steps=2", "eval.every=2",
                                      "algo.batch_size=4"};
}  // namespace

TEST_CASE("rlhf_configs_run_a_few_steps") {
  Workspace w;
  struct Case {
    const char* file;
    std::vector<std::string> overrides;
    std::vector<const char*> metrics;
  };
  const std::vector<const char*> rl = {"critic/score/mean", "critic/rewards/mean", "critic/advantages/mean",
                                       "response_length/mean", "response_length/clip_ratio", "actor/pg_loss",
                                       "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy", "actor/grad_norm",
                                       "val/accuracy", "timing_s/gen", "timing_s/reward", "timing_s/update_actor",
                                       "timing_s/sync_weights", "perf/throughput"};
  auto with = [](auto a, const decltype(a)& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  using Args = std::vector<std::string>;
  using Names = std::vector<const char*>;
  const std::vector<Case> cases = {
      {"addition_sft.yaml", {"data.train=sft.jsonl", "data.val=val.jsonl", "train.steps=3", "eval.every=3", "algo.batch_size=8"},
       {"actor/sft_loss", "actor/grad_norm", "val/accuracy", "timing_s/update_actor", "perf/throughput"}},
      {"addition_reward_model.yaml", {"data.train=pairs.jsonl", "data.val=pairs_val.jsonl", "train.steps=3", "eval.every=3", "algo.batch_size=4"},
       {"reward_model/loss", "reward_model/accuracy", "val/accuracy"}},
      {"addition_dpo.yaml", {"data.train=pairs.jsonl", "data.val=val.jsonl", "train.steps=2", "eval.every=2", "algo.batch_size=4"},
       {"actor/dpo_loss", "actor/reward_accuracy", "timing_s/ref", "val/accuracy"}},
      {"addition_grpo.yaml", with(kRl, Args{"algo.group_size=4", "algo.kl.coef=0.01"}), with(rl, Names{"actor/kl_loss", "timing_s/ref"})},
      {"addition_ppo.yaml", with(kRl, Args{"algo.kl.target=0.05"}),
       with(rl, Names{"critic/vf_loss", "timing_s/update_critic", "timing_s/ref", "actor/reward_kl", "actor/kl_coef",
                      "timing_s/old_log_prob"})},
      {"addition_rloo.yaml", with(kRl, Args{"algo.group_size=4", "algo.loss_agg=seq-mean", "algo.clip_high=0.28"}), rl},
      {"addition_reinforce_pp.yaml", kRl, with(rl, Names{"actor/reward_kl"})},
      // An untrained model never answers right; a format reward (a digit anywhere) tells its samples apart.
      {"addition_online_dpo.yaml", with(kRl, Args{"algo.group_size=4", "reward.format=.*[0-9].*", "reward.format_weight=1"}), Names{"critic/score/mean", "batch/pairs", "actor/dpo_loss", "actor/chosen_nll", "timing_s/gen", "val/accuracy"}},
      // The asynchronous benchmark's pair, here on the plain addition data.
      {"work_sft.yaml", {"data.train=sft.jsonl", "data.val=val.jsonl", "train.steps=3", "eval.every=3", "algo.batch_size=8"},
       {"actor/sft_loss", "val/accuracy"}},
      {"work_grpo.yaml", with(kRl, Args{"algo.group_size=4", "rollout.max_new_tokens=8"}), rl},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.file));
    std::vector<std::string> validate = {"validate", config(c.file), "model.path=init"};
    validate.insert(validate.end(), c.overrides.begin(), c.overrides.end());
    auto v = test::run_cli(kCli, validate, w.path(), w.path());
    CHECK_MESSAGE(v.code == 0, v.err);
    const std::string run = std::string("r_") + c.file;
    auto r = w.run(c.file, c.overrides, run);
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const auto names = metric_names(w.path() / run);
    for (const char* m : c.metrics) CHECK_MESSAGE(names.count(m), std::string(m));
    CHECK(fs::exists(w.path() / run / "final" / "model.safetensors"));
    CHECK(fs::exists(w.path() / run / "final" / "tokenizer.json"));
  }

  // One optimizer step per batch: GRPO's update gives the old log-probs itself, with no pass of
  // their own; PPO, whose KL to the reference goes into the reward, needs them first.
  CHECK_FALSE(metric_names(w.path() / "r_addition_grpo.yaml").count("timing_s/old_log_prob"));
  CHECK(metric_names(w.path() / "r_addition_ppo.yaml").count("timing_s/old_log_prob"));

  // The reward model just trained, served by its own reward worker, scores GRPO's samples; chat
  // prompts, dynamic sampling and the overlong penalty on top.
  std::vector<std::string> args = kRl;
  args.insert(args.end(), {"algo.group_size=4", "reward.kind=model", "model.reward=r_addition_reward_model.yaml/final",
                           "placement=split", "data.prompt_format=chat", "data.system=You add numbers.",
                           "algo.dynamic_sampling=true", "algo.overlong.buffer=4", "data.max_prompt_tokens=128"});
  auto r = w.run("addition_grpo.yaml", args, "reward_model_grpo");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto rows = rows_of(w.path() / "reward_model_grpo");
  REQUIRE(rows.count(1));
  CHECK(rows.at(1).count("batch/kept_groups"));
  // Learned rewards are real numbers, not the 0/1 of the exact-match rule.
  const double score = rows.at(1).at("critic/score/mean");
  CHECK(score != 0.0);
  CHECK(score != 1.0);
  CHECK(contains(core::read_file(w.path() / "reward_model_grpo" / "log.txt"), "1 reward"));
}

TEST_CASE("synchronous_runs_repeat_the_stored_reference") {
  // tests/data/rlhf_sync_reference.json: runs of the synchronous dataflow from before the sample
  // stream existed. The stream at max_staleness 0 (the default) must give the same numbers: the
  // same prompts, seeds and engine batches, so the same samples, and the same updates.
  const auto ref = nlohmann::json::parse(core::read_file(fs::path(FLOTILLA_SOURCE_DIR) / "tests" / "data" / "rlhf_sync_reference.json"));
  test::TempDir dir;
  REQUIRE(test::run_cli(kCli, {"lm", "init", "--arch", "qwen3", "--preset", "tiny", "--vocab", "259", "--out", "init"}, dir.path(), dir.path()).code == 0);
  REQUIRE(test::run_cli(kCli, {"data", "make", "addition", "--max-digits", "2", "--n", "64", "--seed", "2", "--out", "data/train.jsonl"},
                        dir.path(), dir.path()).code == 0);
  for (const auto& [file, rows] : ref["runs"].items()) {
    CAPTURE(file);
    std::vector<std::string> args = {"run", "-q", config(file), "run.dir=" + file};
    for (const auto& o : ref["common"]) args.push_back(o.get<std::string>());
    auto r = test::run_cli(kCli, args, dir.path(), dir.path());
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const auto got = rows_of(dir.path() / file);
    REQUIRE(got.size() == rows.size());
    for (const auto& row : rows) {
      const int64_t step = row["step"].get<int64_t>();
      CAPTURE(step);
      for (const auto& [name, value] : row["metrics"].items()) {
        CAPTURE(name);
        REQUIRE(got.at(step).count(name));
        // Whitened advantages average to zero by construction: their mean is rounding (~1e-7),
        // which depends on how rows were batched, so it is held to 1e-5 absolute.
        const double scale = name == "critic/advantages/mean" ? 0.1 : 1e-3;
        CHECK(got.at(step).at(name) == doctest::Approx(value.get<double>()).epsilon(1e-4).scale(scale));
      }
    }
  }
}

TEST_CASE("split_placement_matches_colocated_and_data_parallel_actors_run") {
  Workspace w;
  // The same seed and one worker per role: a rollout that missed a weight sync would generate
  // something else at step 2 and the numbers would part. The untrained model never answers a sum,
  // so the reward is for a digit anywhere in the response: about a quarter of the samples, so the
  // groups' rewards differ and the updates are real.
  const std::vector<std::string> common = {"data.train=data/train.jsonl", "data.val=val.jsonl", "train.steps=3", "eval.every=3",
                                           "algo.batch_size=4", "algo.group_size=4", "algo.kl.coef=0.05",
                                           "algo.actor.lr=0.01", "rollout.temperature=1.0", "reward.format=.*[0-9].*",
                                           "reward.format_weight=1"};
  w.run_ok("addition_grpo.yaml", common, {}, "colocated");
  w.run_ok("addition_grpo.yaml", common, {"placement=split"}, "split");
  auto a = rows_of(w.path() / "colocated"), b = rows_of(w.path() / "split");
  for (int64_t step : {1, 2, 3}) {
    CAPTURE(step);
    for (const char* m : {"critic/score/mean", "response_length/mean", "actor/pg_loss", "actor/kl_loss"})
      CHECK_MESSAGE(a[step][m] == doctest::Approx(b[step][m]).epsilon(1e-5), std::string(m));
  }
  // Updates change the policy: by step 3 it has moved away from the reference model, by far more
  // than rounding (Adam turns a gradient of rounding noise into lr-sized steps too).
  CHECK(a[1]["actor/grad_norm"] > 0.1);
  CHECK(a[3]["actor/kl_loss"] > 0.01);

  // Two data-parallel actor ranks (gradients all-reduced) and two rollout workers, with uneven
  // chunks (5 prompts over 2 ranks).
  w.run_ok("addition_grpo.yaml", common,
           {"placement=split", "algo.batch_size=5", "workers=[{role: actor, count: 2}, {role: rollout, count: 2}, {role: ref}]"}, "dp");
  const auto rows = rows_of(w.path() / "dp");
  CHECK(rows.count(3));
}

TEST_CASE("rlhf_resume_continues_exactly_where_the_checkpoint_left_off") {
  Workspace w;
  const std::vector<std::string> args = {"data.train=data/train.jsonl", "data.val=val.jsonl", "algo.batch_size=4",
                                         "algo.group_size=4", "algo.actor.lr=0.01", "eval.every=0", "eval.at_start=false",
                                         "checkpoint.every=2"};
  w.run_ok("addition_grpo.yaml", args, {"train.steps=4"}, "full");
  w.run_ok("addition_grpo.yaml", args, {"train.steps=2"}, "half");
  CHECK(fs::exists(w.path() / "half" / "checkpoints" / "ckpt-2.json"));
  CHECK(fs::exists(w.path() / "half" / "checkpoints" / "step-2" / "actor" / "optimizer.safetensors"));
  // Written in the background (checkpoint.async, the default): resuming from it repeats the run.
  CHECK(core::read_file(w.path() / "half" / "checkpoints" / "step-2" / "actor" / "written") == "ok\n");
  const auto manifest = nlohmann::json::parse(core::read_file(w.path() / "half" / "checkpoints" / "ckpt-2.json"));
  const double trained_before = manifest.at("train_time_s").get<double>();
  CHECK(trained_before > 0);
  auto resumed = w.resume("half", {"train.steps=4"});  // extended to 4 steps
  REQUIRE_MESSAGE(resumed.code == 0, resumed.err);
  CHECK(test::summary_of(w.path() / "half")["train_time_s"].get<double>() > trained_before);  // counts on from the checkpoint
  auto a = rows_of(w.path() / "full"), b = rows_of(w.path() / "half");
  for (int64_t step : {3, 4}) {
    CAPTURE(step);
    REQUIRE(b.count(step));
    for (const char* m : {"critic/score/mean", "response_length/mean", "actor/pg_loss", "actor/grad_norm"})
      CHECK_MESSAGE(a[step][m] == doctest::Approx(b[step][m]).epsilon(1e-5), std::string(m));
  }
}

TEST_CASE("external_reward_command_errors_stop_or_score_zero_as_configured") {
  Workspace w;
  std::vector<std::string> args = kRl;
  args.insert(args.end(), {"algo.group_size=2", "reward.kind=command", "reward.command=sleep 5", "reward.timeout_s=0.3"});
  auto stop = w.run("addition_grpo.yaml", args, "stop");
  CHECK(stop.code == 1);
  CHECK(contains(stop.err, "sleep 5"));
  CHECK(contains(stop.err, "0.3"));
  args.push_back("reward.on_error=zero");
  auto zero = w.run("addition_grpo.yaml", args, "zero");
  REQUIRE_MESSAGE(zero.code == 0, zero.err);
  auto rows = rows_of(w.path() / "zero");
  CHECK(rows[2]["reward/errors"] == 16.0);  // every response of 2 steps of 4 prompts x 2 samples
  CHECK(rows[2]["critic/score/mean"] == 0.0);
  // A command that answers: its scores are the rewards.
  args.pop_back();
  core::write_file_atomically(w.path() / "score.sh", [](std::ostream& o) { o << "while read line; do echo '{\"score\": 0.25}'; done\n"; });
  args.push_back("reward.command=sh score.sh");
  auto ok = w.run("addition_grpo.yaml", args, "ok");
  REQUIRE_MESSAGE(ok.code == 0, ok.err);
  CHECK(rows_of(w.path() / "ok")[1]["critic/score/mean"] == doctest::Approx(0.25));
}

TEST_CASE("rlhf_config_errors_name_the_problem") {
  Workspace w;
  auto check = [&](std::vector<std::string> overrides, const std::string& expected) {
    std::vector<std::string> args = {"validate", config("addition_grpo.yaml"), "model.path=init", "data.train=data/train.jsonl",
                                     "data.val=val.jsonl"};
    args.insert(args.end(), overrides.begin(), overrides.end());
    test::check_config_error(kCli, args, w.path(), expected);
  };
  check({"algo.name=grpoo"}, "grpo");
  check({"reward.kind=command", "reward.command=python3 score.py | tee log"}, "'|' is shell syntax, and the command runs without a shell");
  check({"reward.kind=command", "reward.command= "}, "needs reward.command, the program to run and its arguments");
  check({"model.path=missing"}, "missing: not a model directory");
  check({"data.train=nope.jsonl"}, "nope.jsonl does not exist; make a synthetic set with `flotilla data make");
  check({"algo.group_size=1"}, "group_size must be at least 2");
  check({"reward.kind=model"}, "model.reward");
  check({"workers=[{role: critic}]"}, "does not use a 'critic' role");
  check({"workers=[{role: rollout}]"}, "placement: colocated");
  check({"data.max_prompt_tokens=5", "data.overlong_prompts=error"}, "over data.max_prompt_tokens");
  check({"data.max_prompt_tokens=5"}, "no examples left");
  check({"data.chat_template=hello"}, "{prompt}");
  check({"algo.overlong.buffer=64"}, "rollout.max_new_tokens");
  check({"data.kind=sft"}, "grpo trains on verifiable data");
  check({"async.max_staleness=1"}, "with placement: colocated one worker both generates and trains");
  check({"async.max_staleness=-2"}, "max_staleness");
  check({"async.on_update=pause", "placement=split"}, "continue, recompute, abort");
  check({"async.objective=naive"}, "decoupled, plain");
  check({"async.is_cap=0.5"}, "is_cap");
  check({"async.max_stalenes=1"}, "max_stalenes");
  check({"rollout.weights=int8"}, "float32, bfloat16");
  check({"rollout.prefill_chunk=0"}, "prefill_chunk");
  // Layouts: the degrees and the count agree, fsdp only where there is training state to shard,
  // a tensor-parallel degree the model's heads split over, lockstep generation synchronous only.
  check({"workers=[{role: actor, count: 3, parallel: {fsdp: 2}}]"}, "count 3 does not match parallel fsdp=2 (2 ranks)");
  check({"placement=split", "workers=[{role: ref, parallel: {fsdp: 2}}]"}, "the ref role trains nothing");
  check({"workers=[{role: actor, parallel: {tq: 2}}]"}, "did you mean 'tp'");
  check({"workers=[{role: actor, parallel: {tp: 3}}]"},
        "the actor role's parallel.tp 3 does not fit init: num_attention_heads (4) does not split over 3 tensor-parallel ranks");
  check({"placement=split", "async.max_staleness=1", "workers=[{role: rollout, parallel: {tp: 2}}]"},
        "a tensor-parallel rollout (parallel.tp > 1) generates synchronously");
}

TEST_CASE("sharded_training_and_tensor_parallel_generation_give_the_data_parallel_numbers") {
  Workspace w;
  // The actor sharded over 2 fsdp ranks, the rollout's one engine over 2 tensor-parallel ranks in
  // lockstep, the reference split over 2: every weight sync reshards the actor's chunks into the
  // rollout's slices. The same run with 2 data-parallel actor ranks and whole models elsewhere
  // must give the same numbers (rounding aside) at every step: one rollout replica either way, so
  // the same prompts and seeds. (The model's 259-token vocabulary does not split over 2: the
  // embedding is replicated.)
  const std::vector<std::string> common = {"data.train=data/train.jsonl", "data.val=val.jsonl", "train.steps=3", "eval.every=3",
                                           "algo.batch_size=4", "algo.group_size=4", "algo.kl.coef=0.05",
                                           "algo.actor.lr=0.01", "rollout.temperature=1.0", "reward.format=.*[0-9].*",
                                           "reward.format_weight=1", "placement=split"};
  w.run_ok("addition_grpo.yaml", common, {"workers=[{role: actor, parallel: {dp: 2}}, {role: rollout}, {role: ref}]"}, "dp");
  w.run_ok("addition_grpo.yaml", common,
           {"workers=[{role: actor, parallel: {fsdp: 2}}, {role: rollout, parallel: {tp: 2}}, {role: ref, parallel: {tp: 2}}]",
            "rollout.sync_bucket_mb=0.05"},
           "sharded");
  auto a = rows_of(w.path() / "dp"), b = rows_of(w.path() / "sharded");
  for (int64_t step : {1, 2, 3}) {
    CAPTURE(step);
    for (const char* m : {"critic/score/mean", "response_length/mean", "actor/pg_loss", "actor/kl_loss", "actor/entropy",
                          "actor/grad_norm"})
      CHECK_MESSAGE(a[step][m] == doctest::Approx(b[step][m]).epsilon(1e-4), std::string(m));
  }
  CHECK(a[3]["val/accuracy"] == b[3]["val/accuracy"]);
  CHECK(a[3]["actor/kl_loss"] > 0.01);  // the policy moved: the syncs carried real updates
  // Each tensor-parallel rollout rank pulls about half the model at each sync.
  CHECK(b[1]["sync/received_mib"] > 0);
  CHECK(b[1]["sync/received_mib"] < 1.5 * a[1]["sync/received_mib"]);
  // In buckets of 50 KiB: each rank's quarter MiB comes in several, where 32 MiB takes one per sender.
  CHECK(a[1]["sync/buckets"] <= 2);
  CHECK(b[1]["sync/buckets"] >= 2 * 5);
}

TEST_CASE("checkpoints_resume_under_another_training_layout") {
  Workspace w;
  // SFT written under fsdp 2, resumed on one process, then under tp 2 (fsdp 2 -> dp 1 -> tp 2):
  // every step's loss and the final weights are those of one uninterrupted process.
  const std::vector<std::string> args = {"data.train=sft.jsonl", "data.val=val.jsonl", "algo.batch_size=8", "eval.every=0",
                                         "eval.at_start=false", "checkpoint.every=2"};
  w.run_ok("addition_sft.yaml", args, {"train.steps=6"}, "whole");
  w.run_ok("addition_sft.yaml", args, {"train.steps=2", "workers=[{role: actor, parallel: {fsdp: 2}}]"}, "moved");
  CHECK_FALSE(fs::exists(w.path() / "moved" / "checkpoints" / "step-2" / "actor" / "shards"));  // joined into one file
  CHECK(fs::exists(w.path() / "moved" / "checkpoints" / "step-2" / "actor" / "optimizer.safetensors"));
  for (const auto& [steps, layout] : {std::pair<const char*, const char*>{"train.steps=4", "workers=[{role: actor}]"},
                                      {"train.steps=6", "workers=[{role: actor, parallel: {tp: 2}}]"}}) {
    auto r = w.resume("moved", {steps, layout});
    REQUIRE_MESSAGE(r.code == 0, r.err);
  }
  CHECK(contains(core::read_file(w.path() / "moved" / "log.txt"), "resumed with workers=[{role: actor, parallel: {tp: 2}}]"));
  auto a = rows_of(w.path() / "whole"), b = rows_of(w.path() / "moved");
  for (int64_t step = 1; step <= 6; ++step) {
    CAPTURE(step);
    REQUIRE(b.count(step));
    CHECK(a[step]["actor/sft_loss"] == doctest::Approx(b[step]["actor/sft_loss"]).epsilon(1e-5));
  }
  CHECK(a[6]["actor/sft_loss"] < a[1]["actor/sft_loss"] - 0.5);  // it trained
  const auto x = core::load_safetensors(w.path() / "whole" / "final" / "model.safetensors");
  const auto y = core::load_safetensors(w.path() / "moved" / "final" / "model.safetensors");
  REQUIRE(x.tensors.size() == y.tensors.size());
  for (const auto& [name, t] : x.tensors) {
    CAPTURE(name);
    REQUIRE(y.contains(name));
    CHECK(y.at(name).sizes() == t.sizes());
    CHECK((y.at(name) - t).abs().max().item<double>() < 1e-4);
  }
}

TEST_CASE("a_colocated_worker_reports_each_phases_peak_memory") {
  Workspace w;
  // A KV cache of 256 MiB (32768 blocks of 16 positions, 2 layers of 2 key/value heads of 16):
  // it exists only while the worker generates, so the generating phase's peak is above the
  // training phase's by about that much. Were the cache kept (or the phases' peaks not started
  // afresh), training's peak would include it.
  const std::vector<std::string> args = {"data.train=data/train.jsonl", "data.val=val.jsonl", "train.steps=2", "eval.every=0",
                                         "eval.at_start=false", "algo.batch_size=4", "algo.group_size=2",
                                         "rollout.num_blocks=32768"};
  w.run_ok("addition_grpo.yaml", args, {}, "colocated");
  auto rows = rows_of(w.path() / "colocated");
  for (int64_t step : {1, 2}) {
    CAPTURE(step);
    REQUIRE(rows[step].count("memory/generate_peak_mib"));
    REQUIRE(rows[step].count("memory/train_peak_mib"));
    CHECK(rows[step]["memory/train_peak_mib"] > 10);
#ifndef __SANITIZE_ADDRESS__  // AddressSanitizer holds freed memory in quarantine, so training's peak keeps the cache
    CHECK(rows[step]["memory/generate_peak_mib"] > rows[step]["memory/train_peak_mib"] + 128);
#endif
  }
  // Split placement: no worker both generates and trains.
  w.run_ok("addition_grpo.yaml", args, {"placement=split"}, "split");
  CHECK_FALSE(metric_names(w.path() / "split").count("memory/train_peak_mib"));
}
