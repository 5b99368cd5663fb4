#include "actors/lm_roles.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <zmq.hpp>

#include "actors/collective.hpp"
#include "actors/rl_roles.hpp"
#include "actors/worker_group.hpp"
#include "core/error.hpp"
#include "core/name_service.hpp"
#include "core/names.hpp"
#include "core/safetensors.hpp"
#include "models/generation.hpp"
#include "models/transformer.hpp"

namespace flotilla::actors {
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kAlgos = {"sft", "reward_model", "dpo", "ppo", "grpo", "rloo", "reinforce_pp", "online_dpo"};
const std::vector<std::string> kRoles = {"actor", "rollout", "ref", "critic", "reward"};

}  // namespace

RlhfConfig RlhfConfig::read(core::ConfigView root) {
  RlhfConfig c;
  core::ConfigView algo = root.section("algo");
  c.algo = algo.choice("name", "grpo", kAlgos);
  const bool rl = c.algo == "ppo" || c.algo == "grpo" || c.algo == "rloo" || c.algo == "reinforce_pp";
  c.estimator = c.algo == "ppo" ? "gae" : rl ? c.algo : "";
  c.batch_size = algo.get<int64_t>("batch_size", 16, core::at_least<int64_t>(1));
  const int64_t default_group = c.algo == "grpo" || c.algo == "rloo" || c.algo == "online_dpo" ? 4 : 1;
  c.group_size = algo.get<int64_t>("group_size", default_group, core::in_range<int64_t>(1, 4096));
  if ((c.algo == "grpo" || c.algo == "rloo" || c.algo == "online_dpo") && c.group_size < 2)
    algo.fail("group_size", c.algo + " compares the samples of a prompt: group_size must be at least 2");
  c.norm_by_std = algo.get<bool>("norm_by_std", true);
  c.gamma = algo.get<double>("gamma", 1.0, core::in_range(0.0, 1.0));
  c.lam = algo.get<double>("lam", 0.95, core::in_range(0.0, 1.0));
  core::ConfigView kl = algo.section("kl");
  c.kl_coef = kl.get<double>("coef", 0.0, core::at_least(0.0));
  c.kl_in = kl.choice("in", c.algo == "ppo" || c.algo == "reinforce_pp" ? "reward" : "loss", {"loss", "reward"});
  c.loss.kl_estimator = kl.choice("estimator", "k3", {"k1", "k2", "k3"});
  c.kl_target = kl.get<double>("target", 0.0, core::at_least(0.0));
  c.kl_horizon = kl.get<double>("horizon", 10000.0, core::greater_than(0.0));
  if (c.kl_target > 0 && c.kl_in != "reward") kl.fail("target", "an adaptive KL coefficient applies to the KL in the reward (kl.in: reward)");
  if (c.kl_in == "loss") c.loss.kl_loss_coef = c.kl_coef;
  c.dynamic_sampling = algo.get<bool>("dynamic_sampling", false);
  if (c.dynamic_sampling && c.group_size < 2) algo.fail("dynamic_sampling", "dynamic sampling drops groups whose rewards are all equal: it needs group_size >= 2");
  core::ConfigView overlong = algo.section("overlong");
  c.overlong_buffer = overlong.get<int64_t>("buffer", 0, core::at_least<int64_t>(0));
  c.overlong_penalty = overlong.get<double>("penalty", 1.0, core::at_least(0.0));
  c.loss.loss = c.algo == "sft" ? "sft" : (c.algo == "dpo" || c.algo == "online_dpo") ? "dpo" : "ppo";
  c.loss.clip_low = algo.get<double>("clip_low", 0.2, core::in_range(0.0, 1.0));
  c.loss.clip_high = algo.get<double>("clip_high", c.loss.clip_low, core::at_least(0.0));
  c.loss.aggregation = algo.choice("loss_agg", "token-mean", {"token-mean", "seq-mean", "seq-sum"});
  c.loss.entropy_coef = algo.get<double>("entropy_coef", 0.0, core::at_least(0.0));
  core::ConfigView dpo = algo.section("dpo");
  c.loss.dpo_beta = dpo.get<double>("beta", 0.1, core::greater_than(0.0));
  c.loss.dpo_kind = dpo.choice("kind", "sigmoid", {"sigmoid", "ipo"});
  c.loss.label_smoothing = dpo.get<double>("label_smoothing", 0.0, core::in_range(0.0, 0.5));
  c.loss.dpo_nll_coef = dpo.get<double>("nll_coef", 0.0, core::at_least(0.0));
  const double default_lr = c.algo == "sft" || c.algo == "reward_model" ? 1e-3 : 1e-5;
  c.actor_optim = algorithms::LmOptimConfig::read(algo.section("actor"), default_lr);
  core::ConfigView critic = algo.section("critic");
  if (c.algo == "ppo") {
    c.critic_optim = algorithms::LmOptimConfig::read(critic, 1e-5);
    c.value_clip = critic.get<double>("value_clip", 0.2, core::greater_than(0.0));
  } else if (root.section("algo").has("critic")) {
    algo.fail("critic", "only ppo trains a critic, not '" + c.algo + "'");
  }

  core::ConfigView model = root.section("model");
  c.model_path = model.get<std::string>("path", "");
  if (c.model_path.empty()) model.fail("path", "set model.path to a model directory (make one with `flotilla lm init`)");
  c.tokenizer = model.get<std::string>("tokenizer", "");
  c.ref_path = model.get<std::string>("ref", "");
  c.critic_path = model.get<std::string>("critic", "");
  c.reward_path = model.get<std::string>("reward", "");

  core::ConfigView rollout = root.section("rollout");
  c.max_new_tokens = rollout.get<int64_t>("max_new_tokens", 32, core::in_range<int64_t>(1, 1 << 20));
  c.temperature = rollout.get<double>("temperature", 1.0, core::at_least(0.0));
  c.top_p = rollout.get<double>("top_p", 1.0, core::in_range(0.0, 1.0));
  c.top_k = rollout.get<int64_t>("top_k", 0, core::at_least<int64_t>(0));
  c.block_size = rollout.get<int64_t>("block_size", 16, core::in_range<int64_t>(1, 4096));
  c.num_blocks = rollout.get<int64_t>("num_blocks", 1024, core::at_least<int64_t>(1));
  c.max_batch = rollout.get<int64_t>("max_batch", 64, core::at_least<int64_t>(1));
  if (c.overlong_buffer >= c.max_new_tokens)
    overlong.fail("buffer", "the overlong buffer must be shorter than rollout.max_new_tokens (" + std::to_string(c.max_new_tokens) + ")");

  // The roles this algorithm uses.
  c.roles = {"actor"};
  if (c.algo != "reward_model") c.roles.push_back("rollout");  // also for validation generations
  if (c.needs_ref()) c.roles.push_back("ref");
  if (c.algo == "ppo") c.roles.push_back("critic");
  c.reward_kind = root.section("reward").choice("kind", "rule", {"rule", "model", "command"});
  if (c.reward_kind == "model" && c.generates()) c.roles.push_back("reward");
  if (c.reward_kind == "model" && c.reward_path.empty() && c.generates())
    model.fail("reward", "reward.kind: model needs model.reward, a reward-model directory (train one with algo.name: reward_model)");

  c.placement = root.choice("placement", "colocated", {"colocated", "split"});
  std::map<std::string, Group> given;
  for (auto w : root.list("workers")) {
    Group g;
    g.role = w.choice("role", "actor", kRoles);
    g.count = w.get<int>("count", 1, core::in_range(1, 1024));
    g.threads = w.get<int>("threads", 1, core::in_range(1, 256));
    if (given.count(g.role)) w.fail("role", "role '" + g.role + "' is listed twice");
    if (!c.uses(g.role)) w.fail("role", c.algo + " does not use a '" + g.role + "' role");
    if (c.placement == "colocated" && g.role != "actor")
      w.fail("role", "with placement: colocated every role runs in the actor's workers; list only role: actor (or use placement: split)");
    given[g.role] = g;
  }
  if (c.placement == "colocated") {
    Group g = given.count("actor") ? given["actor"] : Group{"actor", 1, 1};
    g.role = "colocated";
    c.workers.push_back(g);
  } else {
    for (const auto& r : c.roles) c.workers.push_back(given.count(r) ? given[r] : Group{r, 1, 1});
  }
  return c;
}

bool RlhfConfig::uses(const std::string& role) const { return std::find(roles.begin(), roles.end(), role) != roles.end(); }
bool RlhfConfig::generates() const { return algo != "sft" && algo != "reward_model" && algo != "dpo"; }
bool RlhfConfig::needs_ref() const { return algo == "dpo" || algo == "online_dpo" || kl_coef > 0; }
std::string RlhfConfig::group_of(const std::string& role) const { return placement == "colocated" ? "colocated" : role; }
const RlhfConfig::Group& RlhfConfig::group(const std::string& name) const {
  for (const auto& g : workers)
    if (g.role == name) return g;
  throw Error("no worker group '" + name + "'");
}

namespace {

nlohmann::json parse_args(const std::string& args) {
  if (args.empty()) return nlohmann::json::object();
  try {
    return nlohmann::json::parse(args);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError("arguments are not valid JSON: " + std::string(e.what()));
  }
}

// All parameters as one flat float tensor (the weight broadcast), and back.
at::Tensor flatten(const models::CausalLm& lm) {
  std::vector<at::Tensor> parts;
  for (const auto& [name, p] : lm.named_parameters()) parts.push_back(p.detach().reshape({-1}));
  return at::cat(parts);
}
void unflatten(models::CausalLm& lm, const at::Tensor& flat) {
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& [name, p] : lm.named_parameters()) {
    if (offset + p.numel() > flat.numel()) throw FormatError("the weights received are smaller than the model");
    p.copy_(flat.slice(0, offset, offset + p.numel()).view(p.sizes()));
    offset += p.numel();
  }
  if (offset != flat.numel())
    throw FormatError("the weights received have " + std::to_string(flat.numel()) + " values, the model " + std::to_string(offset));
}

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

std::string scalars_json(const core::Scalars& s) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : s) j[k] = v;
  return j.dump();
}

// Prompts in (`prompt_tokens` [P, L] right-padded, `prompt_len` [P]); `n` samples of each out,
// rows p*n .. p*n+n-1, in the sequence layout of algorithms/lm_trainer.hpp plus `last` (each
// row's last token), `rollout_log_prob`, `response_length` and `truncated` (ended by the length
// limit).
core::Batch generate(models::CausalLm& lm, const RlhfConfig& c, const nlohmann::json& a, const core::Batch& prompts,
                     int64_t version) {
  // The engine's KV cache lives only for this call.
  models::GenerationEngine engine(lm, {.block_size = c.block_size, .num_blocks = c.num_blocks, .max_batch = c.max_batch});
  engine.set_policy_version(version);
  const int n = a.value("n", 1);
  const at::Tensor pt = prompts["prompt_tokens"].contiguous(), pl = prompts["prompt_len"].contiguous();
  const auto prompt = pt.accessor<int64_t, 2>();
  const auto prompt_len = pl.accessor<int64_t, 1>();
  const int64_t P = pt.size(0);
  models::SamplingParams sampling;
  sampling.temperature = a.value("temperature", c.temperature);
  sampling.top_p = a.value("top_p", c.top_p);
  sampling.top_k = a.value("top_k", c.top_k);
  sampling.max_new_tokens = a.value("max_new_tokens", c.max_new_tokens);
  sampling.stop_tokens = a.value("stop", std::vector<int32_t>{});
  const uint64_t seed = a.value("seed", uint64_t{0});
  for (int64_t p = 0; p < P; ++p) {
    models::GenerationRequest r;
    r.id = p;
    for (int64_t t = 0; t < prompt_len[p]; ++t) r.prompt.push_back(static_cast<int32_t>(prompt[p][t]));
    r.n = n;
    r.sampling = sampling;
    r.sampling.seed = seed + static_cast<uint64_t>(p) * static_cast<uint64_t>(n);
    engine.submit(std::move(r));
  }
  std::vector<models::Generation> gens = engine.run();
  std::sort(gens.begin(), gens.end(), [](const auto& x, const auto& y) {
    return std::tie(x.request_id, x.sample) < std::tie(y.request_id, y.sample);
  });
  const int64_t B = P * n;
  if (static_cast<int64_t>(gens.size()) != B) throw Error("the engine returned " + std::to_string(gens.size()) + " of " + std::to_string(B) + " samples");
  int64_t T = 1;
  for (const auto& g : gens) T = std::max(T, prompt_len[g.request_id] + static_cast<int64_t>(g.tokens.size()));
  at::Tensor tokens = at::zeros({B, T}, at::kLong), mask = at::zeros({B, T - 1}), lp = at::zeros({B, T - 1});
  at::Tensor resp_len = at::zeros({B}, at::kLong), last = at::zeros({B}, at::kLong), truncated = at::zeros({B});
  auto tok = tokens.accessor<int64_t, 2>();
  auto m = mask.accessor<float, 2>(), l = lp.accessor<float, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& g = gens[static_cast<size_t>(b)];
    const int64_t len = prompt_len[g.request_id], R = static_cast<int64_t>(g.tokens.size());
    for (int64_t t = 0; t < len; ++t) tok[b][t] = prompt[g.request_id][t];
    for (int64_t i = 0; i < R; ++i) {
      tok[b][len + i] = g.tokens[static_cast<size_t>(i)];
      m[b][len - 1 + i] = 1.0f;
      l[b][len - 1 + i] = g.logprobs[static_cast<size_t>(i)];
    }
    resp_len[b] = R;
    last[b] = len + R - 1;
    truncated[b] = g.finish_reason == "length" ? 1.0 : 0.0;
  }
  core::Batch out;
  out.set("tokens", tokens);
  out.set("response_mask", mask);
  out.set("last", last);
  out.set("rollout_log_prob", lp);
  out.set("response_length", resp_len);
  out.set("truncated", truncated);
  return out;
}

// One worker of the RLHF roles: a split worker hosts one role, a colocated worker every role the
// algorithm uses.
class LmWorker final : public Role {
 public:
  LmWorker(const WorkerInfo& info, std::string role) : info_(info), role_(std::move(role)) {}

  void add_methods(MethodTable& m) override {
    m.add("configure", [this](const std::string& yaml, const core::Batch&) {
      configure(yaml);
      return CallResult{"configured", {}};
    });
    m.add("actor.log_probs", [this](const std::string&, const core::Batch& b) {
      return CallResult{"", one("old_log_prob", algorithms::sequence_log_probs(need(actor_, "actor"), b["tokens"], c_.actor_optim.micro_batch))};
    });
    m.add("actor.update", [this](const std::string& args, const core::Batch& b) {
      const nlohmann::json a = parse_args(args);
      const uint64_t seed = a.value("seed", uint64_t{0}) * 1000003ull + static_cast<uint64_t>(info_.rank);
      core::Scalars s = c_.algo == "reward_model" ? actor_trainer_->update_reward_model(b, seed)
                                                  : actor_trainer_->update_policy(b, c_.loss, seed);
      ++version_;
      return CallResult{scalars_json(s), {}};
    });
    m.add("actor.weights", [this](const std::string&, const core::Batch&) {
      core::Batch b = one("flat", flatten(need(actor_, "actor")));
      return CallResult{std::to_string(version_), b};
    });
    m.add("actor.save", [this](const std::string& args, const core::Batch&) {
      const nlohmann::json a = parse_args(args);
      if (info_.rank == 0)
        save_trained(need(actor_, "actor"), a.value("optimizer", true) ? actor_trainer_.get() : nullptr, a.at("dir").get<std::string>());
      return CallResult{std::to_string(version_), {}};
    });
    m.add("actor.load", [this](const std::string& args, const core::Batch&) {
      const nlohmann::json a = parse_args(args);
      load_trained(need(actor_, "actor"), actor_trainer_.get(), a.at("dir").get<std::string>());
      version_ = a.value("version", int64_t{0});
      rollout_version_ = version_;
      return CallResult{std::to_string(version_), {}};
    });
    m.add("rollout.generate", [this](const std::string& args, const core::Batch& b) {
      models::CausalLm& lm = rollout_ ? *rollout_ : need(actor_, "rollout");
      return CallResult{std::to_string(rollout_version_), generate(lm, c_, parse_args(args), b, rollout_version_)};
    });
    m.add("rollout.sync", [this](const std::string& args, const core::Batch&) {
      const int64_t version = std::stoll(args);
      if (rollout_) pull_weights(version);  // split: fetch the actor's weights
      rollout_version_ = version;           // colocated: the rollout generates with the actor's own weights
      return CallResult{std::to_string(rollout_version_), {}};
    });
    m.add("ref.log_probs", [this](const std::string&, const core::Batch& b) {
      return CallResult{"", one("ref_log_prob", algorithms::sequence_log_probs(need(ref_, "ref"), b["tokens"], c_.actor_optim.micro_batch))};
    });
    m.add("critic.values", [this](const std::string&, const core::Batch& b) {
      return CallResult{"", one("values", algorithms::sequence_values(need(critic_, "critic"), b["tokens"], c_.critic_optim.micro_batch))};
    });
    m.add("critic.update", [this](const std::string& args, const core::Batch& b) {
      const uint64_t seed = parse_args(args).value("seed", uint64_t{0}) * 1000003ull + 7 + static_cast<uint64_t>(info_.rank);
      need(critic_, "critic");
      return CallResult{scalars_json(critic_trainer_->update_critic(b, c_.value_clip, seed)), {}};
    });
    m.add("critic.save", [this](const std::string& args, const core::Batch&) {
      if (info_.rank == 0) save_trained(need(critic_, "critic"), critic_trainer_.get(), parse_args(args).at("dir").get<std::string>());
      return CallResult{"saved", {}};
    });
    m.add("critic.load", [this](const std::string& args, const core::Batch&) {
      load_trained(need(critic_, "critic"), critic_trainer_.get(), parse_args(args).at("dir").get<std::string>());
      return CallResult{"loaded", {}};
    });
    m.add("reward.score", [this](const std::string&, const core::Batch& b) {
      return CallResult{"", one("scores", reward_scores(need(reward_, "reward"), b))};
    });
    // The reward model being trained (algo reward_model), for held-out accuracy.
    m.add("actor.rewards", [this](const std::string&, const core::Batch& b) {
      return CallResult{"", one("scores", reward_scores(need(actor_, "actor"), b))};
    });
  }

 private:
  static models::CausalLm& need(const std::unique_ptr<models::CausalLm>& m, const std::string& role) {
    if (!m) throw Error("this worker does not host the " + role + " role");
    return *m;
  }

  at::Tensor reward_scores(models::CausalLm& lm, const core::Batch& b) const {
    return algorithms::sequence_rewards(lm, b["tokens"], b["last"], c_.actor_optim.micro_batch);
  }

  bool hosts(const std::string& role) const {
    return role_ == "colocated" ? c_.uses(role) : role_ == role;
  }

  void configure(const std::string& yaml) {
    run_ = std::make_unique<RunConfig>(yaml);
    c_ = RlhfConfig::read(run_->root());
    at::set_num_threads(c_.group(role_).threads);
    at::manual_seed(static_cast<uint64_t>(run_->root().get<int64_t>("seed", 1)));
    const fs::path store_dir = fs::path(info_.name_dir).parent_path();
    if (hosts("actor")) {
      actor_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.model_path, c_.algo == "reward_model" ? "reward" : ""));
      if (c_.algo != "reward_model" && actor_->config().head != "lm")
        throw ConfigError(c_.model_path + " has a " + actor_->config().head + " head; the policy needs a language-model head");
      actor_trainer_ = std::make_unique<algorithms::LmTrainer>(*actor_, c_.actor_optim);
      if (info_.world_size > 1) {
        // Data-parallel actor ranks average their gradients (c10d, Gloo on CPU) before each step.
        actor_sync_ = std::make_unique<Collective>(store_dir / (role_ + ".actor.c10d"), info_.rank, info_.world_size);
        actor_trainer_->set_gradient_sync([this](const std::vector<at::Tensor>& g) { actor_sync_->allreduce_mean(g); });
      }
    }
    if (hosts("rollout") && !actor_) rollout_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.model_path));
    if (hosts("ref")) ref_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.ref_path.empty() ? c_.model_path : c_.ref_path));
    if (hosts("critic")) {
      critic_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.critic_path.empty() ? c_.model_path : c_.critic_path, "value"));
      critic_trainer_ = std::make_unique<algorithms::LmTrainer>(*critic_, c_.critic_optim);
      if (info_.world_size > 1) {
        critic_sync_ = std::make_unique<Collective>(store_dir / (role_ + ".critic.c10d"), info_.rank, info_.world_size);
        critic_trainer_->set_gradient_sync([this](const std::vector<at::Tensor>& g) { critic_sync_->allreduce_mean(g); });
      }
    }
    if (hosts("reward")) {
      reward_ = std::make_unique<models::CausalLm>(models::CausalLm::load(c_.reward_path));
      if (reward_->config().head != "reward")
        throw ConfigError(c_.reward_path + " has a " + reward_->config().head + " head; model.reward needs a reward head");
    }
  }

  // The split rollout's weight broadcast: the full weights from actor rank 0, checked against the
  // version asked for. (The resharding path replaces this behind the same rollout.sync method.)
  void pull_weights(int64_t version) {
    if (!actor_rpc_) {
      auto names = core::directory_name_service(info_.name_dir);
      const std::string ep = names->wait(core::names::worker_rpc(info_.experiment, info_.trial, c_.group_of("actor"), 0),
                                         std::chrono::seconds(60), "actor rank 0");
      actor_rpc_ = std::make_unique<WorkerGroup>(context_, "actor", std::vector<std::string>{ep}, std::chrono::minutes(10));
    }
    CallResult r = actor_rpc_->run("actor.weights", "", {}, Dispatch::RankZero);
    if (std::stoll(r.result) != version)
      throw Error("asked for weights of version " + std::to_string(version) + ", actor rank 0 has version " + r.result);
    unflatten(*rollout_, r.batch["flat"]);
  }

  WorkerInfo info_;
  std::string role_;
  zmq::context_t context_{1};
  std::unique_ptr<RunConfig> run_;
  RlhfConfig c_;
  std::unique_ptr<models::CausalLm> actor_, rollout_, ref_, critic_, reward_;
  std::unique_ptr<algorithms::LmTrainer> actor_trainer_, critic_trainer_;
  std::unique_ptr<Collective> actor_sync_, critic_sync_;
  std::unique_ptr<WorkerGroup> actor_rpc_;
  int64_t version_ = 0, rollout_version_ = 0;
};

}  // namespace

void register_lm_roles() {
  for (const std::string r : {"actor", "rollout", "ref", "critic", "reward", "colocated"})
    register_role(r, [r](const WorkerInfo& i) { return std::make_unique<LmWorker>(i, r); });
}

}  // namespace flotilla::actors
