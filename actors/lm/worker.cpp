// The RLHF worker roles: actor (trains the policy), rollout (the generation engine), ref (frozen
// reference log-probs), critic (value model) and reward (rules, commands or a reward model). With
// `placement: split` each role has workers of its own; with `placement: colocated` one group of
// workers hosts every role the algorithm uses and they take turns (the rollout generates with the
// actor's weights, and its KV cache exists only while it generates).
//
// A group's `parallel` layout (runtime/layout.hpp) decides what each rank holds: the actor and the
// critic train over dp x fsdp x tp (runtime::LayoutGroup), the rollout and the reference split
// their models over tp; a split rollout pulls its slice of each new version straight from the
// actor ranks' buffers by the reshard plan between the two layouts.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <filesystem>
#include <map>

#include "actors/lm/checkpoint.hpp"
#include "actors/lm/config.hpp"
#include "actors/lm/methods.hpp"
#include "actors/lm/rewards.hpp"
#include "actors/lm/rollout.hpp"
#include "actors/lm/stream.hpp"
#include "algorithms/advantages.hpp"
#include "algorithms/lm_losses.hpp"
#include "algorithms/lm_trainer.hpp"
#include "core/error.hpp"
#include "core/process.hpp"
#include "core/registry.hpp"
#include "core/safetensors.hpp"
#include "models/transformer.hpp"
#include "runtime/collective.hpp"
#include "runtime/reshard.hpp"
#include "runtime/worker.hpp"

namespace flotilla::actors::lm {
namespace fs = std::filesystem;
using runtime::Output;

namespace {

// The continuous generation's thread runs its tensor-parallel collectives on a group of its own,
// so they never interleave with those of a method running on another thread (a Generate call, or
// a colocated worker's training) in different orders on two ranks.
thread_local bool on_stream_lane = false;

models::TensorParallel on_lanes(models::TensorParallel calls, runtime::Collective* stream) {
  if (!stream || calls.size == 1) return calls;
  models::TensorParallel s = stream->tensor_parallel(calls.vocab_parallel), out = calls;
  out.all_reduce = [calls, s](at::Tensor& t) { on_stream_lane ? s.all_reduce(t) : calls.all_reduce(t); };
  out.all_gather_last = [calls, s](const at::Tensor& t) { return on_stream_lane ? s.all_gather_last(t) : calls.all_gather_last(t); };
  return out;
}

core::Batch one(const std::string& name, at::Tensor t) {
  core::Batch b;
  b.set(name, std::move(t));
  return b;
}

// Rows gathered from several workers carry sequence fields padded to each worker's own longest
// sequence; every per-position field is cut or padded to the width of this call's `tokens`.
core::Batch aligned(core::Batch b) {
  if (!b.contains("tokens")) return b;
  const int64_t width = std::max<int64_t>(b["tokens"].size(1) - 1, 0);
  for (const auto& name : std::vector<std::string>(b.names())) {
    const at::Tensor& t = b[name];
    if (name == "tokens" || t.dim() != 2 || t.size(1) == width) continue;
    b.set(name, t.size(1) > width ? t.narrow(1, 0, width) : at::constant_pad_nd(t, {0, width - t.size(1)}, 0));
  }
  return b;
}

// A model with, over several ranks, its collectives, and when it trains its optimizer.
struct Trained {
  std::unique_ptr<models::CausalLm> model;
  std::unique_ptr<algorithms::LmTrainer> trainer;
  std::unique_ptr<runtime::LayoutGroup> group;
};

// A rollout's weight sync in split placement: the plan from the actor's layout to the rollout's,
// made at the first sync and kept.
struct WeightPull {
  std::unique_ptr<runtime::Layout> from, to;
  std::unique_ptr<runtime::ReshardPlan> plan;
};

class LmWorker final : public runtime::Role {
 public:
  LmWorker(const runtime::WorkerInfo& info, std::string hosts) : Role(info), hosts_(std::move(hosts)) {}

  void configure(const core::ConfigView& root) override {
    c_ = RlhfConfig::read(root);
    layout_ = c_.group(hosts_).parallel;
    if (layout_.size() != info().world_size)
      throw Error("worker group " + hosts_ + " has " + std::to_string(info().world_size) + " ranks; its layout " + layout_.str() + " has " +
                  std::to_string(layout_.size()));
    at::set_num_threads(c_.group(hosts_).threads);
    at::manual_seed(static_cast<uint64_t>(root.get<int64_t>("seed", 1)));
    // Every rank makes its collectives in this order, so the rendezvous cannot cross.
    if (hosts("rollout") && layout_.tp > 1) {
      stream_tp_ = std::make_unique<runtime::Collective>(store("rollout.stream" + std::to_string(layout_.data_rank(info().rank))),
                                                         layout_.tp_rank(info().rank), layout_.tp);
      lockstep_.leader = layout_.tp_rank(info().rank) == 0;
      lockstep_.broadcast = [this](at::Tensor& t) { stream_tp_->broadcast(t, 0); };
    }
    if (hosts("actor")) {
      actor_ = trained("actor", c_.model_path, c_.family.head == "reward" ? "reward" : "", &c_.actor_optim);
      if (c_.family.head == "lm" && actor_.model->config().head != "lm")
        throw ConfigError(c_.model_path + " has a " + actor_.model->config().head + " head; the policy needs a language-model head");
    }
    if (hosts("rollout") && !actor_.model) rollout_ = trained("rollout", c_.model_path, "", nullptr);
    colocated_peaks_ = hosts("rollout") && actor_.model;
    if (hosts("rollout")) {
      weights_.model = rollout_.model ? rollout_.model.get() : actor_.model.get();
      stream_ = std::make_unique<RolloutStream>(weights_, c_, life(), stream_tp_ ? &lockstep_ : nullptr);
    }
    if (hosts("ref")) ref_ = trained("ref", c_.model_of("ref"), "", nullptr);
    if (hosts("critic")) critic_ = trained("critic", c_.model_of("critic"), "value", &c_.critic_optim);
    if (hosts("reward")) {
      if (c_.reward.kind == "model" && c_.family.generates()) {
        reward_model_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.reward_path));
        if (reward_model_->config().head != "reward")
          throw ConfigError(c_.reward_path + " has a " + reward_model_->config().head + " head; model.reward needs a reward head");
      }
      scorer_ = std::make_unique<Scorer>(c_, reward_model_.get());
    }
    if (colocated_peaks_) colocated_peaks_ = core::reset_peak_memory();  // the phases' peaks count from here
  }

  void start() override {
    if (stream_)
      stream_loop_.start(info().name() + " generation", life(), [this] {
        on_stream_lane = true;
        stream_->run();
      });
  }
  void stop() override {
    if (stream_) stream_->wake();
    stream_loop_.join();
  }

  core::Scalars counters() const override {
    // rollout/tokens: generated by Generate calls and by the continuous generation
    core::Scalars c = {{"version", static_cast<double>(version_.load())},
                       {"rollout/version", static_cast<double>(weights_.version.load())}};
    double tokens = static_cast<double>(generated_.load());
    if (stream_)
      for (auto& [k, v] : stream_->counters()) {
        if (k == "rollout/tokens") tokens += v;
        else c.push_back({k, v});
      }
    c.push_back({"rollout/tokens", tokens});
    return c;
  }

  void add_methods(runtime::Methods& m) override {
    m.on<Generate>([this](const Generate& g, const core::Batch& prompts) {
      if (!weights_.model) throw Error("this worker does not host the rollout role");
      enter(Phase::Generate);
      const int64_t version = weights_.version;
      return Output<runtime::Version>{{version}, generate(weights_, c_, g, prompts, life(), generated_)};
    });
    m.on<SyncWeights>([this](const SyncWeights& s) { return sync(s); });
    m.on<Submit>([this](const Submit& s, const core::Batch& rows) {
      enter(Phase::Generate);
      need_stream().submit(s, rows);
      return runtime::Void{};
    });
    m.on<CollectGroups>([this](const CollectGroups& c, const core::Batch&) {
      core::Batch rows = need_stream().collect(std::chrono::milliseconds(c.milliseconds));
      return Output<runtime::Stats>{{stream_->counters()}, std::move(rows)};
    });
    m.on<Follow>([this](const Follow& f) {
      need_stream().follow(f);
      return runtime::Void{};
    });
    m.on<PublishWeights>([this](const PublishWeights&) {
      const models::CausalLm& model = need(actor_.model, "actor");
      if (!published_) published_ = std::make_unique<runtime::Layout>(runtime::param_infos(model), layout_);
      core::Batch b = one("flat", runtime::own_buffer(model, *published_, info().rank));
      b.meta()["version"] = std::to_string(version_);
      return Output<runtime::Version>{{version_}, std::move(b)};
    });
    // Given the response mask (and shared prompts), only the response positions are computed.
    auto mask = [](const core::Batch& b, const algorithms::LmOptimConfig& o) {
      return o.shared_prompts && b.contains("response_mask") ? b["response_mask"] : at::Tensor();
    };
    m.on<ActorLogProbs>([this, mask](const ActorLogProbs&, const core::Batch& b) {
      const auto& o = c_.actor_optim;
      return Output<runtime::Void>{{}, one("old_log_prob", algorithms::sequence_log_probs(need(actor_.model, "actor"), b["tokens"], o.micro_batch, mask(b, o)))};
    });
    m.on<RefLogProbs>([this, mask](const RefLogProbs&, const core::Batch& b) {
      const auto& o = c_.actor_optim;
      return Output<runtime::Void>{{}, one("ref_log_prob", algorithms::sequence_log_probs(need(ref_.model, "ref"), b["tokens"], o.micro_batch, mask(b, o)))};
    });
    m.on<CriticValues>([this, mask](const CriticValues&, const core::Batch& b) {
      const auto& o = c_.critic_optim;
      return Output<runtime::Void>{{}, one("values", algorithms::sequence_values(need(critic_.model, "critic"), b["tokens"], o.micro_batch, mask(b, o)))};
    });
    m.on<Score>([this](const Score& s, const core::Batch& b) {
      if (!scorer_) throw Error("this worker does not host the reward role");
      Scorer::Scores r = scorer_->score(b, s.split, s.check);
      runtime::Stats stats{{{"reward/errors", static_cast<double>(r.errors)}}};
      return Output<runtime::Stats>{stats, one("scores", r.scores)};
    });
    m.on<RewardHeadScores>([this](const RewardHeadScores&, const core::Batch& b) {
      return Output<runtime::Void>{{}, one("scores", algorithms::sequence_rewards(need(actor_.model, "actor"), b["tokens"], b["last"], c_.actor_optim.micro_batch))};
    });
    m.on<EstimateAdvantages>([this](const EstimateAdvantages& a, const core::Batch& b) { return advantages(a, aligned(b)); });
    m.on<UpdateActor>([this](const UpdateActor& u, const core::Batch& b) {
      need(actor_.model, "actor");
      const uint64_t seed = u.seed * 1000003ull + data_rank();  // a tensor-parallel replica's ranks draw alike
      enter(Phase::Train);
      runtime::Stats s{actor_.trainer->update_policy(aligned(b), c_.loss, seed)};
      ++version_;
      if (colocated_peaks_) {
        s.values.push_back({"memory/generate_peak_mib", generate_peak_mib_});
        s.values.push_back({"memory/train_peak_mib", core::peak_memory_mib()});
      }
      return s;
    });
    m.on<UpdateCritic>([this](const UpdateCritic& u, const core::Batch& b) {
      need(critic_.model, "critic");
      const uint64_t seed = u.seed * 1000003ull + 7 + data_rank();
      enter(Phase::Train);
      return runtime::Stats{critic_.trainer->update_critic(aligned(b), c_.value_clip, seed)};
    });
    m.on<SaveActor>([this](const SaveActor& s) {
      save(actor_, actor_saver_, s, "actor");
      return runtime::Version{version_};
    });
    m.on<LoadActor>([this](const LoadActor& l) {
      load_trained(need(actor_.model, "actor"), l.optimizer ? actor_.trainer.get() : nullptr, actor_.group.get(), info().rank, l.dir);
      version_ = l.version;
      weights_.version = l.version;
      return runtime::Version{version_};
    });
    m.on<SaveCritic>([this](const SaveCritic& s) {
      save(critic_, critic_saver_, s, "critic");
      return runtime::Version{version_};
    });
    m.on<LoadCritic>([this](const LoadCritic& l) {
      load_trained(need(critic_.model, "critic"), l.optimizer ? critic_.trainer.get() : nullptr, critic_.group.get(), info().rank, l.dir);
      return runtime::Version{version_};
    });
  }

 private:
  // A save now, or (s.background) a copy now written by the role's saver while the worker goes on.
  template <class M>
  void save(Trained& t, BackgroundSaver& saver, const M& s, const std::string& role) {
    const algorithms::LmTrainer* trainer = s.optimizer ? t.trainer.get() : nullptr;
    if (s.background) return saver.save(need(t.model, role), trainer, t.group.get(), info().rank, s.dir, s.step);
    saver.wait();  // the files of a save before it come first
    save_trained(need(t.model, role), trainer, t.group.get(), info().rank, s.dir);
  }

  static models::CausalLm& need(const std::unique_ptr<models::CausalLm>& m, const std::string& role) {
    if (!m) throw Error("this worker does not host the " + role + " role");
    return *m;
  }
  RolloutStream& need_stream() {
    if (!stream_) throw Error("this worker does not host the rollout role");
    return *stream_;
  }

  // The weights of `s.version` into the rollout, between two engine steps: generation stops only
  // while they are copied (the pull from the actor ranks comes first, while it generates).
  Synced sync(const SyncWeights& s) {
    if (!weights_.model) throw Error("this worker does not host the rollout role");
    Synced out{.version = s.version};
    at::Tensor pulled;
    if (rollout_.model) pulled = pull(s, out);
    if (stream_) stream_->await_turn(s.version);
    std::chrono::steady_clock::time_point locked;
    {
      std::lock_guard lock(weights_.mutex);
      locked = std::chrono::steady_clock::now();
      if (rollout_.model) unflatten(*rollout_.model, pulled);  // a model of its own: its slice of the actor's weights
      weights_.version = s.version;                           // colocated: it generates with the actor's
      if (stream_) {
        const RolloutStream::Landed landed = stream_->on_update(s.on_update);
        out.inflight = landed.inflight;
        out.step = landed.step;
      }
    }
    out.pause_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - locked).count();
    if (stream_) stream_->wake();
    return out;
  }

  // This rank's slice of the actor's weights of `s.version`, from the actor ranks that hold it.
  at::Tensor pull(const SyncWeights& s, Synced& out) {
    if (s.holders.empty() || s.holders.size() != s.objects.size())
      throw Error("rollout.sync needs one holder and object per actor rank (actor.publish's), got " + std::to_string(s.holders.size()) +
                  " holders and " + std::to_string(s.objects.size()) + " objects");
    if (!pull_.plan) {
      const auto params = runtime::param_infos(*rollout_.model);
      const runtime::Parallel& actor = c_.group("actor").parallel;
      pull_.from = std::make_unique<runtime::Layout>(
          runtime::param_infos(*rollout_.model, models::splits_vocabulary(rollout_.model->config(), actor.tp)), actor);
      pull_.to = std::make_unique<runtime::Layout>(params, layout_);
      pull_.plan = std::make_unique<runtime::ReshardPlan>(runtime::ReshardPlan::make(*pull_.from, *pull_.to));
    }
    std::vector<runtime::ShardSource> sources;
    for (size_t i = 0; i < s.holders.size(); ++i) sources.push_back({s.holders[i], static_cast<uint64_t>(s.objects[i])});
    at::Tensor into = at::empty({pull_.to->local_size(info().rank)}, at::kFloat);
    const runtime::TransferOptions options{static_cast<int64_t>(c_.sync_bucket_mb * (1 << 20)), c_.sync_window};
    const runtime::Transfer t = runtime::receive(*pull_.plan, info().rank, sources, s.version, into, options, runtime::Fetcher::current());
    out.fetch_s = t.seconds;
    out.received_bytes = t.sent_bytes + t.local_bytes;
    out.buckets = t.buckets;
    return into;
  }

  // A colocated worker's memory by phase: the peak resident memory of generating (from the end of
  // an update to the start of the next: generation, reference and reward passes) and of training
  // (the critic's and the actor's updates), each phase starting its peak afresh.
  enum class Phase { Generate, Train };
  void enter(Phase p) {
    if (!colocated_peaks_ || p == phase_) return;
    if (phase_ == Phase::Generate) generate_peak_mib_ = core::peak_memory_mib();
    phase_ = p;
    core::reset_peak_memory();
  }

  bool hosts(const std::string& role) const { return hosts_ == "colocated" ? c_.uses(role) : hosts_ == role; }
  uint64_t data_rank() const { return static_cast<uint64_t>(layout_.data_rank(info().rank)); }
  std::string store(const std::string& what) const {
    return (fs::path(info().name_dir).parent_path() / (hosts_ + "." + what + ".c10d")).string();
  }

  // A role's model in this group's layout: its collectives (c10d, Gloo on CPU) when the group has
  // several ranks, its tensor-parallel slice, and with `optim` its trainer.
  Trained trained(const std::string& role, const std::string& path, const std::string& head, const algorithms::LmOptimConfig* optim) {
    Trained t;
    const bool collectives = optim ? layout_.size() > 1 : layout_.tp > 1;
    if (collectives) t.group = std::make_unique<runtime::LayoutGroup>(store(role), info().rank, optim ? layout_ : runtime::Parallel{layout_.data_ranks(), 1, layout_.tp});
    models::TensorParallel tp = t.group ? t.group->tensor_parallel() : models::TensorParallel{};
    // The model the continuous generation runs (the rollout's, or a colocated actor's).
    if (role == "rollout" || (role == "actor" && hosts("rollout"))) tp = on_lanes(tp, stream_tp_.get());
    t.model = std::make_unique<models::CausalLm>(models::CausalLm::load(path, head, tp));
    if (optim) {
      t.trainer = std::make_unique<algorithms::LmTrainer>(*t.model, *optim);
      if (t.group) t.trainer->set_group(t.group.get());
    }
    return t;
  }

  // A whole step's advantages, with the KL to the reference in the reward or beside it.
  Output<runtime::Stats> advantages(const EstimateAdvantages& a, const core::Batch& b) {
    algorithms::AdvantageInputs in;
    in.scores = b["scores"];
    in.response_mask = b["response_mask"];
    in.group_size = c_.group_size;
    in.norm_by_std = c_.norm_by_std;
    in.gamma = c_.gamma, in.lam = c_.lam;
    core::Scalars stats;
    if (b.contains("ref_log_prob")) {
      in.kl = algorithms::kl_estimate(b["old_log_prob"], b["ref_log_prob"], c_.loss.kl_estimator);
      stats.push_back({"actor/reward_kl", algorithms::masked_mean(in.kl, in.response_mask).item<double>()});
      if (c_.kl_in == "reward") in.kl_coef = a.kl_coef;
    }
    if (b.contains("values")) in.values = b["values"];
    algorithms::Advantages adv = algorithms::advantage_estimators().at(c_.family.estimator)(in);
    const at::Tensor penalized = in.kl_coef > 0 ? in.scores - in.kl_coef * (in.kl * in.response_mask).sum(1) : in.scores;
    stats.push_back({"critic/rewards/mean", penalized.mean().item<double>()});
    stats.push_back({"critic/advantages/mean", algorithms::masked_mean(adv.advantages, in.response_mask).item<double>()});
    core::Batch out = one("advantages", adv.advantages);
    if (adv.returns.defined()) out.set("returns", adv.returns);
    return {runtime::Stats{stats}, out};
  }

  std::string hosts_;  // the role this worker hosts, or "colocated"
  RlhfConfig c_;
  runtime::Parallel layout_;  // this group's
  std::unique_ptr<runtime::Collective> stream_tp_;  // the continuous generation's tensor-parallel group
  Lockstep lockstep_;
  Trained actor_, critic_, rollout_, ref_;
  BackgroundSaver actor_saver_, critic_saver_;  // before the models they write go: declared after them
  std::unique_ptr<runtime::Layout> published_;  // the actor's layout, as PublishWeights cuts buffers
  WeightPull pull_;
  std::unique_ptr<models::CausalLm> reward_model_;
  std::unique_ptr<Scorer> scorer_;
  RolloutWeights weights_;
  std::unique_ptr<RolloutStream> stream_;  // continuous generation, when it hosts the rollout
  runtime::Loop stream_loop_;
  std::atomic<int64_t> version_{0}, generated_{0};
  bool colocated_peaks_ = false;  // reports memory by phase (a worker that both generates and trains)
  Phase phase_ = Phase::Generate;
  double generate_peak_mib_ = 0;
};

}  // namespace

void add_roles(core::Registry<runtime::RoleFactory>& roles) {
  for (const std::string r : {"actor", "rollout", "ref", "critic", "reward", "colocated"})
    roles.add(r, [r](const runtime::WorkerInfo& i) { return std::make_unique<LmWorker>(i, r); });
}

}  // namespace flotilla::actors::lm
