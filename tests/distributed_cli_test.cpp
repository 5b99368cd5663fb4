// Distributed PPO from the command line: a short end-to-end job, a killed worker, Ctrl-C, and a
// killed controller; no worker process may be left behind in any of them. And which trainer rank
// sends each policy worker its parameters.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <set>

#include "actors/rl/common.hpp"
#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "support/cli.hpp"
#include "support/processes.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {
using test::contains;
using test::wait_until;
using test::workers_of;
const std::string kCli = FLOTILLA_TEST_CLI;
const std::string kConfig = std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_ppo_distributed.yaml";

}  // namespace

TEST_CASE("distributed_ppo_runs_a_short_job_end_to_end") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"run", "-q", kConfig, "train.total_steps=6000", "stop.mean_return=100000", "run.dir=r"},
                         dir.path(), dir.path());
  REQUIRE(r.code == 0);
  auto s = nlohmann::json::parse(core::read_file(dir.path() / "r" / "summary.json"));
  CHECK(s["exit_reason"] == "completed");
  CHECK(s["global_step"].get<double>() >= 6000);
  std::set<std::string> names;
  for (const auto& row : core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl"))
    for (const auto& [k, v] : row.values) names.insert(k);
  for (const char* m : {"charts/episodic_return", "losses/policy_loss", "losses/value_loss", "perf/policy_lag", "perf/sps",
                        "perf/actor_wait_share", "timing_s/update", "workers/env_actor/1/env_steps"})
    CHECK_MESSAGE(names.count(m), std::string(m));
  CHECK(workers_of((dir.path() / "r").string()).empty());
  // The run directory and its name service are the owner's alone.
  CHECK(fs::status(dir.path() / "r").permissions() == fs::perms::owner_all);
  CHECK(fs::status(dir.path() / "r" / "names").permissions() == fs::perms::owner_all);
}

TEST_CASE("distributed_ppo_runs_inline_and_over_ipc") {
  test::TempDir dir;
  // Inline: actors run the policy themselves; no policy worker.
  auto inline_run = test::run_cli(kCli, {"run", "-q", kConfig, "distributed.inline_policy=true",
                                         "workers=[{role: env_actor, count: 2}, {role: trainer, count: 1}]",
                                         "train.total_steps=4000", "stop.mean_return=100000", "run.dir=a"},
                                  dir.path(), dir.path());
  CHECK(inline_run.code == 0);
  CHECK(workers_of((dir.path() / "a").string()).empty());
  // IPC sockets in the run directory instead of TCP.
  auto ipc = test::run_cli(kCli, {"run", "-q", kConfig, "distributed.transport=ipc", "train.total_steps=4000",
                                  "stop.mean_return=100000", "run.dir=b"},
                           dir.path(), dir.path());
  CHECK(ipc.code == 0);
  bool sockets = false;
  for (const auto& e : fs::directory_iterator(dir.path() / "b" / "sockets")) sockets |= e.is_socket();
  CHECK(sockets);
  // An env ring of two batches per actor.
  auto ring = test::run_cli(kCli, {"run", "-q", kConfig, "distributed.env_ring=2", "env.num_envs=4", "train.total_steps=4000",
                                   "stop.mean_return=100000", "run.dir=c"},
                            dir.path(), dir.path());
  CHECK(ring.code == 0);
  auto rows = core::read_metrics_jsonl(dir.path() / "c" / "metrics.jsonl");
  double actor_steps = 0;
  for (const auto& row : rows)
    for (const auto& [k, v] : row.values)
      if (k == "workers/env_actor/0/env_steps") actor_steps = v;
  CHECK(actor_steps == 2 * 4 * 64);  // a fragment: 2 batches x 4 envs x 64 steps
  auto both = test::run_cli(kCli, {"validate", kConfig, "distributed.inline_policy=true"}, dir.path());
  CHECK(both.code == 2);
  CHECK(contains(both.err, "not used with distributed.inline_policy"));
}

TEST_CASE("each_parameter_subscriber_reads_one_trainer_and_the_trainers_share_them") {
  // The reshard plan from trainers (each holding the whole vector) to subscribers (each needing
  // it): one source per subscriber, the sending spread evenly.
  for (const auto& [trainers, subscribers] : {std::pair{1, 3}, {2, 2}, {2, 5}, {3, 2}, {4, 16}}) {
    CAPTURE(trainers);
    CAPTURE(subscribers);
    std::vector<int> served(static_cast<size_t>(trainers));
    for (int s = 0; s < subscribers; ++s) {
      const int src = actors::rl::parameter_source(4242, trainers, subscribers, s);
      REQUIRE(src >= 0);
      REQUIRE(src < trainers);
      ++served[static_cast<size_t>(src)];
    }
    const auto [least, most] = std::minmax_element(served.begin(), served.end());
    CHECK(*most - *least <= 1);
  }
}

TEST_CASE("distributed_ppo_trains_with_two_data_parallel_trainers") {
  test::TempDir dir;
  // Two policy workers: each reads the parameters of its own trainer rank.
  auto r = test::run_cli(kCli, {"run", "-q", kConfig,
                                "workers=[{role: env_actor, count: 2}, {role: policy_worker, count: 2}, {role: trainer, count: 2}]",
                                "train.total_steps=4000", "stop.mean_return=100000", "run.dir=r"},
                         dir.path(), dir.path());
  CHECK_MESSAGE(r.code == 0, r.err);
  CHECK_FALSE(contains(r.err, "error"));
  CHECK(core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl").size() >= 1);
  CHECK(workers_of((dir.path() / "r").string()).empty());
  // Three actors on two trainers: rank 0 takes two fragments per update, rank 1 one, and both
  // must still agree on when the run is done.
  auto uneven = test::run_cli(kCli, {"run", "-q", kConfig,
                                     "workers=[{role: env_actor, count: 3}, {role: policy_worker, count: 1}, {role: trainer, count: 2}]",
                                     "train.total_steps=6000", "stop.mean_return=100000", "run.dir=u"},
                              dir.path(), dir.path());
  CHECK_MESSAGE(uneven.code == 0, uneven.err);
  auto s = nlohmann::json::parse(core::read_file(dir.path() / "u" / "summary.json"));
  CHECK(s["exit_reason"] == "completed");
  CHECK(s["global_step"].get<double>() >= 6000);
  auto more = test::run_cli(kCli, {"validate", kConfig,
                                   "workers=[{role: env_actor, count: 1}, {role: policy_worker, count: 1}, {role: trainer, count: 2}]"},
                            dir.path());
  CHECK(more.code == 2);
  CHECK(contains(more.err, "more trainers than env actors"));
}

TEST_CASE("distributed_ppo_runs_through_a_fifo_buffer") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"run", "-q", kConfig,
                                "workers=[{role: env_actor, count: 2}, {role: policy_worker, count: 1}, {role: trainer, count: 1}, "
                                "{role: buffer, count: 1}]",
                                "train.total_steps=8000", "stop.mean_return=100000", "run.dir=r"},
                         dir.path(), dir.path());
  REQUIRE(r.code == 0);
  double forwarded = 0;
  for (const auto& row : core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl"))
    for (const auto& [k, v] : row.values)
      if (k == "workers/buffer/0/forwarded") forwarded = std::max(forwarded, v);
  CHECK(forwarded >= 1);  // fragments went through the buffer to the trainer
  CHECK(workers_of((dir.path() / "r").string()).empty());
}

TEST_CASE("impala_runs_a_short_job_and_logs_the_policy_lag") {
  test::TempDir dir;
  const std::string impala = std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_impala.yaml";
  auto r = test::run_cli(kCli, {"run", "-q", impala, "train.total_steps=5000", "stop.mean_return=100000", "run.dir=r"},
                         dir.path(), dir.path());
  REQUIRE(r.code == 0);
  std::set<std::string> names;
  for (const auto& row : core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl"))
    for (const auto& [k, v] : row.values) names.insert(k);
  for (const char* m : {"perf/policy_lag", "losses/policy_loss", "losses/mean_importance_ratio", "charts/episodic_return"})
    CHECK_MESSAGE(names.count(m), std::string(m));
  // A replay buffer feeds IMPALA old fragments again; PPO refuses one.
  auto replay = test::run_cli(kCli, {"run", "-q", impala,
                                     "workers=[{role: env_actor, count: 2}, {role: policy_worker, count: 1}, {role: trainer, count: 1}, "
                                     "{role: buffer, count: 1}]",
                                     "distributed.buffer_mode=replay", "train.total_steps=5000", "stop.mean_return=100000",
                                     "run.dir=replay"},
                              dir.path(), dir.path());
  CHECK(replay.code == 0);
  auto ppo_replay = test::run_cli(kCli, {"validate", kConfig, "distributed.buffer_mode=replay"}, dir.path());
  CHECK(ppo_replay.code == 2);
  CHECK(contains(ppo_replay.err, "suits off-policy algorithms"));
  // IMPALA needs distributed actors: without workers the config is refused before running.
  auto single = test::run_cli(kCli, {"validate", impala, "workers=null"}, dir.path());
  CHECK(single.code == 2);
  CHECK(contains(single.err, "trains on fragments from distributed actors"));
}

TEST_CASE("with_fault_policy_stop_a_killed_worker_fails_the_run_naming_it_and_leaves_no_workers") {
  test::TempDir dir;
  const std::string run = (dir.path() / "r").string();
  test::CliProcess p(kCli, {"run", "-q", kConfig, "train.total_steps=100000000", "stop.mean_return=100000", "run.dir=r",
                            "fault.on_worker_failure=stop"},
                     dir.path(), dir.path());
  REQUIRE(wait_until([&] { return workers_of(run).size() == 4; }, 60));
  REQUIRE(test::kill_worker(run, "policy_worker"));
  auto r = p.wait(60);
  CAPTURE(r.err);
  CHECK(r.code == 1);
  CHECK(contains(r.err, "worker policy_worker/0"));
  CHECK(contains(r.err, "killed by signal 9"));
  CHECK(wait_until([&] { return workers_of(run).empty(); }, 10));
}

TEST_CASE("a_stopped_worker_is_found_by_its_silence_and_named_with_its_host") {
  // SIGSTOP: the process lives but its heartbeats stop. With a 1.5 s timeout the run fails within
  // a few seconds, naming the worker, its host and the silence, and leaves no worker behind.
  test::TempDir dir;
  const std::string run = (dir.path() / "r").string();
  test::CliProcess p(kCli, {"run", "-q", kConfig, "train.total_steps=100000000", "stop.mean_return=100000", "run.dir=r",
                            "fault.heartbeat_timeout_ms=1500", "fault.on_worker_failure=stop"},
                     dir.path(), dir.path());
  const fs::path log = dir.path() / "r" / "log.txt";
  REQUIRE(wait_until([&] { return fs::exists(log) && contains(core::read_file(log), "workers running"); }, 60));
  pid_t trainer = 0;
  for (pid_t pid : workers_of(run))
    if (contains(core::read_file("/proc/" + std::to_string(pid) + "/cmdline"), std::string("--role\0trainer", 14))) trainer = pid;
  REQUIRE(trainer > 0);
  const auto stopped = std::chrono::steady_clock::now();
  ::kill(trainer, SIGSTOP);
  auto r = p.wait(60);
  const double detected = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  ::kill(trainer, SIGKILL);  // in case the run left it (it must not)
  CAPTURE(r.err);
  CHECK(r.code == 1);
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  CHECK(contains(r.err, "worker trainer/0 on host " + std::string(host)));
  CHECK(contains(r.err, "sent no heartbeat for 1500 ms"));
  CHECK(detected < 15);  // 1.5 s of silence, then the run's shutdown
  CHECK(wait_until([&] { return workers_of(run).empty(); }, 10));
}

TEST_CASE("distributed_ctrl_c_stops_every_worker") {
  test::TempDir dir;
  const std::string run = (dir.path() / "r").string();
  test::CliProcess p(kCli, {"run", "-q", kConfig, "train.total_steps=100000000", "stop.mean_return=100000", "run.dir=r"},
                     dir.path(), dir.path());
  REQUIRE(wait_until([&] { return fs::exists(dir.path() / "r" / "metrics.jsonl"); }, 60));
  p.signal(SIGINT);
  auto r = p.wait(60);
  CHECK(r.code == 130);
  auto s = nlohmann::json::parse(core::read_file(dir.path() / "r" / "summary.json"));
  CHECK(s["exit_reason"] == "interrupted");
  CHECK(wait_until([&] { return workers_of(run).empty(); }, 10));
}

TEST_CASE("ctrl_c_from_a_terminal_reaches_the_workers_too_and_the_run_still_stops_cleanly") {
  // A terminal's Ctrl-C goes to the whole process group: the workers ignore it and the controller
  // stops them after its step.
  test::TempDir dir;
  const std::string run = (dir.path() / "r").string();
  test::CliProcess p("/usr/bin/setsid", {kCli, "run", "-q", kConfig, "train.total_steps=100000000", "stop.mean_return=100000", "run.dir=r"},
                     dir.path(), dir.path());
  const fs::path log = dir.path() / "r" / "log.txt";
  REQUIRE(wait_until([&] { return fs::exists(log) && contains(core::read_file(log), "workers running"); }, 60));
  p.signal_group(SIGINT);
  auto r = p.wait(60);
  CAPTURE(r.err);
  CHECK(r.code == 130);
  CHECK(nlohmann::json::parse(core::read_file(dir.path() / "r" / "summary.json"))["exit_reason"] == "interrupted");
  CHECK(wait_until([&] { return workers_of(run).empty(); }, 10));
}

TEST_CASE("workers_exit_when_the_controller_is_killed") {
  test::TempDir dir;
  const std::string run = (dir.path() / "r").string();
  test::CliProcess p(kCli, {"run", "-q", kConfig, "train.total_steps=100000000", "stop.mean_return=100000", "run.dir=r"},
                     dir.path(), dir.path());
  REQUIRE(wait_until([&] { return workers_of(run).size() == 4; }, 60));
  p.signal(SIGKILL);
  p.wait(10);
  const bool gone = wait_until([&] { return workers_of(run).empty(); }, 10);
  std::string left;
  for (pid_t pid : workers_of(run)) left += core::read_file("/proc/" + std::to_string(pid) + "/stat") + "\n";
  CAPTURE(left);
  CHECK(gone);
}

TEST_CASE("distributed_config_errors_stop_before_any_worker_starts") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"validate", kConfig, "workers=[{role: env_actor, count: 1}]"}, dir.path());
  CHECK(r.code == 2);
  CHECK(contains(r.err, "'policy_worker' is missing"));
  auto bad_role = test::run_cli(kCli, {"validate", kConfig, "workers=[{role: env_actr, count: 1}]"}, dir.path());
  CHECK(bad_role.code == 2);
  CHECK(contains(bad_role.err, "did you mean 'env_actor'?"));
  auto norm = test::run_cli(kCli, {"validate", kConfig, "normalize.obs=true"}, dir.path());
  CHECK(norm.code == 2);
  CHECK(contains(norm.err, "not available in distributed runs yet"));
}

namespace {
// The rows a run logged, without wall-clock figures and the workers' own rows.
std::vector<std::pair<int64_t, core::Scalars>> deterministic_rows(const fs::path& run) {
  std::vector<std::pair<int64_t, core::Scalars>> out;
  for (const auto& row : core::read_metrics_jsonl(run / "metrics.jsonl")) {
    core::Scalars kept;
    for (const auto& [k, v] : row.values)
      if (k.rfind("perf/", 0) != 0 && k.rfind("timing_s/", 0) != 0 && k.rfind("workers/", 0) != 0) kept.emplace_back(k, v);
    if (!kept.empty()) out.emplace_back(row.step, kept);
  }
  return out;
}
}  // namespace

TEST_CASE("distributed_resume_is_identical_to_an_uninterrupted_run_when_deterministic") {
  test::TempDir dir;
  const std::vector<std::string> args = {"-q", kConfig, "deterministic=true", "env.num_envs=4", "train.num_steps=32",
                                         "train.total_steps=6144", "stop.mean_return=100000", "checkpoint.every=4"};
  auto with = [&](std::vector<std::string> a, const std::string& extra) {
    a.insert(a.begin(), "run");
    a.push_back(extra);
    return a;
  };
  REQUIRE(test::run_cli(kCli, with(args, "run.dir=whole"), dir.path(), dir.path()).code == 0);
  const auto whole = deterministic_rows(dir.path() / "whole");
  REQUIRE(whole.size() == 24);  // 6144 steps of 2 actors x 4 envs x 32 steps
  {
    // Ctrl-C after a few rows: the trainers park, every worker writes its shard, the run stops.
    test::CliProcess p(kCli, with(args, "run.dir=parts"), dir.path(), dir.path());
    REQUIRE(wait_until([&] { return fs::exists(dir.path() / "parts" / "metrics.jsonl") && deterministic_rows(dir.path() / "parts").size() >= 5; }, 120));
    p.signal(SIGINT);
    CHECK(p.wait(60).code == 130);
  }
  const size_t stopped = deterministic_rows(dir.path() / "parts").size();
  CHECK(stopped < whole.size());
  auto manifest = nlohmann::json::parse(core::read_file(dir.path() / "parts" / "checkpoints" / ("ckpt-" + std::to_string(stopped) + ".json")));
  CHECK(manifest["dir"] == "checkpoints/step-" + std::to_string(stopped));
  for (const char* shard : {"trainer-0", "env_actor-0", "env_actor-1"})
    CHECK(fs::exists(dir.path() / "parts" / "checkpoints" / ("step-" + std::to_string(stopped)) / (std::string(shard) + ".safetensors")));
  auto resumed = test::run_cli(kCli, {"resume", "-q", "parts"}, dir.path(), dir.path());
  REQUIRE(resumed.code == 0);
  CHECK(contains(core::read_file(dir.path() / "parts" / "log.txt"), "resuming from"));
  const auto parts = deterministic_rows(dir.path() / "parts");
  REQUIRE(parts.size() == whole.size());
  for (size_t i = 0; i < whole.size(); ++i) {
    CAPTURE(i);
    CHECK(parts[i].first == whole[i].first);
    CHECK(parts[i].second == whole[i].second);
  }
  // The checkpoints kept (checkpoint.keep defaults to 3) and what eval makes of the newest.
  auto eval = test::run_cli(kCli, {"eval", "parts", "--episodes", "2", "--json"}, dir.path(), dir.path());
  CHECK(eval.code == 0);
  CHECK(nlohmann::json::parse(eval.out)["episodes"] == 2);
}
