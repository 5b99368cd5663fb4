// Fault tolerance with real processes: workers killed (SIGKILL) or stopped (SIGSTOP) in a running
// job are found, replaced at their addresses and rejoin while training goes on; a killed trainer
// brings the run back to its last checkpoint; the restarts a group may use are bounded. Each
// failure and rejoin is a line of RUN_DIR/faults.jsonl.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "support/cli.hpp"
#include "support/cli_checks.hpp"
#include "support/processes.hpp"
#include "support/rlhf_workspace.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {
using test::contains;
using test::wait_until;
using test::workers_of;
const std::string kCli = FLOTILLA_TEST_CLI;
const std::string kConfig = std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_ppo_distributed.yaml";

std::vector<nlohmann::json> faults(const fs::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "faults.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

int count_events(const fs::path& run, const std::string& event, const std::string& worker) {
  int n = 0;
  for (const auto& f : faults(run)) n += f["event"] == event && f["worker"] == worker;
  return n;
}

// The pid of the worker `role`/`rank` of the run in `run`.
pid_t worker_pid(const std::string& run, const std::string& role, int rank) {
  const std::string want = std::string("--role\0", 7) + role + std::string("\0--rank\0", 8) + std::to_string(rank) + std::string("\0", 1);
  for (pid_t pid : workers_of(run)) {
    try {
      if (contains(core::read_file("/proc/" + std::to_string(pid) + "/cmdline"), want)) return pid;
    } catch (...) {
    }
  }
  return 0;
}

// Kills worker `role`/`rank` of the run in `run` (SIGKILL) and waits until its replacement has
// rejoined; returns the killed pid.
pid_t kill_until_rejoined(const fs::path& run, const std::string& role, int rank) {
  const std::string worker = role + "/" + std::to_string(rank);
  const int before = count_events(run, "rejoined", worker);
  const pid_t pid = worker_pid(run.string(), role, rank);
  REQUIRE(pid > 0);
  ::kill(pid, SIGKILL);
  REQUIRE(wait_until([&] { return count_events(run, "rejoined", worker) == before + 1; }, 30));
  return pid;
}

// FLOTILLA_FAULT_INJECT for the runs started while it lives.
struct InjectFault {
  explicit InjectFault(const std::string& spec) { ::setenv("FLOTILLA_FAULT_INJECT", spec.c_str(), 1); }
  ~InjectFault() { ::unsetenv("FLOTILLA_FAULT_INJECT"); }
};

// What a run has said so far, for a failed wait: its stderr and its log.
std::string so_far(const test::CliProcess& p, const fs::path& run) {
  const fs::path log = run / "log.txt";
  return "stderr:\n" + p.err_so_far() + "\nlog.txt:\n" + (fs::exists(log) ? core::read_file(log) : std::string("(none)"));
}

size_t rows(const fs::path& run) {
  return fs::exists(run / "metrics.jsonl") ? core::read_metrics_jsonl(run / "metrics.jsonl").size() : 0;
}

// The trainers' updates logged so far (the workers' own rows aside).
size_t updates(const fs::path& run) {
  if (!fs::exists(run / "metrics.jsonl")) return 0;
  size_t n = 0;
  for (const auto& row : core::read_metrics_jsonl(run / "metrics.jsonl"))
    for (const auto& [k, v] : row.values) n += k == "losses/policy_loss";
  return n;
}

}  // namespace

TEST_CASE("killed_and_stopped_workers_are_replaced_and_rejoin_while_training_goes_on") {
  test::TempDir dir;
  const fs::path run = dir.path() / "r";
  test::CliProcess p(kCli, {"run", "-q", kConfig, "train.total_steps=100000000", "stop.mean_return=100000", "run.dir=r",
                            "fault.restart_backoff_s=0.2"},
                     dir.path(), dir.path());
  REQUIRE_MESSAGE(wait_until([&] { return rows(run) >= 2; }, 120), so_far(p, run));

  // A policy worker: the env actors' unanswered requests go to its replacement.
  const pid_t policy = kill_until_rejoined(run, "policy_worker", 0);
  const pid_t replacement = worker_pid(run.string(), "policy_worker", 0);
  CHECK(replacement > 0);
  CHECK(replacement != policy);

  // An env actor, killed mid-fragment: what it had collected is gone, the rest goes on.
  kill_until_rejoined(run, "env_actor", 1);

  // A stopped one is found by its silence (the default detection: 1.8 s of silence), killed and replaced.
  const pid_t stopped = worker_pid(run.string(), "env_actor", 0);
  const double stopped_at = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  ::kill(stopped, SIGSTOP);
  REQUIRE(wait_until([&] { return count_events(run, "rejoined", "env_actor/0") == 1; }, 30));
  ::kill(stopped, SIGKILL);  // in case the run left it (it must not)

  // Training goes on with all three replacements: more updates are logged.
  const size_t before = updates(run);
  CHECK(wait_until([&] { return updates(run) >= before + 3; }, 120));
  p.signal(SIGINT);
  auto r = p.wait(60);
  CAPTURE(r.err);
  CHECK(r.code == 130);

  const auto events = faults(run);
  REQUIRE(events.size() == 6);
  for (size_t i = 0; i < events.size(); i += 2) {
    CHECK(events[i]["event"] == "failed");
    CHECK(events[i]["action"] == "replace");
    CHECK(events[i + 1]["event"] == "rejoined");
    CHECK(events[i + 1]["worker"] == events[i]["worker"]);
    CHECK(events[i + 1]["restart_s"].get<double>() > 0.2);  // the backoff, then a start
  }
  CHECK(contains(events[0]["reason"].get<std::string>(), "worker policy_worker/0 on host"));
  CHECK(contains(events[0]["reason"].get<std::string>(), "killed by signal 9"));
  CHECK(contains(events[4]["reason"].get<std::string>(), "worker env_actor/0 on host"));
  CHECK(contains(events[4]["reason"].get<std::string>(), "sent no heartbeat for 1800 ms"));
  // Detection of the stopped one: 1.8 s of silence after its last heartbeat (one every 200 ms).
  const double detected = events[4]["time"].get<double>() - stopped_at;
  CHECK(detected > 1.5);
  CHECK(detected < 6);
  auto s = nlohmann::json::parse(core::read_file(run / "summary.json"));
  CHECK(s["fault/restarts"] == 3);
  // No fragment was taken twice, across the replacements (each carries its actor's incarnation).
  double received = 0;
  for (const auto& row : core::read_metrics_jsonl(run / "metrics.jsonl"))
    for (const auto& [k, v] : row.values) {
      if (k == "perf/duplicate_fragments") CHECK(v == 0);
      if (k == "perf/fragments_received") received = v;
    }
  CHECK(received > 0);
  CHECK(wait_until([&] { return workers_of(run.string()).empty(); }, 10));
}

TEST_CASE("a_killed_buffer_is_replaced_and_the_actors_fragments_flow_through_its_replacement") {
  test::TempDir dir;
  const fs::path run = dir.path() / "r";
  test::CliProcess p(kCli, {"run", "-q", kConfig, "train.total_steps=100000000", "stop.mean_return=100000", "run.dir=r",
                            "fault.restart_backoff_s=0.2", "workers=[{role: env_actor, count: 2}, {role: policy_worker}, {role: buffer}, {role: trainer}]"},
                     dir.path(), dir.path());
  REQUIRE_MESSAGE(wait_until([&] { return rows(run) >= 2; }, 120), so_far(p, run));
  kill_until_rejoined(run, "buffer", 0);
  const size_t before = updates(run);
  CHECK(wait_until([&] { return updates(run) >= before + 3; }, 120));  // every fragment goes through the buffer
  p.signal(SIGINT);
  CHECK(p.wait(60).code == 130);
  CHECK(wait_until([&] { return workers_of(run.string()).empty(); }, 10));
}

TEST_CASE("a_killed_trainer_brings_the_run_back_to_its_last_checkpoint_and_it_finishes") {
  test::TempDir dir;
  const fs::path run = dir.path() / "r";
  test::CliProcess p(kCli, {"run", "-q", kConfig, "train.total_steps=40000", "stop.mean_return=100000", "run.dir=r",
                            "checkpoint.every=4", "fault.restart_backoff_s=0.2"},
                     dir.path(), dir.path());
  const fs::path first = run / "checkpoints" / "ckpt-4.json";
  REQUIRE_MESSAGE(wait_until([&] { return fs::exists(first); }, 120), so_far(p, run));
  const pid_t trainer = worker_pid(run.string(), "trainer", 0);
  REQUIRE(trainer > 0);
  ::kill(trainer, SIGKILL);
  auto r = p.wait(120);
  CAPTURE(r.err);
  REQUIRE(r.code == 0);
  const std::string log = core::read_file(run / "log.txt");
  CHECK(contains(log, "worker trainer/0 on host"));
  CHECK(contains(log, "bringing the run back to its last checkpoint"));
  CHECK(contains(log, "resuming from"));
  const auto events = faults(run);
  REQUIRE(events.size() == 2);
  CHECK(events[0]["action"] == "restore");
  CHECK(events[1]["event"] == "rejoined");
  CHECK(events[1]["worker"] == "trainer/0");
  auto s = nlohmann::json::parse(core::read_file(run / "summary.json"));
  CHECK(s["exit_reason"] == "completed");
  CHECK(s["global_step"].get<double>() >= 40000);
  CHECK(s["fault/restarts"] == 1);
  CHECK(wait_until([&] { return workers_of(run.string()).empty(); }, 10));
}

TEST_CASE("a_group_that_has_used_its_restarts_stops_the_run_on_the_next_failure") {
  test::TempDir dir;
  const fs::path run = dir.path() / "r";
  test::CliProcess p(kCli, {"run", "-q", kConfig, "train.total_steps=100000000", "stop.mean_return=100000", "run.dir=r",
                            "fault.restart_backoff_s=0", "fault.groups=[{group: policy_worker, max_restarts: 1}]"},
                     dir.path(), dir.path());
  REQUIRE_MESSAGE(wait_until([&] { return rows(run) >= 1; }, 120), so_far(p, run));
  kill_until_rejoined(run, "policy_worker", 0);
  ::kill(worker_pid(run.string(), "policy_worker", 0), SIGKILL);
  auto r = p.wait(60);
  CAPTURE(r.err);
  CHECK(r.code == 1);
  CHECK(contains(r.err, "worker policy_worker/0"));
  CHECK(contains(r.err, "group policy_worker has used its 1 restarts (fault.max_restarts)"));
  CHECK(wait_until([&] { return workers_of(run.string()).empty(); }, 10));
}

TEST_CASE("fault_config_errors_name_the_key") {
  test::TempDir dir;
  test::check_config_error(kCli, {"validate", kConfig, "fault.on_worker_failure=retry"}, dir.path(), "on_worker_failure");
  test::check_config_error(kCli, {"validate", kConfig, "fault.groups=[{group: trainr}]"}, dir.path(),
                           "fault.groups: this run has no worker group 'trainr'");
  test::check_config_error(kCli, {"validate", kConfig, "distributed.heartbeat_timeout_ms=500"}, dir.path(), "fault.heartbeat_timeout_ms");
}

TEST_CASE("an_env_actor_killed_while_writing_its_checkpoint_shard_abandons_that_checkpoint_only") {
  test::TempDir dir;
  const fs::path run = dir.path() / "r";
  {
    const InjectFault fault("env_actor/1:shard.save:1");
    auto r = test::run_cli(kCli, {"run", "-q", kConfig, "train.total_steps=30000", "stop.mean_return=100000", "run.dir=r",
                                  "checkpoint.every=3", "fault.restart_backoff_s=0"},
                           dir.path(), dir.path());
    CAPTURE(r.err);
    REQUIRE(r.code == 0);
  }
  CHECK(contains(core::read_file(run / "fault_injected"), "shard.save call 1"));
  CHECK(contains(core::read_file(run / "log.txt"), "checkpoint abandoned"));
  CHECK(count_events(run, "rejoined", "env_actor/1") == 1);
  CHECK_FALSE(fs::exists(run / "checkpoints" / "ckpt-3.json"));  // the one abandoned
  CHECK_FALSE(fs::exists(run / "checkpoints" / "step-3"));
  auto verify = test::run_cli(kCli, {"checkpoint", "verify", "r"}, dir.path(), dir.path());
  CAPTURE(verify.out);
  CHECK(verify.code == 0);
  CHECK(nlohmann::json::parse(core::read_file(run / "summary.json"))["exit_reason"] == "completed");
}

namespace {
const std::vector<std::string> kGrpo = {"data.train=data/train.jsonl", "data.val=val.jsonl", "algo.batch_size=4", "algo.group_size=4",
                                        "algo.actor.lr=0.01", "eval.every=0", "eval.at_start=false", "checkpoint.every=2",
                                        "train.steps=4", "fault.restart_backoff_s=0",
                                        // kills are found by the process's exit; a long silence limit keeps a
                                        // loaded machine's slow heartbeat from counting as a second failure
                                        "fault.heartbeat_timeout_ms=20000"};
// Split placement with a reference (a KL to it), rewarded by similarity to the answer so that even
// a tiny untrained model's groups differ in reward and its updates are not zero.
const std::vector<std::string> kSplit = {"placement=split", "reward.rule=similarity", "algo.kl.coef=0.01"};

// The steps `steps` of a faulted run are the uninterrupted run's.
void check_same_steps(const fs::path& whole, const fs::path& faulted, const std::vector<int64_t>& steps = {3, 4}) {
  auto a = test::rows_of(whole), b = test::rows_of(faulted);
  for (int64_t step : steps) {
    CAPTURE(step);
    REQUIRE(b.count(step));
    for (const char* m : {"critic/score/mean", "response_length/mean", "actor/pg_loss", "actor/grad_norm"})
      CHECK_MESSAGE(a[step][m] == doctest::Approx(b[step][m]).epsilon(1e-5), std::string(m));
  }
}

// The groups each version trained on (RUN_DIR/schedule.json), in order.
std::vector<int64_t> trained_groups(const fs::path& run) {
  std::vector<int64_t> out;
  const auto schedule = nlohmann::json::parse(core::read_file(run / "schedule.json"));
  for (const auto& v : schedule["trained"])
    for (const auto& g : v["groups"]) out.push_back(g.get<int64_t>());
  return out;
}

// One failure of `worker`, replaced in place, and its return.
void check_replaced(const fs::path& run, const std::string& worker) {
  const auto events = faults(run);
  std::string listed;
  for (const auto& e : events) listed += e.dump() + "\n";
  REQUIRE_MESSAGE(events.size() == 2, listed);
  CHECK(events[0]["worker"] == worker);
  CHECK(events[0]["action"] == "replace");
  CHECK(events[1]["event"] == "rejoined");
  CHECK(events[1]["worker"] == worker);
  CHECK_FALSE(contains(core::read_file(run / "log.txt"), "resumed at"));
  CHECK(test::summary_of(run)["fault/restarts"] == 1);
}
}  // namespace

TEST_CASE("rlhf_rollout_reward_and_reference_workers_killed_mid_step_are_replaced_and_the_run_matches_an_uninterrupted_one") {
  // Synchronous: a step generates with fixed seeds, so the groups a replaced worker held, made
  // again, are the same, and every step equals the uninterrupted run's.
  test::Workspace w;
  w.run_ok("addition_grpo.yaml", kGrpo, kSplit, "whole");
  const std::vector<std::pair<std::string, std::string>> faults_at = {
      {"rollout/0:rollout.sync:3", "rollout/0"},     // during the weight sync after step 3's update
      {"rollout/0:rollout.collect:5", "rollout/0"},  // while generating
      {"reward/0:reward.score:3", "reward/0"},       // while scoring
      {"ref/0:ref.log_probs:2:after", "ref/0"},      // holding step 2's reference log-probs
  };
  for (size_t i = 0; i < faults_at.size(); ++i) {
    const auto& [spec, worker] = faults_at[i];
    CAPTURE(spec);
    const std::string name = std::string("f") + std::to_string(i);
    {
      const InjectFault fault(spec);
      w.run_ok("addition_grpo.yaml", kGrpo, kSplit, name);
    }
    const fs::path run = w.path() / name;
    CHECK(fs::exists(run / "fault_injected"));
    check_replaced(run, worker);
    check_same_steps(w.path() / "whole", run, {1, 2, 3, 4});
  }
}

TEST_CASE("rlhf_async_run_keeps_its_staleness_bound_and_trains_every_prompt_once_across_a_replacement") {
  test::Workspace w;
  const std::vector<std::string> async = {"placement=split", "reward.rule=similarity", "algo.kl.coef=0.01", "async.max_staleness=1",
                                          "train.steps=8",
                                          "workers=[{role: actor}, {role: rollout, count: 2}, {role: reward}, {role: ref}]"};
  {
    const InjectFault fault("rollout/1:rollout.collect:6");
    w.run_ok("addition_grpo.yaml", kGrpo, async, "r");
  }
  const fs::path run = w.path() / "r";
  // The rollout is replaced in place. On a loaded machine its failure can also end a call in a
  // phase that does not retry; the run then comes back to its last checkpoint (its start when it
  // has none yet), and the restarted run's rollout/1 rejoins once more (a third event). Either way the bound holds and every
  // prompt trains once.
  const auto events = faults(run);
  std::string listed;
  for (const auto& e : events) listed += e.dump() + "\n";
  CAPTURE(listed);
  const bool restarted = contains(core::read_file(run / "log.txt"), "bringing the run back to its last checkpoint");
  REQUIRE(events.size() == (restarted ? 3u : 2u));
  CHECK(events[0]["worker"] == "rollout/1");
  CHECK(events[0]["action"] == "replace");
  for (size_t i = 1; i < events.size(); ++i) {
    CHECK(events[i]["event"] == "rejoined");
    CHECK(events[i]["worker"] == "rollout/1");
  }
  // Every group admitted for the 8 steps of 4 prompts trained exactly once.
  std::vector<int64_t> groups = trained_groups(run);
  std::sort(groups.begin(), groups.end());
  std::vector<int64_t> expected(32);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(groups == expected);
  int rows = 0;
  for (const auto& [step, m] : test::rows_of(run)) {
    if (!m.count("async/staleness_max")) continue;
    ++rows;
    CHECK(m.at("async/staleness_max") <= 1);
  }
  CHECK(rows == 8);
}

TEST_CASE("rlhf_a_killed_critic_brings_the_run_back_to_its_checkpoint") {
  // The critic holds what it learned: it cannot be rebuilt in place. Its checkpoints are written
  // before the next step starts: a background save still running in the critic when it dies is
  // rightly dropped, and the run would go back to step 0 instead.
  test::Workspace w;
  std::vector<std::string> split = kSplit;
  split.push_back("checkpoint.async=false");
  {
    const InjectFault fault("critic/0:critic.values:3");  // step 3's
    w.run_ok("addition_ppo.yaml", kGrpo, split, "r");
  }
  const fs::path run = w.path() / "r";
  const auto events = faults(run);
  REQUIRE(events.size() == 2);
  CHECK(events[0]["worker"] == "critic/0");
  CHECK(events[0]["action"] == "restore");
  CHECK(contains(core::read_file(run / "log.txt"), "resumed at step 2"));
  CHECK(test::summary_of(run)["exit_reason"] == "completed");
}

TEST_CASE("rlhf_an_actor_killed_after_writing_its_checkpoint_but_before_the_manifest_comes_back_to_the_one_before") {
  test::Workspace w;
  w.run_ok("addition_grpo.yaml", kGrpo, {}, "whole");
  {
    // Colocated: one group, "colocated", holds every role. Its second save (step 4's) is written,
    // and the worker dies before the manifest: step 2's checkpoint is the last.
    const InjectFault fault("colocated/0:actor.save:2:after");
    w.run_ok("addition_grpo.yaml", kGrpo, {}, "faulted");
  }
  const fs::path run = w.path() / "faulted";
  CHECK(contains(core::read_file(run / "fault_injected"), "actor.save call 2 after"));
  CHECK(contains(core::read_file(run / "log.txt"), "resumed at step 2"));
  check_same_steps(w.path() / "whole", run);
  auto verify = test::run_cli(FLOTILLA_TEST_CLI, {"checkpoint", "verify", "faulted"}, w.path(), w.path());
  CAPTURE(verify.out);
  CHECK(verify.code == 0);
}
