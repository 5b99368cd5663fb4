// The value-based multi-agent loop (`program: rl` with algo.name iql, vdn or qmix): epsilon-greedy
// agents step a batch of multi-agent envs, whole episodes go to an episode replay, and the learner
// trains on sampled episodes after every `train.num_steps` env steps.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>

#include "algorithms/episode_replay.hpp"
#include "algorithms/q_learning.hpp"
#include "controller/run/checkpoint.hpp"
#include "controller/programs/episodes.hpp"
#include "controller/programs/rl.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/multi_agent.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

namespace {

// Observations and states as the learner takes them (envs may store them as bytes).
at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

algorithms::EpisodeShape shape_of(const envs::MultiAgentVecEnv& env) {
  const envs::MultiAgentSpec& s = env.spec();
  if (!s.discrete())
    throw ConfigError(s.id + ": IQL, VDN and QMIX choose among discrete actions; this env's actions are continuous "
                             "(set env.params.continuous_actions: false, or use ippo or mappo)");
  return {env.max_episode_steps(), env.num_agents(), s.obs_dim(), s.state.numel(), s.avail_dim()};
}

class QProgram final : public Program {
 public:
  QProgram(core::ConfigView root, const Experiment& e)
      : experiment_(e),
        env_(envs::make_multi_agent_env(root.section("env"))),
        config_(algorithms::QConfig::read(root.section("algo"))),
        shape_(shape_of(*env_)),
        replay_(shape_, config_.buffer_size),
        recorder_(shape_, env_->num_envs()),
        stop_(StopRule::read(root, env_->spec().has_outcome, env_->spec().id)),
        window_(stop_.window) {
    core::ConfigView train = root.section("train");
    total_steps_ = train.get<int64_t>("total_steps", 1'000'000, core::at_least<int64_t>(1));
    num_steps_ = train.get<int64_t>("num_steps", shape_.max_steps, core::at_least<int64_t>(1));
    torch_threads_ = train.get<int>("torch_threads", 1, core::in_range(1, 256));
    core::ConfigView ckpt = root.section("checkpoint");
    checkpoint_every_ = ckpt.get<int>("every", 0, core::at_least(0));
    checkpoint_keep_ = ckpt.get<int>("keep", 3, core::at_least(1));
    at::manual_seed(static_cast<uint64_t>(e.seed));  // weight initialization
    learner_ = std::make_unique<algorithms::QLearner>(config_, shape_);
    gen_ = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(e.seed) + 1);
    env_->reset(static_cast<uint64_t>(e.seed));
    recorder_.begin(as_float(env_->obs()), as_float(env_->global_state()), env_->avail_actions());
    last_action_ = at::full({env_->num_envs(), env_->num_agents()}, -1, at::kLong);
  }

  int64_t total_steps() const override { return total_steps_; }

  void resume(const fs::path& run_dir) override {
    auto path = latest_checkpoint(run_dir);
    if (!path) throw ConfigError(run_dir.string() + ": no checkpoint to resume from in checkpoints/");
    Checkpoint c = load_checkpoint(*path);
    nlohmann::json m = nlohmann::json::parse(c.manifest_json);
    learner_->load(c.tensors);
    for (const auto& [name, t] : c.tensors)
      if (name == "rng") gen_.set_state(t);
    global_step_ = m.at("global_step").get<int64_t>();
    iteration_ = m.at("iteration").get<int64_t>();
    elapsed_before_ = m.at("train_time_s").get<double>();
    window_.restore(m.at("recent_returns").get<std::vector<double>>(), m.value("recent_wins", std::vector<double>{}));
    // The replay buffer is not in checkpoints: it refills from the resumed policy.
    spdlog::info("resuming from {} (step {}); the episode replay starts empty", path->string(), global_step_);
  }

  RunResult run(RunContext& ctx) override {
    at::set_num_threads(experiment_.deterministic ? 1 : torch_threads_);
    const TrainClock clock(elapsed_before_);
    const int64_t n = env_->num_envs();
    RunResult result;
    while (global_step_ < total_steps_) {
      if (interrupted(ctx, result)) break;
      const auto t0 = clock_type::now();
      FinishedEpisodes finished;
      const double epsilon = config_.epsilon(global_step_);
      for (int64_t s = 0; s < num_steps_; ++s) {
        at::Tensor action = learner_->act(as_float(env_->obs()), env_->avail_actions(), last_action_, epsilon, gen_);
        env_->step(action);
        const at::Tensor done = env_->terminated() | env_->truncated();
        core::Batch ended = recorder_.step(action, env_->reward(), env_->terminated(), done, as_float(env_->obs()),
                                           as_float(env_->global_state()), env_->avail_actions(),
                                           as_float(env_->final_obs()), as_float(env_->final_global_state()),
                                           env_->final_avail_actions());
        last_action_ = at::where(done.unsqueeze(1), at::full_like(action, -1), action);
        if (!ended.empty()) {
          replay_.add(ended);
          // An episode's return: its agents' mean.
          FinishedEpisodes e = envs::finished_episodes(done, env_->episode_return().mean(1), env_->episode_length(),
                                                       env_->spec().has_outcome ? env_->won() : at::Tensor(), 1);
          window_.add(e);
          finished.append(e);
        }
      }
      global_step_ += n * num_steps_;
      ++iteration_;
      const auto t1 = clock_type::now();
      core::Scalars losses;
      if (replay_.size() >= std::max(config_.batch_size, config_.learning_starts)) {
        std::map<std::string, double> sum;
        for (int u = 0; u < config_.updates_per_iteration; ++u) {
          core::Scalars l;
          try {
            l = learner_->update(replay_.sample(config_.batch_size, gen_));
          } catch (const Error& err) {
            throw Error("step " + std::to_string(global_step_) + ": " + err.what() +
                        " (the last good checkpoint is kept in checkpoints/)");
          }
          for (const auto& [k, v] : l) sum[k] += v / config_.updates_per_iteration;
        }
        losses.assign(sum.begin(), sum.end());
      }
      const auto t2 = clock_type::now();

      core::Scalars row = episode_metrics(finished);
      row.push_back({"charts/epsilon", epsilon});
      row.push_back({"charts/replay_episodes", static_cast<double>(replay_.size())});
      row.insert(row.end(), losses.begin(), losses.end());
      row.push_back({"perf/sps", global_step_ / std::max(clock.seconds(), 1e-9)});
      row.push_back({"timing_s/rollout", std::chrono::duration<double>(t1 - t0).count()});
      row.push_back({"timing_s/update", std::chrono::duration<double>(t2 - t1).count()});
      ctx.metrics.log(global_step_, row);
      ctx.report_progress(global_step_);
      if (stop_.stops(window_, global_step_, clock.seconds(), result)) break;
      if (checkpoint_every_ > 0 && iteration_ % checkpoint_every_ == 0) checkpoint(ctx.dir, clock.seconds());
    }
    checkpoint(ctx.dir, clock.seconds());
    result.summary.push_back({"global_step", static_cast<double>(global_step_)});
    result.summary.push_back({"train_time_s", clock.seconds()});
    add_window_summary(window_, result);
    return result;
  }

 private:
  void checkpoint(const fs::path& dir, double train_time) {
    NamedTensors tensors = learner_->state();
    tensors.emplace_back("rng", gen_.get_state());
    const nlohmann::ordered_json m = rl_manifest(iteration_, global_step_, train_time, window_, env_->spec().id, dir);
    save_checkpoint(dir, iteration_, tensors, m.dump(2), checkpoint_keep_);
  }

  Experiment experiment_;
  std::unique_ptr<envs::MultiAgentVecEnv> env_;
  algorithms::QConfig config_;
  algorithms::EpisodeShape shape_;
  algorithms::EpisodeReplay replay_;
  algorithms::EpisodeRecorder recorder_;
  StopRule stop_;
  EpisodeWindow window_;
  std::unique_ptr<algorithms::QLearner> learner_;
  at::Generator gen_;
  at::Tensor last_action_;
  int64_t total_steps_ = 0, num_steps_ = 0, global_step_ = 0, iteration_ = 0;
  int torch_threads_ = 1, checkpoint_every_ = 0, checkpoint_keep_ = 3;
  double elapsed_before_ = 0;
};

}  // namespace

std::unique_ptr<Program> make_q_program(core::ConfigView root, const Experiment& experiment) {
  return std::make_unique<QProgram>(root, experiment);
}

EvalResult evaluate_q_checkpoint(core::ConfigView root, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                 int episodes, uint64_t seed) {
  auto env = envs::make_multi_agent_env(root.section("env"));
  const algorithms::QConfig config = algorithms::QConfig::read(root.section("algo"));
  algorithms::QLearner learner(config, shape_of(*env));
  learner.load(tensors);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  env->reset(seed);
  at::Tensor last = at::full({env->num_envs(), env->num_agents()}, -1, at::kLong);
  EvalTally tally(episodes, env->num_envs());
  while (!tally.complete()) {
    at::Tensor action = learner.act(as_float(env->obs()), env->avail_actions(), last, 0.0, gen);  // greedy
    env->step(action);
    const at::Tensor done = env->terminated() | env->truncated();
    last = at::where(done.unsqueeze(1), at::full_like(action, -1), action);
    tally.add(done, env->episode_return().mean(1), env->episode_length(),
              env->spec().has_outcome ? env->won() : at::Tensor());
  }
  return {tally.episodes(), tally.mean_return(), tally.std_return(), tally.mean_length(), tally.win_rate()};
}

}  // namespace flotilla::controller
