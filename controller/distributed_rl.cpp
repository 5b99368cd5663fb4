// The distributed RL program: `program: rl` with a `workers:` list. The controller starts env
// actors, policy workers and a trainer as processes, wires them through the name service, and
// turns the metrics they push into the run's rows and its stop condition.
#include <spdlog/spdlog.h>

#include <chrono>
#include <deque>
#include <map>

#include "algorithms/algorithm.hpp"
#include "controller/cluster.hpp"
#include "controller/episodes.hpp"
#include "controller/rl_program.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/registry.hpp"
#include "models/policy.hpp"

namespace flotilla::controller {
namespace {

const std::vector<std::string> kRoles = {"env_actor", "policy_worker", "trainer", "buffer"};

class DistributedRl final : public Program {
 public:
  DistributedRl(core::ConfigView root, const Experiment& e) : experiment_(e) {
    for (auto w : root.list("workers")) {
      WorkerSpec spec{w.choice("role", "env_actor", kRoles), w.get<int>("count", 1, core::in_range(1, 1024))};
      w.get<int>("threads", 1, core::in_range(1, 256));  // libtorch threads in each of these workers
      w.choice("placement", "local", {"local"});          // where they run; clusters come with Slurm support
      counts_[spec.role] += spec.count;
      specs_.push_back(spec);
    }
    core::ConfigView d = root.section("distributed");
    inline_policy_ = d.get<bool>("inline_policy", false);
    for (const auto& r : kRoles) {
      if (r == "policy_worker" && inline_policy_) {
        if (counts_.count(r))
          root.fail("workers", "policy_worker workers are not used with distributed.inline_policy: true (actors act themselves)");
        continue;
      }
      if (!counts_.count(r) && r != "buffer")
        root.fail("workers", "a distributed RL run needs env_actor, policy_worker and trainer workers; '" + r + "' is missing");
    }
    // Every section is read here as well, so a bad key stops the run before any process starts.
    core::ConfigView env = root.section("env");
    const envs::EnvSpec spec = envs::env_spec(env);  // with its params (a scenario's sizes)
    env.get<int64_t>("num_envs", 8, core::at_least<int64_t>(1));
    env.get<int>("threads", 1, core::in_range(1, 256));
    env.choice("backend", "cpu", {"cpu", "cuda"});
    env.get<int>("max_episode_steps", 0, core::at_least(0));
    env.section("params");
    std::unique_ptr<models::Policy> probe = models::make_policy(root, spec);
    const bool on_policy = algorithms::make_algorithm(root.section("algo"), *probe)->takes_gae_batches();
    if (counts_["trainer"] > 1 && root.section("algo").has("target_kl") &&
        root.section("algo").get<double>("target_kl", 0.0) > 0)
      root.section("algo").fail("target_kl", "an early stop on KL would let data-parallel trainers take different numbers of "
                                             "steps; set it to 0 with more than one trainer");
    if (counts_["trainer"] > counts_["env_actor"])
      root.fail("workers", "more trainers than env actors: every trainer needs at least one actor's fragments");
    core::ConfigView train = root.section("train");
    total_steps_ = train.get<int64_t>("total_steps", 500000, core::at_least<int64_t>(1));
    train.get<int64_t>("num_steps", 128, core::at_least<int64_t>(1));
    train.get<int>("torch_threads", 1, core::in_range(1, 256));
    core::ConfigView norm = root.section("normalize");
    if (norm.get<bool>("obs", false) || norm.get<bool>("reward", false))
      norm.fail("obs", "observation and reward normalization are not available in distributed runs yet");
    norm.get<double>("clip_obs", 10.0);
    norm.get<double>("clip_reward", 10.0);
    stop_ = StopRule::read(root, spec.has_outcome, spec.id);
    core::ConfigView ckpt = root.section("checkpoint");
    ckpt.get<int>("every", 0, core::at_least(0));
    ckpt.get<int>("keep", 3, core::at_least(1));
    d.get<int64_t>("max_batch", 256, core::at_least<int64_t>(1));
    d.choice("transport", "tcp", {"tcp", "ipc"});
    d.get<int>("env_ring", 1, core::in_range(1, 8));
    d.get<int64_t>("buffer_capacity", 64, core::at_least<int64_t>(1));
    if (d.choice("buffer_mode", "fifo", {"fifo", "replay"}) == "replay" && on_policy)
      d.fail("buffer_mode", "replay feeds old fragments again; it suits off-policy algorithms such as impala, not '" +
                                root.section("algo").get<std::string>("name", "ppo") + "'");
    // How many versions old a fragment may be: 1 for on-policy PPO, unbounded for IMPALA.
    d.get<int64_t>("max_staleness", on_policy ? 1 : 1000000, core::at_least<int64_t>(0));
    d.get<int64_t>("max_delay_ms", 2, core::at_least<int64_t>(0));
    heartbeat_timeout_ms_ = d.get<int64_t>("heartbeat_timeout_ms", 10000, core::at_least<int64_t>(100));
  }

  int64_t total_steps() const override { return total_steps_; }

  RunResult run(RunContext& ctx) override {
    const std::string config = core::read_file(ctx.dir / "config.yaml");
    ClusterOptions options;
    options.heartbeat_timeout = std::chrono::milliseconds(heartbeat_timeout_ms_);
    auto n = [&](const char* role) { return counts_.count(role) ? counts_.at(role) : 0; };
    spdlog::info("starting workers: {} env_actor, {} policy_worker, {} trainer, {} buffer", n("env_actor"),
                 n("policy_worker"), n("trainer"), n("buffer"));
    Cluster cluster(ctx.dir, experiment_.name, specs_, options);
    cluster.run("trainer", "configure", config);
    if (counts_.count("buffer")) cluster.run("buffer", "configure", config);
    if (!inline_policy_) cluster.run("policy_worker", "configure", config);
    cluster.run("env_actor", "configure", config);
    cluster.run("trainer", "publish");
    cluster.run("trainer", "start", std::to_string(counts_["env_actor"]));
    if (counts_.count("buffer")) cluster.run("buffer", "start");
    if (!inline_policy_) cluster.run("policy_worker", "start");
    cluster.run("env_actor", "start");
    spdlog::info("workers running");

    RunResult result;
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    int64_t env_steps = 0;
    EpisodeWindow window(stop_.window);
    FinishedEpisodes finished;  // since the last trainer row
    std::map<std::string, double> wait_share;
    while (true) {
      cluster.check();
      if (interrupted(ctx, result)) break;
      for (auto& m : cluster.metrics(std::chrono::milliseconds(100))) {
        // Every worker's own figures, under its name (episode returns are aggregated below).
        core::Scalars own;
        for (const auto& [name, v] : m.values)
          if (name.rfind("episode/", 0) != 0) own.push_back({"workers/" + m.worker + "/" + name, v});
        if (!own.empty()) ctx.metrics.log(env_steps, own);
        if (m.worker.rfind("env_actor/", 0) == 0) {
          for (const auto& [name, v] : m.values) {
            if (name == "env_steps") env_steps += static_cast<int64_t>(v);
            else if (name == "episode/return") {
              finished.returns.push_back(v);
              window.add({{v}, {}, {}});
            } else if (name == "episode/length") finished.lengths.push_back(v);
            else if (name == "episode/won") {
              finished.wins.push_back(v);
              window.add({{}, {}, {v}});
            }
            else if (name == "perf/actor_wait_share") wait_share[m.worker] = v;
          }
        } else if (m.worker.rfind("trainer/", 0) == 0) {
          core::Scalars row = episode_metrics(finished);
          finished = {};
          for (const auto& [name, v] : m.values)
            if (name != "trainer/version") row.push_back({name, v});
          row.push_back({"perf/sps", env_steps / std::max(elapsed(), 1e-9)});
          double share = 0;
          for (const auto& [w, v] : wait_share) share += v / wait_share.size();
          row.push_back({"perf/actor_wait_share", share});
          ctx.metrics.log(env_steps, row);
          ctx.report_progress(env_steps);
        }
      }
      if (stop_.stops(window, env_steps, elapsed(), result)) break;
      if (env_steps >= total_steps_) break;
    }
    result.summary.push_back({"global_step", static_cast<double>(env_steps)});
    result.summary.push_back({"train_time_s", elapsed()});
    add_window_summary(window, result);
    return result;
  }

 private:
  Experiment experiment_;
  std::vector<WorkerSpec> specs_;
  std::map<std::string, int> counts_;
  int64_t total_steps_ = 0;
  StopRule stop_;
  int64_t heartbeat_timeout_ms_ = 10000;
  bool inline_policy_ = false;
};

}  // namespace

std::unique_ptr<Program> make_distributed_rl_program(core::ConfigView root, const Experiment& experiment) {
  return std::make_unique<DistributedRl>(root, experiment);
}

}  // namespace flotilla::controller
