// Runs through a real Slurm: scripts/cluster brings up slurmctld and two slurmd nodes, each a
// network namespace with an address of its own, for the whole file; every test submits with
// `launcher.kind=slurm` as a user on a login node would. The cluster is torn down at the end, the
// tests failing or not.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "controller/cluster/launcher.hpp"
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
const std::string kCli = FLOTILLA_TEST_CLI;
const std::string kPpo = test::config_path("cartpole_ppo_distributed.yaml");

// The test cluster, up while a test holds one (scripts/cluster up ... down).
struct SlurmCluster {
  test::TempDir dir;
  std::string script = std::string(FLOTILLA_SOURCE_DIR) + "/scripts/cluster";
  SlurmCluster() {
    ::setenv("FLOTILLA_CLUSTER_DIR", (dir.path() / "cluster").c_str(), 1);
    // Four CPUs a node (they share this machine's): room for the controller and the workers.
    const int code = std::system((script + " up --nodes 2 --cpus 4 > " + (dir.path() / "up.log").string() + " 2>&1").c_str());
    REQUIRE_MESSAGE(code == 0, "scripts/cluster up failed: " << core::read_file(dir.path() / "up.log"));
    ::setenv("SLURM_CONF", (dir.path() / "cluster" / "slurm.conf").c_str(), 1);
  }
  ~SlurmCluster() {
    std::system((script + " down > /dev/null 2>&1").c_str());
    ::unsetenv("SLURM_CONF");
  }
};

// Worker processes (not the srun that runs each) of the run whose names live under `dir`.
std::vector<pid_t> workers_in(const fs::path& dir) {
  std::vector<pid_t> out;
  for (pid_t pid : test::workers_of((dir / "names").string()))
    if (core::read_file("/proc/" + std::to_string(pid) + "/cmdline").rfind(kCli, 0) == 0) out.push_back(pid);
  return out;
}

// The addresses the run's workers answer at, as the controller logged them ("workers up: ...").
std::set<std::string> hosts_of(const fs::path& run) {
  std::set<std::string> hosts;
  const std::string log = core::read_file(run / "log.txt");
  for (size_t at = log.find("tcp://"); at != std::string::npos; at = log.find("tcp://", at + 1))
    hosts.insert(log.substr(at + 6, log.find(':', at + 6) - at - 6));
  return hosts;
}

nlohmann::json summary(const fs::path& run) { return nlohmann::json::parse(core::read_file(run / "summary.json")); }

}  // namespace

TEST_CASE("distributed_ppo_solves_cartpole_through_slurm_on_two_nodes_as_it_does_locally") {
  SlurmCluster cluster;
  test::TempDir dir;
  const std::vector<std::string> common = {"workers=[{role: env_actor, count: 2}, {role: policy_worker, count: 1}, {role: trainer, count: 1}]"};
  auto args = [&](const std::string& run, std::vector<std::string> extra) {
    std::vector<std::string> a = {"run", kPpo, "run.dir=" + run};
    a.insert(a.end(), common.begin(), common.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  auto local = test::run_cli(kCli, args("local", {}), dir.path(), dir.path());
  REQUIRE_MESSAGE(local.code == 0, local.err);
  auto slurm = test::run_cli(kCli, args("slurm", {"launcher.kind=slurm", "launcher.nodes=2"}), dir.path(), dir.path());
  REQUIRE_MESSAGE(slurm.code == 0, slurm.err);
  CHECK(contains(slurm.err, "submitted Slurm job"));
  CHECK(contains(slurm.err, "workers running"));  // the job's log, followed to the terminal
  const fs::path run = dir.path() / "slurm";
  CHECK(summary(run)["exit_reason"] == "stop_condition");
  CHECK(summary(dir.path() / "local")["exit_reason"] == "stop_condition");
  // The workers ran on both nodes, each bound to its node's address, each with its log here.
  CHECK(hosts_of(run) == std::set<std::string>{"10.77.0.11", "10.77.0.12"});
  for (const char* w : {"env_actor-0", "env_actor-1", "policy_worker-0", "trainer-0"}) CHECK(fs::exists(run / "workers" / (std::string(w) + ".log")));
  const auto info = nlohmann::json::parse(core::read_file(run / "run.json"));
  CHECK(info["host"] == "node1");  // the controller, on the allocation's first node
  // The same environment steps to solve it, within the noise of free-running actors.
  const double here = summary(dir.path() / "local")["last_step"].get<double>(), there = summary(run)["last_step"].get<double>();
  CHECK(there < 3 * here);
  CHECK(here < 3 * there);
  CHECK(test::run_cli(kCli, {"status", run.string()}, dir.path()).out.find("ended: stop_condition") != std::string::npos);
}

TEST_CASE("a_split_rlhf_job_runs_through_slurm") {
  SlurmCluster cluster;
  test::Workspace w;
  auto r = w.run("addition_grpo.yaml",
                 {"data.train=data/train.jsonl", "data.val=val.jsonl", "train.steps=2", "eval.every=2", "algo.batch_size=4",
                  "algo.group_size=4", "placement=split", "launcher.kind=slurm", "launcher.nodes=2",
                  "workers=[{role: actor, parallel: {dp: 2}}, {role: rollout}, {role: reward}]",
                  "launcher.groups=[{group: actor, placement: spread}, {group: rollout, cpus: 2}]"},
                 "rlhf");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto rows = test::rows_of(w.path() / "rlhf");
  REQUIRE(rows.count(2));
  CHECK(rows.at(2).count("val/accuracy"));
  CHECK(rows.at(2).count("sync/received_mib"));
  CHECK(hosts_of(w.path() / "rlhf").size() == 2);
  CHECK(fs::exists(w.path() / "rlhf" / "final" / "model.safetensors"));
}

TEST_CASE("a_killed_policy_worker_under_slurm_is_replaced_by_a_job_step_on_its_node") {
  SlurmCluster cluster;
  test::TempDir dir;
  const fs::path r = dir.path() / "r";
  test::CliProcess run(kCli, {"run", kPpo, "run.dir=r", "launcher.kind=slurm", "launcher.nodes=2", "stop.mean_return=100000",
                              "train.total_steps=60000", "fault.restart_backoff_s=0.2"},
                       dir.path(), dir.path());
  REQUIRE(test::wait_until([&] { return fs::exists(r / "log.txt") && contains(core::read_file(r / "log.txt"), "workers running"); }, 60));
  pid_t policy = 0;
  for (pid_t pid : workers_in(r))
    if (contains(core::read_file("/proc/" + std::to_string(pid) + "/cmdline"), std::string("--role\0policy_worker", 20))) policy = pid;
  REQUIRE(policy > 0);
  ::kill(policy, SIGKILL);
  const test::CliResult done = run.wait(120);
  CAPTURE(done.err);
  CHECK(done.code == 0);
  const std::string faults = core::read_file(r / "faults.jsonl");
  CHECK(contains(faults, "worker policy_worker/0 on node node"));
  CHECK(contains(faults, "\"event\":\"rejoined\""));
  CHECK(nlohmann::json::parse(core::read_file(r / "summary.json"))["global_step"].get<double>() >= 60000);
  CHECK(test::wait_until([&] { return workers_in(r).empty(); }, 30));
}

TEST_CASE("with_fault_policy_stop_a_killed_worker_under_slurm_is_reported_by_name_and_node_and_ends_the_job") {
  SlurmCluster cluster;
  test::TempDir dir;
  test::CliProcess run(kCli, {"run", kPpo, "run.dir=r", "launcher.kind=slurm", "launcher.nodes=2", "stop.mean_return=100000",
                              "train.total_steps=1000000000", "fault.on_worker_failure=stop"},
                       dir.path(), dir.path());
  const bool up = test::wait_until([&] { return fs::exists(dir.path() / "r" / "log.txt") && contains(core::read_file(dir.path() / "r" / "log.txt"), "workers running"); }, 60);
  REQUIRE_MESSAGE(up, "no 'workers running' in the log; the job's output: "
                          << (fs::exists(dir.path() / "r" / "slurm" / "job.out") ? core::read_file(dir.path() / "r" / "slurm" / "job.out") : "(none)"));
  pid_t trainer = 0;
  for (pid_t pid : workers_in(dir.path() / "r"))
    if (contains(core::read_file("/proc/" + std::to_string(pid) + "/cmdline"), std::string("--role\0trainer", 14))) trainer = pid;
  REQUIRE(trainer > 0);
  ::kill(trainer, SIGKILL);
  const test::CliResult r = run.wait(60);
  CHECK(r.code == 1);
  CHECK(contains(r.err, "worker trainer/0 on node node"));
  CHECK(contains(r.err, "killed by signal 9"));
  const std::string job = nlohmann::json::parse(core::read_file(dir.path() / "r" / "run.json"))["slurm_job"].get<std::string>();
  CHECK(test::wait_until([&] { return test::run_cli("/usr/bin/squeue", {"--noheader", "--jobs=" + job}, dir.path()).out.empty(); }, 30));
  CHECK(test::wait_until([&] { return workers_in(dir.path() / "r").empty(); }, 30));
}

TEST_CASE("a_detached_slurm_run_is_followed_with_status_and_stopped_with_stop") {
  SlurmCluster cluster;
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"run", kPpo, "run.dir=d", "launcher.kind=slurm", "launcher.nodes=2", "stop.mean_return=100000", "train.total_steps=1000000000",
                                "checkpoint.every=5", "--detach"},
                         dir.path(), dir.path());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(contains(r.err, "flotilla status"));
  const fs::path run = dir.path() / "d";
  REQUIRE(test::wait_until([&] { return fs::exists(run / "log.txt") && contains(core::read_file(run / "log.txt"), "workers running"); }, 60));
  CHECK(contains(test::run_cli(kCli, {"status", run.string()}, dir.path()).out, "RUNNING"));
  auto stop = test::run_cli(kCli, {"stop", run.string()}, dir.path());
  CHECK_MESSAGE(stop.code == 0, stop.err);
  // The controller stops after its step, writes its final checkpoint and summary; the job ends.
  REQUIRE(test::wait_until([&] { return fs::exists(run / "summary.json"); }, 60));
  CHECK(summary(run)["exit_reason"] == "interrupted");
  CHECK(test::wait_until([&] { return contains(test::run_cli(kCli, {"status", run.string()}, dir.path()).out, "ended"); }, 30));
}

TEST_CASE("slurm_launcher_config_errors_name_the_problem") {
  test::TempDir dir;
  test::check_config_error(kCli, {"validate", kPpo, "launcher.kind=slurn"}, dir.path(), "slurm");
  test::check_config_error(kCli, {"validate", kPpo, "launcher.nodes=0"}, dir.path(), "launcher.nodes");
  test::check_config_error(kCli, {"validate", kPpo, "launcher.groups=[{group: trainer, placement: packed}]"}, dir.path(), "pack");
  test::check_config_error(kCli, {"validate", kPpo, "launcher.groups=[{cpus: 2}]"}, dir.path(), "group");
}

TEST_CASE("slurm_placement_spreads_or_packs_groups_and_steps_carry_their_resources") {
  controller::LauncherConfig c;
  c.kind = "slurm";
  c.groups["trainer"] = {.cpus = 4, .gpus = 2, .mem_mb = 8000, .placement = "pack"};
  const std::vector<std::string> nodes = {"a", "b", "c"};
  const auto at = controller::slurm::place(c, {{"env_actor", 4}, {"trainer", 2}, {"policy_worker", 1}}, nodes);
  CHECK(at.at("env_actor") == std::vector<std::string>{"a", "b", "c", "a"});  // spread, round-robin
  CHECK(at.at("trainer") == std::vector<std::string>{"b", "b"});              // packed on the next node
  CHECK(at.at("policy_worker") == std::vector<std::string>{"c"});             // spread goes on from there
  const core::ProcessSpec step = controller::slurm::worker_step(c, "trainer", "b", "/run/workers/trainer-0.log",
                                                                {"/bin/flotilla", {"worker", "--role", "trainer"}, "worker trainer/0"});
  CHECK(step.program == "srun");
  for (const char* a : {"--nodes=1", "--ntasks=1", "--nodelist=b", "--cpus-per-task=4", "--gpus-per-task=2", "--mem=8000M",
                        "--output=/run/workers/trainer-0.log"})
    CHECK_MESSAGE(std::find(step.args.begin(), step.args.end(), a) != step.args.end(), a);
  // The worker's own command comes last, whole.
  REQUIRE(step.args.size() >= 4);
  CHECK(std::vector<std::string>(step.args.end() - 4, step.args.end()) == std::vector<std::string>{"/bin/flotilla", "worker", "--role", "trainer"});
  CHECK(std::find(step.args.begin(), step.args.end(), "--gpus-per-task=2") < std::find(step.args.begin(), step.args.end(), "/bin/flotilla"));
}
