// The env actor: steps a ring of env batches, asks a policy worker (or its own copy of the policy)
// for actions, and ships fragments of `train.num_steps` steps with the episodes that ended in
// them. In a deterministic run it is in lockstep with the trainer: fragment i is acted with
// parameters of version i, every action from a seed of its own.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <unistd.h>

#include <deque>
#include <zmq.hpp>

#include "actors/rl/common.hpp"
#include "algorithms/algorithm.hpp"
#include "core/error.hpp"
#include "core/stream.hpp"
#include "envs/registry.hpp"
#include "models/policy.hpp"

namespace flotilla::actors::rl {
namespace {
using namespace std::chrono_literals;

class EnvActor final : public runtime::Role {
 public:
  using Role::Role;

  void configure(const core::ConfigView& root) override {
    c_ = DistributedRlConfig::read(root);
    at::set_num_threads(c_.deterministic ? 1 : c_.threads("env_actor"));
    // An env ring: while one batch waits for its actions, the next one steps.
    for (int k = 0; k < c_.env_ring; ++k) {
      envs_.push_back(envs::make_env(root.section("env")));
      envs_.back()->reset(c_.seed * 100000 + static_cast<uint64_t>(info().rank) * 100 + static_cast<uint64_t>(k) + 1);
    }
    if (c_.inline_policy) {
      // Inline: this actor runs the policy itself, with parameters straight from the trainer.
      at::manual_seed(c_.seed);
      policy_ = algorithms::make_policy(root, c_.env);
      params_ = subscribe_parameters(context_, info(), c_, policy_->flat().numel(), c_.count("env_actor"));
    } else {
      const std::string policy = "policy_worker/" + std::to_string(info().rank % std::max(1, c_.count("policy_worker")));
      inference_ = core::zmq_inference_client(context_, await_stream(info(), "inference/" + policy, policy), info().name());
    }
    const std::string target = c_.sample_target(info().rank);
    samples_ = core::zmq_sample_sender(context_, await_stream(info(), "samples/" + target, target), info().name());
    metrics_ = std::make_unique<MetricsPusher>(context_, info());
    remember();  // a checkpoint before the first fragment (a replacement's) holds the start
  }

  void add_methods(runtime::Methods& m) override {
    m.on<Resend>([this](const Resend&) {
      resend_ = true;  // the act loop sends them, on its own socket
      return runtime::Void{};
    });
    m.on<SaveShard>([this](const SaveShard& s) {
      std::lock_guard lock(snapshots_mutex_);
      if (snapshots_.empty()) throw Error("env actor " + info().name() + " has sent no fragment yet");
      // A deterministic run saves the boundary the trainers are at; another one its newest.
      const Snapshot* snap = &snapshots_.back();
      if (c_.deterministic) {
        snap = nullptr;
        for (const auto& x : snapshots_)
          if (x.fragments == s.step) snap = &x;
        if (!snap) throw Error("env actor " + info().name() + " no longer holds its state after fragment " + std::to_string(s.step));
      }
      save_shard(s.dir, info(), snap->envs, {{"fragments", snap->fragments}, {"env_steps", snap->env_steps}});
      return runtime::Version{snap->fragments};
    });
    m.on<LoadShard>([this](const LoadShard& l) {
      Shard s = load_shard(l.dir, info());
      for (size_t k = 0; k < envs_.size(); ++k) envs_[k]->restore(s.with_prefix("env" + std::to_string(k) + "."));
      fragments_ = s.counters.at("fragments");
      steps_done_ = s.counters.at("env_steps");
      {
        std::lock_guard lock(snapshots_mutex_);
        snapshots_.clear();
      }
      remember();
      return runtime::Version{fragments_};
    });
  }

  void start() override {
    loop_.start(info().name(), life(), [this] { act(); });
  }
  void stop() override { loop_.join(); }
  core::Scalars counters() const override {
    return {{"env_steps", static_cast<double>(steps_done_.load())}, {"fragments", static_cast<double>(fragments_.load())}};
  }

 private:
  struct Track {  // one env batch's part of the fragment being collected
    std::vector<at::Tensor> obs, action, log_prob, value, reward, terminated, truncated, final_obs;
    uint64_t pending = 0;  // the inference request in flight for this batch
    int64_t step = 0;      // steps this batch has taken since the run began
    core::Batch request;
  };
  // The state after a fragment was sent: what a checkpoint at that boundary holds.
  struct Snapshot {
    int64_t fragments = 0, env_steps = 0;
    NamedTensors envs;
  };

  // The inference tags of the request for batch k's next step: in a deterministic run, the
  // version its fragment is acted with and a seed of its own.
  core::InferenceTags tags(size_t k, const Track& tr, int64_t fragment) const {
    if (!c_.deterministic) return {};
    return {fragment, action_seed(c_.seed, info().rank, static_cast<int>(k), tr.step)};
  }

  void ask(std::vector<Track>& tracks, size_t k, int64_t fragment) {
    tracks[k].request = core::Batch();
    tracks[k].request.set("obs", envs_[k]->obs().clone());
    if (!policy_) tracks[k].pending = inference_->submit(tracks[k].request, tags(k, tracks[k], fragment));
  }

  void act() {
    const int64_t T = c_.fragment_steps;
    std::vector<Track> tracks(envs_.size());
    for (size_t k = 0; k < envs_.size(); ++k) {
      tracks[k].step = fragments_ * T;
      ask(tracks, k, fragments_);
    }
    remember();
    double wait_s = 0;
    const auto started = std::chrono::steady_clock::now();
    while (life().checkpoint()) {
      core::Scalars stats;
      int64_t oldest = INT64_MAX;
      const int64_t fragment = fragments_;
      for (int64_t t = 0; t < T && !life().stopping(); ++t) {
        for (size_t k = 0; k < envs_.size() && !life().stopping(); ++k) {
          const auto w0 = std::chrono::steady_clock::now();
          auto answer = policy_ ? std::optional(act_inline(tracks[k], k, fragment)) : await(tracks[k].pending);
          if (!answer) break;  // stopping
          auto& [reply, version] = *answer;
          wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
          oldest = std::min(oldest, version);
          step(tracks[k], *envs_[k], reply, stats);
          // The next request goes out before the other batches step.
          ask(tracks, k, t + 1 < T ? fragment : fragment + 1);
        }
      }
      if (life().stopping()) break;
      int64_t fragment_steps = 0;
      // Env steps: a multi-agent env's agent rows move all its agents at once.
      for (const auto& e : envs_) fragment_steps += T * e->num_envs() / std::max<int64_t>(1, e->spec().layout.agents);
      stats.push_back({"env_steps", static_cast<double>(fragment_steps)});
      // Which fragment this is: the trainer takes none twice (a replacement is a new incarnation).
      stats.push_back({"fragment/incarnation", static_cast<double>(::getpid())});
      stats.push_back({"fragment/index", static_cast<double>(fragments_.load())});
      samples_->send(fragment_batch(tracks), oldest, stats);
      // An inline actor outruns the trainer; it waits for parameters newer than those it used,
      // so its next fragment is on-policy for the next update.
      if (policy_) wait_for_parameters(c_.deterministic ? fragment + 1 : oldest + 1);
      steps_done_ += fragment_steps;
      ++fragments_;
      remember();
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      metrics_->push(steps_done_, {{"env_steps", static_cast<double>(fragment_steps)},
                                   {"perf/actor_wait_share", wait_s / std::max(elapsed, 1e-9)}});
    }
  }

  // The policy worker's reply to request `id`; its unanswered requests go out again when it was
  // replaced. Nothing when the actor is stopping.
  std::optional<std::pair<core::Batch, int64_t>> await(uint64_t id) {
    const auto deadline = std::chrono::steady_clock::now() + 10min;
    while (!life().stopping()) {
      if (resend_.exchange(false)) inference_->resend();
      try {
        return inference_->wait(id, 250ms);
      } catch (const TimeoutError&) {
        if (std::chrono::steady_clock::now() > deadline) throw;
      }
    }
    return std::nullopt;
  }

  void step(Track& tr, envs::VecEnv& env, const core::Batch& reply, core::Scalars& stats) {
    at::Tensor a = reply["action"].clone();
    env.step(env.clip_actions(a));
    ++tr.step;
    tr.obs.push_back(tr.request["obs"]);
    tr.action.push_back(a);
    tr.log_prob.push_back(reply["log_prob"].clone());
    tr.value.push_back(reply["value"].clone());
    tr.reward.push_back(env.reward().clone());
    tr.terminated.push_back(env.terminated().clone());
    tr.truncated.push_back(env.truncated().clone());
    tr.final_obs.push_back(env.final_obs().clone());
    envs::FinishedEpisodes ended = envs::finished_episodes(env.terminated() | env.truncated(), env.episode_return(),
                                                           env.episode_length(), env.episode_won(), env.spec().layout.agents);
    for (size_t i = 0; i < ended.returns.size(); ++i) {
      stats.push_back({"episode/return", ended.returns[i]});
      stats.push_back({"episode/length", ended.lengths[i]});
      if (i < ended.wins.size()) stats.push_back({"episode/won", ended.wins[i]});
    }
  }

  // Env-major, so the bootstrap observation ([N, ...]) shares the batch's first dimension; the
  // ring's batches are rows of one fragment.
  core::Batch fragment_batch(std::vector<Track>& tracks) {
    std::vector<core::Batch> parts;
    for (size_t k = 0; k < tracks.size(); ++k) {
      Track& tr = tracks[k];
      auto em = [](std::vector<at::Tensor>& v) {
        at::Tensor x = at::stack(v, 1);
        v.clear();
        return x;
      };
      core::Batch f;
      f.set("obs", em(tr.obs));
      f.set("action", em(tr.action));
      f.set("log_prob", em(tr.log_prob));
      f.set("value", em(tr.value));
      f.set("reward", em(tr.reward));
      f.set("terminated", em(tr.terminated));
      f.set("truncated", em(tr.truncated));
      f.set("final_obs", em(tr.final_obs));
      f.set("bootstrap_obs", envs_[k]->obs().clone());
      parts.push_back(std::move(f));
    }
    return core::Batch::concat(parts);
  }

  // The state at this fragment boundary, kept for a checkpoint the trainers may ask for (they
  // trail the actors by a fragment or two).
  void remember() {
    Snapshot s{fragments_, steps_done_, {}};
    for (size_t k = 0; k < envs_.size(); ++k)
      for (auto& [name, t] : envs_[k]->save()) s.envs.emplace_back("env" + std::to_string(k) + "." + name, t);
    std::lock_guard lock(snapshots_mutex_);
    snapshots_.push_back(std::move(s));
    if (snapshots_.size() > 4) snapshots_.pop_front();
  }

  void wait_for_parameters(int64_t version) {
    while (version_ < version && !life().stopping())
      if (auto p = params_->latest(200ms)) {
        policy_->load_flat(p->tensors["flat"]);
        version_ = p->version;
      }
  }

  // The policy step in this process: parameters of the fragment's version (the newest when the
  // run is not deterministic), the first ones awaited.
  std::pair<core::Batch, int64_t> act_inline(const Track& tr, size_t k, int64_t fragment) {
    wait_for_parameters(c_.deterministic ? fragment : 0);
    if (auto p = params_->latest(0ms); p && !c_.deterministic) {
      policy_->load_flat(p->tensors["flat"]);
      version_ = p->version;
    }
    const core::InferenceTags t = tags(k, tr, fragment);
    if (t.seed) gen_.set_current_seed(t.seed);
    models::ActOutput out = policy_->act(tr.request["obs"], false, gen_);
    core::Batch reply;
    reply.set("action", out.action);
    reply.set("log_prob", out.log_prob);
    reply.set("value", out.value);
    return {reply, version_};
  }

  DistributedRlConfig c_;
  zmq::context_t context_{1};
  std::vector<std::unique_ptr<envs::VecEnv>> envs_;
  std::unique_ptr<models::Policy> policy_;  // inline mode only
  std::unique_ptr<core::ParameterSubscriber> params_;
  at::Generator gen_ = at::make_generator<at::CPUGeneratorImpl>(777);
  int64_t version_ = -1;
  std::unique_ptr<core::InferenceClient> inference_;
  std::atomic<bool> resend_{false};
  std::unique_ptr<core::SampleSender> samples_;
  std::unique_ptr<MetricsPusher> metrics_;
  std::atomic<int64_t> steps_done_{0}, fragments_{0};
  std::mutex snapshots_mutex_;
  std::deque<Snapshot> snapshots_;
  runtime::Loop loop_;
};

}  // namespace

runtime::RoleFactory env_actor_role() {
  return [](const runtime::WorkerInfo& i) { return std::make_unique<EnvActor>(i); };
}

}  // namespace flotilla::actors::rl
