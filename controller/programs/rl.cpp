#include "controller/programs/rl.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <optional>

#include "algorithms/advantages.hpp"
#include "algorithms/algorithm.hpp"
#include "algorithms/q_learning.hpp"
#include "controller/run/checkpoint.hpp"
#include "controller/programs/episodes.hpp"
#include "core/batch.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"
#include "envs/registry.hpp"
#include "models/normalizer.hpp"
#include "models/policy.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

namespace {

struct TrainConfig {
  int64_t total_steps = 500'000;
  int64_t num_steps = 128;  // rollout length per env per iteration
  int torch_threads = 1;
  bool norm_obs = false, norm_reward = false;
  double clip_obs = 10, clip_reward = 10;
  int checkpoint_every = 0;  // iterations; 0: only at the end
  int checkpoint_keep = 3;
};

TrainConfig read_train(const core::ConfigView& root) {
  TrainConfig c;
  core::ConfigView train = root.section("train");
  c.total_steps = train.get<int64_t>("total_steps", c.total_steps, core::at_least<int64_t>(1));
  c.num_steps = train.get<int64_t>("num_steps", c.num_steps, core::at_least<int64_t>(1));
  c.torch_threads = train.get<int>("torch_threads", c.torch_threads, core::in_range(1, 256));
  core::ConfigView norm = root.section("normalize");
  c.norm_obs = norm.get<bool>("obs", c.norm_obs);
  c.norm_reward = norm.get<bool>("reward", c.norm_reward);
  c.clip_obs = norm.get<double>("clip_obs", c.clip_obs, core::greater_than(0.0));
  c.clip_reward = norm.get<double>("clip_reward", c.clip_reward, core::greater_than(0.0));
  core::ConfigView ckpt = root.section("checkpoint");
  c.checkpoint_every = ckpt.get<int>("every", c.checkpoint_every, core::at_least(0));
  c.checkpoint_keep = ckpt.get<int>("keep", c.checkpoint_keep, core::at_least(1));
  return c;
}

// The parts shared by training and evaluation: env batch, policy, observation normalizer.
struct Agent {
  std::unique_ptr<envs::VecEnv> env;
  std::unique_ptr<models::Policy> policy;
  models::RunningMeanStd obs_rms;
  bool norm_obs = false;
  double clip_obs = 10;

  // A copy: the env overwrites its observation buffer on the next step.
  at::Tensor observe(const at::Tensor& raw, bool update) {
    if (!norm_obs) return raw.clone();
    if (update) obs_rms.update(raw);
    return obs_rms.normalize(raw, clip_obs);
  }
};

Agent make_agent(const core::ConfigView& root, const TrainConfig& t, int64_t seed) {
  Agent a;
  a.env = envs::make_env(root.section("env"));
  at::manual_seed(static_cast<uint64_t>(seed));  // weight initialization
  a.policy = algorithms::make_policy(root, a.env->spec());
  a.obs_rms = models::RunningMeanStd(a.env->spec().observation_space.numel());
  const envs::ObsLayout& l = a.env->spec().layout;
  if (l.multi_agent()) {  // agent ids and action masks pass through the normalizer unchanged
    a.obs_rms.set_passthrough(l.obs_dim, l.agents);
    a.obs_rms.set_passthrough(l.mask_offset(), l.mask_dim);
  }
  a.norm_obs = t.norm_obs;
  a.clip_obs = t.clip_obs;
  return a;
}

class RlProgram final : public Program {
 public:
  RlProgram(core::ConfigView root, const Experiment& e)
      : experiment_(e),
        train_(read_train(root)),
        agent_(make_agent(root, train_, e.seed)),
        stop_(StopRule::read(root, agent_.env->spec().has_outcome, agent_.env->spec().id)),
        window_(stop_.window) {
    algo_ = algorithms::make_algorithm(root.section("algo"), *agent_.policy);
    if (!algo_->takes_gae_batches())
      root.section("algo").fail("name", "this algorithm trains on fragments from distributed actors; add a workers: list");
    reward_scaler_ = std::make_unique<models::RewardScaler>(agent_.env->num_envs(), algo_->gamma());
    gen_ = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(e.seed) + 1);
    agent_.env->reset(static_cast<uint64_t>(e.seed));
  }

  int64_t total_steps() const override { return train_.total_steps; }

  void resume(const fs::path& run_dir) override {
    auto path = latest_checkpoint(run_dir);
    if (!path) throw ConfigError(run_dir.string() + ": no checkpoint to resume from in checkpoints/");
    Checkpoint c = load_checkpoint(*path);
    nlohmann::json m = nlohmann::json::parse(c.manifest_json);
    NamedTensors policy, rest;
    for (const auto& [name, t] : c.tensors) {
      if (name.rfind("policy.", 0) == 0) policy.emplace_back(name.substr(7), t);
      else rest.emplace_back(name, t);
    }
    agent_.policy->load(policy);
    algo_->load(rest);
    agent_.env->restore(rest);
    if (train_.norm_obs) agent_.obs_rms.load(rest, "obs_rms");
    if (train_.norm_reward) reward_scaler_->load(rest, "reward_scaler");
    for (const auto& [name, t] : rest)
      if (name == "rng") gen_.set_state(t);
    iteration_ = m.at("iteration").get<int64_t>();
    global_step_ = m.at("global_step").get<int64_t>();
    elapsed_before_ = m.at("train_time_s").get<double>();
    window_.restore(m.at("recent_returns").get<std::vector<double>>(), m.value("recent_wins", std::vector<double>{}));
    spdlog::info("resuming from {} (iteration {}, step {})", path->string(), iteration_, global_step_);
  }

  RunResult run(RunContext& ctx) override {
    if (experiment_.deterministic) at::set_num_threads(1);
    else at::set_num_threads(train_.torch_threads);
    const int64_t n = agent_.env->num_envs(), T = train_.num_steps;
    // Steps count env steps: a multi-agent env's agent rows are A rows per env.
    const int64_t batch = n * T / std::max<int64_t>(1, agent_.env->spec().layout.agents);
    const int64_t iterations = (train_.total_steps + batch - 1) / batch;
    const TrainClock clock(elapsed_before_);
    RunResult result;
    while (iteration_ < iterations) {
      if (interrupted(ctx, result)) break;
      const auto t0 = clock_type::now();
      auto [data, finished] = rollout(T);
      const auto t1 = clock_type::now();
      core::Scalars stats;
      try {
        stats = algo_->update(data, static_cast<double>(iteration_) / iterations, gen_);
      } catch (const Error& e) {
        throw Error("iteration " + std::to_string(iteration_ + 1) + ": " + e.what() +
                    " (the last good checkpoint is kept in checkpoints/)");
      }
      const auto t2 = clock_type::now();
      ++iteration_;
      global_step_ += batch;

      core::Scalars row = episode_metrics(finished);
      row.insert(row.end(), stats.begin(), stats.end());
      const double rollout_s = std::chrono::duration<double>(t1 - t0).count();
      const double update_s = std::chrono::duration<double>(t2 - t1).count();
      row.push_back({"perf/sps", global_step_ / std::max(clock.seconds(), 1e-9)});
      row.push_back({"timing_s/rollout", rollout_s});
      row.push_back({"timing_s/update", update_s});
      ctx.metrics.log(global_step_, row);
      ctx.report_progress(global_step_);

      if (stop_.stops(window_, global_step_, clock.seconds(), result)) break;
      if (train_.checkpoint_every > 0 && iteration_ % train_.checkpoint_every == 0) checkpoint(ctx.dir, clock.seconds());
    }
    checkpoint(ctx.dir, clock.seconds());
    result.summary.push_back({"iterations", static_cast<double>(iteration_)});
    result.summary.push_back({"global_step", static_cast<double>(global_step_)});
    result.summary.push_back({"train_time_s", clock.seconds()});
    add_window_summary(window_, result);
    return result;
  }

 private:
  std::pair<core::Batch, FinishedEpisodes> rollout(int64_t T) {
    envs::VecEnv& env = *agent_.env;
    std::vector<at::Tensor> obs(T), action(T), log_prob(T), value(T), reward(T), terminated(T), truncated(T), done(T);
    std::vector<std::pair<int64_t, at::Tensor>> truncated_rows;  // (t, env indices) that need V(final obs)
    std::vector<at::Tensor> truncated_obs;
    FinishedEpisodes finished;
    at::Tensor current = agent_.observe(env.obs(), true);
    for (int64_t t = 0; t < T; ++t) {
      models::ActOutput out = agent_.policy->act(current, false, gen_);
      env.step(env.clip_actions(out.action));
      obs[t] = current;
      action[t] = out.action;
      log_prob[t] = out.log_prob;
      value[t] = out.value;
      terminated[t] = env.terminated().clone();
      truncated[t] = env.truncated().clone();
      done[t] = env.terminated() | env.truncated();
      reward[t] = train_.norm_reward ? reward_scaler_->scale(env.reward(), done[t], train_.clip_reward) : env.reward().clone();
      if (done[t].any().item<bool>()) {
        FinishedEpisodes ended = envs::finished_episodes(done[t], env.episode_return(), env.episode_length(),
                                                   env.episode_won(), env.spec().layout.agents);
        window_.add(ended);
        finished.append(ended);
        at::Tensor trunc = (env.truncated() & ~env.terminated()).nonzero().squeeze(1);
        if (trunc.numel() > 0) {
          truncated_rows.emplace_back(t, trunc);
          truncated_obs.push_back(agent_.observe(env.final_obs().index_select(0, trunc), false));
        }
      }
      current = agent_.observe(env.obs(), true);
    }
    // V(final obs) where an episode was truncated; elsewhere unused.
    at::Tensor values = at::stack(value);
    at::Tensor final_values = at::zeros_like(values);
    if (!truncated_rows.empty()) {
      at::Tensor v = agent_.policy->value(at::cat(truncated_obs));
      int64_t offset = 0;
      for (const auto& [t, idx] : truncated_rows) {
        final_values[t].index_put_({idx}, v.narrow(0, offset, idx.size(0)));
        offset += idx.size(0);
      }
    }
    algorithms::Fragment f{at::stack(obs),        at::stack(action), at::stack(log_prob), values,
                           at::stack(reward),     at::stack(terminated), at::stack(truncated), final_values,
                           agent_.policy->value(current)};
    core::Batch b = algorithms::training_batch(f, algo_->gamma(), algo_->gae_lambda());
    return {b, finished};
  }

  void checkpoint(const fs::path& dir, double train_time) {
    NamedTensors tensors;
    for (const auto& [name, t] : agent_.policy->named_parameters()) tensors.emplace_back("policy." + name, t.detach());
    for (auto& t : algo_->state()) tensors.push_back(t);
    for (auto& t : agent_.env->save()) tensors.push_back(t);
    if (train_.norm_obs)
      for (auto& t : agent_.obs_rms.state("obs_rms")) tensors.push_back(t);
    if (train_.norm_reward)
      for (auto& t : reward_scaler_->state("reward_scaler")) tensors.push_back(t);
    tensors.emplace_back("rng", gen_.get_state());
    nlohmann::ordered_json m = rl_manifest(iteration_, global_step_, train_time, window_, agent_.env->spec().id, dir);
    m["config_hash"] = std::to_string(std::hash<std::string>{}(m["config"].get<std::string>()));
    save_checkpoint(dir, iteration_, tensors, m.dump(2), train_.checkpoint_keep);
  }

  Experiment experiment_;
  TrainConfig train_;
  Agent agent_;
  std::unique_ptr<algorithms::Algorithm> algo_;
  std::unique_ptr<models::RewardScaler> reward_scaler_;
  at::Generator gen_;
  int64_t iteration_ = 0, global_step_ = 0;
  double elapsed_before_ = 0;  // training seconds before a resume
  StopRule stop_;
  EpisodeWindow window_;  // the last stop.window finished episodes
};

ProgramRegistration rl("rl", [](core::ConfigView root, const Experiment& e) {
  std::vector<std::string> names = algorithms::algorithm_names();
  for (const std::string& q : algorithms::q_learner_names()) names.push_back(q);
  const std::string algo = root.section("algo").choice("name", "ppo", names);
  for (const std::string& q : algorithms::q_learner_names())
    if (algo == q) {
      if (root.has("workers"))
        root.fail("workers", "'" + algo + "' runs in one process (its replay and learner are local); remove workers:");
      return make_q_program(root, e);
    }
  return root.has("workers") ? make_distributed_rl_program(root, e) : make_rl_program(root, e);
});

}  // namespace

std::unique_ptr<Program> make_rl_program(core::ConfigView root, const Experiment& experiment) {
  return std::make_unique<RlProgram>(root, experiment);
}

EvalResult evaluate_checkpoint(const fs::path& path, int episodes, bool deterministic, uint64_t seed) {
  Checkpoint c = load_checkpoint(path);
  nlohmann::json m = nlohmann::json::parse(c.manifest_json);
  // A distributed run's policy is in trainer 0's shard (checkpoints/step-N/trainer-0.safetensors).
  if (m.contains("dir")) {
    const fs::path shard = c.manifest_path.parent_path().parent_path() / m.at("dir").get<std::string>() / "trainer-0.safetensors";
    if (!fs::exists(shard)) throw ConfigError(shard.string() + ": the checkpoint's trainer shard is missing");
    c.tensors = core::load_safetensors(shard).tensors;
  }
  core::ConfigTree tree = core::ConfigTree::load_string(m.at("config").get<std::string>(), c.manifest_path.string());
  tree.apply_override("env.num_envs=" + std::to_string(std::min(episodes, 16)));
  core::Config config(std::move(tree));
  core::ConfigView root = config.root();
  const std::string algo = root.section("algo").get<std::string>("name", "ppo");
  for (const std::string& q : algorithms::q_learner_names())
    if (algo == q) return evaluate_q_checkpoint(root, c.tensors, episodes, seed);
  TrainConfig t = read_train(root);
  Agent a = make_agent(root, t, static_cast<int64_t>(seed));
  NamedTensors policy;
  for (const auto& [name, tensor] : c.tensors)
    if (name.rfind("policy.", 0) == 0) policy.emplace_back(name.substr(7), tensor);
  a.policy->load(policy);
  if (t.norm_obs) a.obs_rms.load(c.tensors, "obs_rms");
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  a.env->reset(seed);
  // A multi-agent env's agent rows count once per env, with the agents' mean return.
  const int64_t agents = std::max<int64_t>(1, a.env->spec().layout.agents);
  const int64_t envs = a.env->num_envs() / agents;
  EvalTally tally(episodes, envs);
  while (!tally.complete()) {
    models::ActOutput out = a.policy->act(a.observe(a.env->obs(), false), deterministic, gen);
    a.env->step(a.env->clip_actions(out.action));
    at::Tensor done = (a.env->terminated() | a.env->truncated()).view({envs, agents}).select(1, 0);
    at::Tensor won = a.env->spec().has_outcome ? a.env->episode_won().view({envs, agents}).select(1, 0) : at::Tensor();
    tally.add(done, a.env->episode_return().view({envs, agents}).mean(1), a.env->episode_length().view({envs, agents}).select(1, 0), won);
  }
  return {tally.episodes(), tally.mean_return(), tally.std_return(), tally.mean_length(), tally.win_rate()};
}

}  // namespace flotilla::controller
