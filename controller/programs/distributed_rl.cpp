// The distributed RL program: `program: rl` with a `workers:` list. The controller starts env
// actors, policy workers, trainers (and buffers) as processes, wires them through the name
// service, and turns the rows the trainers push into the run's metrics and its stop condition.
// Checkpoints: the trainers park after an update (the lifecycle's pause), every trainer and env
// actor writes its shard of that version, the manifest comes last; `flotilla resume` loads the
// shards back before the workers start.
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>
#include <optional>

#include "actors/rl/common.hpp"
#include "actors/rl/config.hpp"
#include "controller/cluster/cluster.hpp"
#include "controller/programs/episodes.hpp"
#include "controller/programs/rl.hpp"
#include "controller/run/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;
using actors::rl::DistributedRlConfig;

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

class DistributedRl final : public Program {
 public:
  DistributedRl(core::ConfigView root, const Experiment& e)
      : experiment_(e),
        c_(DistributedRlConfig::read(root)),
        stop_(StopRule::read(root, c_.env.has_outcome, c_.env.id)),
        window_(stop_.window) {}

  int64_t total_steps() const override { return c_.total_steps; }

  void resume(const fs::path& run_dir) override {
    auto path = latest_checkpoint(run_dir);
    if (!path) throw ConfigError(run_dir.string() + ": no checkpoint to resume from in checkpoints/");
    resume_ = nlohmann::json::parse(load_checkpoint(*path).manifest_json);
    version_ = resume_.at("iteration").get<int64_t>();
    env_steps_ = resume_.at("global_step").get<int64_t>();
    window_.restore(resume_.at("recent_returns").get<std::vector<double>>(), resume_.value("recent_wins", std::vector<double>{}));
    spdlog::info("resuming from {} (trainer version {}, step {})", path->string(), version_, env_steps_);
  }

  std::vector<std::pair<std::string, int>> worker_groups() const override { return group_counts(c_.workers); }

  // A failed trainer (or any worker of a deterministic run) whose policy is restart brings the
  // run back to its last checkpoint (its start when it has none); the other roles are replaced
  // in place while training goes on (rejoin).
  RunResult run(RunContext& ctx) override {
    run_dir_ = ctx.dir;
    return restarts_.run(experiment_.fault, [&] { return run_workers(ctx); }, [&] { restore(ctx); });
  }

 private:
  void restore(RunContext& ctx) {
    pending_.clear();
    wait_share_.clear();
    if (latest_checkpoint(ctx.dir)) return resume(ctx.dir);
    resume_ = nullptr;
    version_ = env_steps_ = 0;
    window_ = EpisodeWindow(stop_.window);
    spdlog::info("no checkpoint yet: starting the run again");
  }

  RunResult run_workers(RunContext& ctx) {
    ClusterOptions options;
    options.heartbeat_timeout = std::chrono::milliseconds(experiment_.fault.heartbeat_timeout_ms);
    options.launcher = experiment_.launcher;
    options.fault = experiment_.fault;
    restarts_.prepare(options);
    // A deterministic run's workers are in lockstep: none can be replaced without the others.
    if (!c_.deterministic) options.replaceable = {"env_actor", "policy_worker", "buffer"};
    std::vector<WorkerSpec> specs;
    std::string layout;
    for (const auto& g : c_.workers) {
      specs.push_back({g.role, g.count});
      layout += (layout.empty() ? "" : ", ") + std::to_string(g.count) + " " + g.role;
    }
    spdlog::info("starting workers: {}", layout);
    Cluster cluster(ctx.dir, experiment_.name, specs, options);
    cluster_ = &cluster;
    const RunRestarts::Scope scope(restarts_, cluster);
    const auto woken = ctx.on_stop([&cluster] { cluster.wake(); });
    const std::string config = core::read_file(ctx.dir / "config.yaml");
    start_workers(config);
    spdlog::info("workers running");
    restarts_.up(cluster);

    RunResult result;
    clock_ = TrainClock(resume_.is_null() ? 0.0 : resume_.value("train_time_s", 0.0));
    int64_t last_checkpoint = version_;
    while (true) {
      if (interrupted(ctx, result)) break;
      take_metrics(ctx, cluster.metrics(std::chrono::seconds(10)));  // returns on rows, a failure, a replacement or Ctrl-C
      cluster.check();
      for (const Replacement& r : cluster.replaced()) rejoin(r, config);
      if (stop_.stops(window_, env_steps_, clock_.seconds(), result)) break;
      if (env_steps_ >= c_.total_steps) break;
      if (c_.checkpoint_every > 0 && version_ >= last_checkpoint + c_.checkpoint_every && cluster.replacing() == 0)
        last_checkpoint = checkpoint(ctx).value_or(last_checkpoint);
    }
    while (version_ != last_checkpoint || !latest_checkpoint(ctx.dir)) {
      cluster.check();
      for (const Replacement& r : cluster.replaced()) rejoin(r, config);
      if (cluster.replacing() > 0) {  // the last checkpoint waits for every worker
        take_metrics(ctx, cluster.metrics(std::chrono::milliseconds(200)));
        continue;
      }
      if (auto v = checkpoint(ctx)) break;
    }
    result.summary.push_back({"global_step", static_cast<double>(env_steps_)});
    result.summary.push_back({"iterations", static_cast<double>(version_)});
    result.summary.push_back({"train_time_s", clock_.seconds()});
    result.summary.push_back({"fault/restarts", static_cast<double>(restarts_.total(cluster))});
    result.summary.push_back({"security/refused_connections", static_cast<double>(cluster.refused())});
    add_window_summary(window_, result);
    cluster_ = nullptr;
    return result;
  }

  // A replaced worker is configured and started like the one it replaces; env actors that asked
  // a replaced policy worker send their unanswered requests again.
  void rejoin(const Replacement& r, const std::string& config) {
    runtime::WorkerGroup& g = cluster_->group(r.group);
    g.call_rank(r.rank, runtime::Configure{config}).get();
    g.call_rank(r.rank, runtime::Start{}).get();
    if (r.group == "policy_worker")
      for (int a = 0; a < c_.count("env_actor"); ++a)
        if (a % c_.count("policy_worker") == r.rank) {
          try {
            cluster_->group("env_actor").call_rank(a, actors::rl::Resend{}).get();
          } catch (const runtime::RankLost&) {  // that actor is being replaced too: its replacement asks afresh
          }
        }
    cluster_->rejoined(r);
  }

  void start_workers(const std::string& config) {
    // Receivers first: the trainers' (and buffers') sample streams, then the policy workers the
    // actors ask for actions.
    for (const char* g : {"trainer", "buffer", "policy_worker", "env_actor"})
      if (c_.count(g)) cluster_->run(g, runtime::Configure{config});
    if (!resume_.is_null()) {
      const std::string dir = (run_dir_ / resume_.at("dir").get<std::string>()).string();
      cluster_->run("trainer", actors::rl::LoadShard{.dir = dir, .step = version_});
      cluster_->run("env_actor", actors::rl::LoadShard{.dir = dir, .step = version_});
    }
    cluster_->run("trainer", actors::rl::Publish{});
    for (const char* g : {"trainer", "buffer", "policy_worker", "env_actor"})
      if (c_.count(g)) cluster_->run(g, runtime::Start{});
  }

  // Trainer rows are logged once every trainer rank has reported that version; the other
  // workers' figures go under their names.
  void take_metrics(RunContext& ctx, std::vector<Cluster::WorkerMetrics> rows) {
    for (auto& m : rows) {
      if (starts_with(m.worker, "trainer/")) {
        const int64_t version = static_cast<int64_t>(value_of(m.values, "trainer/version"));
        pending_[version].push_back(std::move(m));
        continue;
      }
      core::Scalars own;
      for (const auto& [name, v] : m.values) {
        if (name == "perf/actor_wait_share") wait_share_[m.worker] = v;
        own.push_back({"workers/" + m.worker + "/" + name, v});
      }
      if (!own.empty()) ctx.metrics.log(env_steps_, own);
    }
    while (!pending_.empty() && static_cast<int>(pending_.begin()->second.size()) == c_.count("trainer")) {
      log_version(ctx, pending_.begin()->first, pending_.begin()->second);
      pending_.erase(pending_.begin());
    }
  }

  static double value_of(const core::Scalars& values, const std::string& name) {
    for (const auto& [k, v] : values)
      if (k == name) return v;
    throw Error("a trainer row without '" + name + "'");
  }

  void log_version(RunContext& ctx, int64_t version, const std::vector<Cluster::WorkerMetrics>& ranks) {
    FinishedEpisodes finished;
    core::Scalars stats;
    int64_t steps = 0;
    for (const auto& m : ranks) {
      steps += m.step;  // env steps each rank consumed, all told
      for (const auto& [name, v] : m.values) {
        if (name == "episode/return") finished.returns.push_back(v);
        else if (name == "episode/length") finished.lengths.push_back(v);
        else if (name == "episode/won") finished.wins.push_back(v);
        else if (m.worker == "trainer/0" && name != "trainer/version") stats.push_back({name, v});
      }
    }
    window_.add(finished);
    env_steps_ = steps;
    version_ = version;
    core::Scalars row = episode_metrics(finished);
    row.insert(row.end(), stats.begin(), stats.end());
    row.push_back({"perf/sps", env_steps_ / std::max(clock_.seconds(), 1e-9)});
    double share = 0;
    for (const auto& [w, v] : wait_share_) share += v / static_cast<double>(wait_share_.size());
    row.push_back({"perf/actor_wait_share", share});
    ctx.metrics.log(env_steps_, row);
    ctx.report_progress(env_steps_);
  }

  // Parks the trainers after their current update, has every trainer and env actor write its
  // shard of that version, then writes the manifest and lets the trainers go on. A worker that
  // fails meanwhile and is replaced abandons the checkpoint (nothing: the shards written are
  // removed, the trainers go on, and the next one is tried at the next interval).
  std::optional<int64_t> checkpoint(RunContext& ctx) {
    const int64_t failures = cluster_->failures();
    fs::path shard_dir;
    try {
      return write_checkpoint(ctx, shard_dir);
    } catch (const WorkerFailure&) {
      throw;
    } catch (const Error& e) {
      // A worker failed meanwhile, or one is being replaced: the checkpoint is tried again later.
      if (cluster_->failures() == failures && !dynamic_cast<const runtime::RankLost*>(&e)) throw;
      spdlog::warn("checkpoint abandoned: {}", e.what());
      std::error_code gone;
      if (!shard_dir.empty()) fs::remove_all(shard_dir, gone);
      if (gone) spdlog::warn("the abandoned checkpoint's files stay in {}: {}", shard_dir.string(), gone.message());
      try {
        cluster_->run("trainer", runtime::Resume{});
      } catch (const Error&) {  // a trainer failed too: check() says so
      }
      return std::nullopt;
    }
  }

  int64_t write_checkpoint(RunContext& ctx, fs::path& shard_dir) {
    int64_t version = -1;
    for (const auto& s : cluster_->run("trainer", runtime::Pause{}).ranks) {
      const auto v = static_cast<int64_t>(s.counter("version"));
      if (version >= 0 && v != version) throw Error("the trainers paused at different versions (" + std::to_string(version) + ", " + std::to_string(v) + ")");
      version = v;
    }
    // The rows up to that version are on their way: log them before the checkpoint names them.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (version_ < version) {
      if (std::chrono::steady_clock::now() > deadline)
        throw TimeoutError("the trainers' row for version " + std::to_string(version) + " did not arrive within 60 s");
      cluster_->check();
      take_metrics(ctx, cluster_->metrics(std::chrono::seconds(1)));
    }
    const std::string dir = step_dir(version);
    shard_dir = ctx.dir / dir;
    // Every rank is done writing (or gone) before the checkpoint is kept, or abandoned and removed.
    const actors::rl::SaveShard save{.dir = shard_dir.string(), .step = version};
    auto trainers = cluster_->group("trainer").call(save), actors = cluster_->group("env_actor").call(save);
    trainers.settle(), actors.settle();
    trainers.get(), actors.get();
    nlohmann::ordered_json m = rl_manifest(version, env_steps_, clock_.seconds(), window_, c_.env.id, ctx.dir);
    m["program"] = "rl";
    m["dir"] = dir;
    save_checkpoint(ctx.dir, version, {}, m.dump(2), c_.checkpoint_keep);
    cluster_->run("trainer", runtime::Resume{});
    return version;
  }

  Experiment experiment_;
  DistributedRlConfig c_;
  StopRule stop_;
  EpisodeWindow window_;
  nlohmann::json resume_;
  fs::path run_dir_;
  Cluster* cluster_ = nullptr;
  TrainClock clock_;
  int64_t version_ = 0, env_steps_ = 0;
  std::map<int64_t, std::vector<Cluster::WorkerMetrics>> pending_;  // trainer rows by version
  std::map<std::string, double> wait_share_;
  RunRestarts restarts_;
};

}  // namespace

std::unique_ptr<Program> make_distributed_rl_program(core::ConfigView root, const Experiment& experiment) {
  return std::make_unique<DistributedRl>(root, experiment);
}

}  // namespace flotilla::controller
