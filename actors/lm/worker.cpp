// The RLHF worker roles: actor (trains the policy), rollout (the generation engine), ref (frozen
// reference log-probs), critic (value model) and reward (rules, commands or a reward model). With
// `placement: split` each role has workers of its own; with `placement: colocated` one group of
// workers hosts every role the algorithm uses and they take turns (the rollout generates with the
// actor's own weights, and its KV cache exists only while it generates).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <filesystem>
#include <map>

#include "actors/lm/config.hpp"
#include "actors/lm/methods.hpp"
#include "actors/lm/rewards.hpp"
#include "actors/lm/rollout.hpp"
#include "algorithms/advantages.hpp"
#include "algorithms/lm_losses.hpp"
#include "algorithms/lm_trainer.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"
#include "core/safetensors.hpp"
#include "models/transformer.hpp"
#include "runtime/collective.hpp"
#include "runtime/worker.hpp"

namespace flotilla::actors::lm {
namespace fs = std::filesystem;
using runtime::Output;

namespace {

// A model's weights and its optimizer's state in a directory: the HF files, plus optimizer.safetensors.
void save_trained(const models::CausalLm& lm, const algorithms::LmTrainer* trainer, const fs::path& dir) {
  lm.save(dir);
  if (trainer) core::save_safetensors(dir / "optimizer.safetensors", trainer->state(), {});
}
void load_trained(models::CausalLm& lm, algorithms::LmTrainer* trainer, const fs::path& dir) {
  lm.load_weights(dir);
  if (trainer && fs::exists(dir / "optimizer.safetensors")) {
    std::map<std::string, at::Tensor> s;
    for (auto& [n, t] : core::load_safetensors(dir / "optimizer.safetensors").tensors) s[n] = t;
    trainer->load_state(s);
  }
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

// A trained model with its optimizer and, over several ranks, its gradient all-reduce.
struct Trained {
  std::unique_ptr<models::CausalLm> model;
  std::unique_ptr<algorithms::LmTrainer> trainer;
  std::unique_ptr<runtime::Collective> sync;
};

class LmWorker final : public runtime::Role {
 public:
  LmWorker(const runtime::WorkerInfo& info, std::string hosts) : Role(info), hosts_(std::move(hosts)) {}

  void configure(const core::ConfigView& root) override {
    c_ = RlhfConfig::read(root);
    at::set_num_threads(c_.group(hosts_).threads);
    at::manual_seed(static_cast<uint64_t>(root.get<int64_t>("seed", 1)));
    if (hosts("actor")) {
      actor_ = trained("actor", c_.model_path, c_.family.head == "reward" ? "reward" : "", c_.actor_optim);
      if (c_.family.head == "lm" && actor_.model->config().head != "lm")
        throw ConfigError(c_.model_path + " has a " + actor_.model->config().head + " head; the policy needs a language-model head");
    }
    if (hosts("rollout") && !actor_.model) rollout_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.model_path));
    if (hosts("rollout")) weights_.model = rollout_ ? rollout_.get() : actor_.model.get();
    if (hosts("ref")) ref_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.ref_path.empty() ? c_.model_path : c_.ref_path));
    if (hosts("critic")) critic_ = trained("critic", c_.critic_path.empty() ? c_.model_path : c_.critic_path, "value", c_.critic_optim);
    if (hosts("reward")) {
      if (c_.reward.kind == "model" && c_.family.generates()) {
        reward_model_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.reward_path));
        if (reward_model_->config().head != "reward")
          throw ConfigError(c_.reward_path + " has a " + reward_model_->config().head + " head; model.reward needs a reward head");
      }
      scorer_ = std::make_unique<Scorer>(c_, reward_model_.get());
    }
  }

  core::Scalars counters() const override {
    return {{"version", static_cast<double>(version_.load())},
            {"rollout/version", static_cast<double>(weights_.version.load())},
            {"rollout/tokens", static_cast<double>(generated_.load())}};
  }

  void add_methods(runtime::Methods& m) override {
    m.on<Generate>([this](const Generate& g, const core::Batch& prompts) {
      if (!weights_.model) throw Error("this worker does not host the rollout role");
      const int64_t version = weights_.version;
      return Output<runtime::Version>{{version}, generate(weights_, c_, g, prompts, life(), generated_)};
    });
    m.on<SyncWeights>([this](const SyncWeights& s, const core::Batch& flat) {
      std::lock_guard lock(weights_.mutex);
      if (rollout_) unflatten(*rollout_, flat["flat"]);  // a model of its own: the actor's weights
      weights_.version = s.version;                     // colocated: it generates with the actor's
      return runtime::Version{s.version};
    });
    m.on<ActorWeights>([this](const ActorWeights&) {
      return Output<runtime::Version>{{version_}, one("flat", flatten(need(actor_.model, "actor")))};
    });
    m.on<ActorLogProbs>([this](const ActorLogProbs&, const core::Batch& b) {
      return Output<runtime::Void>{{}, one("old_log_prob", algorithms::sequence_log_probs(need(actor_.model, "actor"), b["tokens"], c_.actor_optim.micro_batch))};
    });
    m.on<RefLogProbs>([this](const RefLogProbs&, const core::Batch& b) {
      return Output<runtime::Void>{{}, one("ref_log_prob", algorithms::sequence_log_probs(need(ref_, "ref"), b["tokens"], c_.actor_optim.micro_batch))};
    });
    m.on<CriticValues>([this](const CriticValues&, const core::Batch& b) {
      return Output<runtime::Void>{{}, one("values", algorithms::sequence_values(need(critic_.model, "critic"), b["tokens"], c_.critic_optim.micro_batch))};
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
      const uint64_t seed = u.seed * 1000003ull + static_cast<uint64_t>(info().rank);
      runtime::Stats s{actor_.trainer->update_policy(aligned(b), c_.loss, seed)};
      ++version_;
      return s;
    });
    m.on<UpdateCritic>([this](const UpdateCritic& u, const core::Batch& b) {
      need(critic_.model, "critic");
      const uint64_t seed = u.seed * 1000003ull + 7 + static_cast<uint64_t>(info().rank);
      return runtime::Stats{critic_.trainer->update_critic(aligned(b), c_.value_clip, seed)};
    });
    m.on<SaveActor>([this](const SaveActor& s) {
      if (info().rank == 0) save_trained(need(actor_.model, "actor"), s.optimizer ? actor_.trainer.get() : nullptr, s.dir);
      return runtime::Version{version_};
    });
    m.on<LoadActor>([this](const LoadActor& l) {
      load_trained(need(actor_.model, "actor"), l.optimizer ? actor_.trainer.get() : nullptr, l.dir);
      version_ = l.version;
      weights_.version = l.version;
      return runtime::Version{version_};
    });
    m.on<SaveCritic>([this](const SaveCritic& s) {
      if (info().rank == 0) save_trained(need(critic_.model, "critic"), s.optimizer ? critic_.trainer.get() : nullptr, s.dir);
      return runtime::Version{version_};
    });
    m.on<LoadCritic>([this](const LoadCritic& l) {
      load_trained(need(critic_.model, "critic"), l.optimizer ? critic_.trainer.get() : nullptr, l.dir);
      return runtime::Version{version_};
    });
  }

 private:
  static models::CausalLm& need(const std::unique_ptr<models::CausalLm>& m, const std::string& role) {
    if (!m) throw Error("this worker does not host the " + role + " role");
    return *m;
  }
  bool hosts(const std::string& role) const { return hosts_ == "colocated" ? c_.uses(role) : hosts_ == role; }

  Trained trained(const std::string& role, const std::string& path, const std::string& head, const algorithms::LmOptimConfig& optim) {
    Trained t;
    t.model = std::make_unique<models::CausalLm>(models::CausalLm::load(path, head));
    t.trainer = std::make_unique<algorithms::LmTrainer>(*t.model, optim);
    if (info().world_size > 1) {
      // Data-parallel ranks average their gradients (c10d, Gloo on CPU) before each step.
      const fs::path store = fs::path(info().name_dir).parent_path() / (hosts_ + "." + role + ".c10d");
      t.sync = std::make_unique<runtime::Collective>(store, info().rank, info().world_size);
      t.trainer->set_gradient_sync([s = t.sync.get()](const std::vector<at::Tensor>& g) { s->allreduce_mean(g); });
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
  Trained actor_, critic_;
  std::unique_ptr<models::CausalLm> rollout_, ref_, reward_model_;
  std::unique_ptr<Scorer> scorer_;
  RolloutWeights weights_;
  std::atomic<int64_t> version_{0}, generated_{0};
};

}  // namespace

void add_roles(core::Registry<runtime::RoleFactory>& roles) {
  for (const std::string r : {"actor", "rollout", "ref", "critic", "reward", "colocated"})
    roles.add(r, [r](const runtime::WorkerInfo& i) { return std::make_unique<LmWorker>(i, r); });
}

}  // namespace flotilla::actors::lm
