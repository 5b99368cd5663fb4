#include "algorithms/q_learning.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <map>

#include "algorithms/adam_state.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"

namespace flotilla::algorithms {

namespace {
// The value-based learners by algo.name, each with the mixer it uses.
core::Registry<std::string>& q_learners() {
  static core::Registry<std::string> r("value-based algorithm", [](auto& r) {
    r.add("iql", "none");
    r.add("vdn", "vdn");
    r.add("qmix", "qmix");
  });
  return r;
}
}  // namespace

std::vector<std::string> q_learner_names() { return q_learners().names(); }

QConfig QConfig::read(const core::ConfigView& a) {
  QConfig c;
  c.mixer = q_learners().at(q_learners().choose(a, "name", "qmix"));
  c.lr = a.get<double>("lr", c.lr, core::greater_than(0.0));
  c.gamma = a.get<double>("gamma", c.gamma, core::in_range(0.0, 1.0));
  c.hidden = a.get<std::vector<int64_t>>("hidden", c.hidden);
  for (int64_t h : c.hidden)
    if (h < 1) a.fail("hidden", "expected positive layer sizes, found " + std::to_string(h));
  c.mixing_embed = a.get<int64_t>("mixing_embed", c.mixing_embed, core::at_least<int64_t>(1));
  c.hypernet_hidden = a.get<int64_t>("hypernet_hidden", c.hypernet_hidden, core::at_least<int64_t>(1));
  c.double_q = a.get<bool>("double_q", c.double_q);
  c.target_update_interval = a.get<int>("target_update_interval", c.target_update_interval, core::at_least(1));
  c.max_grad_norm = a.get<double>("max_grad_norm", c.max_grad_norm, core::at_least(0.0));
  c.batch_size = a.get<int64_t>("batch_size", c.batch_size, core::at_least<int64_t>(1));
  c.buffer_size = a.get<int64_t>("buffer_size", c.buffer_size, core::at_least<int64_t>(1));
  c.learning_starts = a.get<int64_t>("learning_starts", c.learning_starts, core::at_least<int64_t>(1));
  c.updates_per_iteration = a.get<int>("updates_per_iteration", c.updates_per_iteration, core::at_least(1));
  c.epsilon_start = a.get<double>("epsilon_start", c.epsilon_start, core::in_range(0.0, 1.0));
  c.epsilon_finish = a.get<double>("epsilon_finish", c.epsilon_finish, core::in_range(0.0, 1.0));
  c.epsilon_anneal_steps = a.get<int64_t>("epsilon_anneal_steps", c.epsilon_anneal_steps, core::at_least<int64_t>(1));
  return c;
}

double QConfig::epsilon(int64_t env_steps) const {
  const double f = std::min(1.0, static_cast<double>(env_steps) / static_cast<double>(epsilon_anneal_steps));
  return epsilon_start + f * (epsilon_finish - epsilon_start);
}

namespace {

torch::nn::Sequential mlp(int64_t in, const std::vector<int64_t>& hidden, int64_t out) {
  torch::nn::Sequential s;
  for (int64_t h : hidden) {
    s->push_back(torch::nn::Linear(in, h));
    s->push_back(torch::nn::ReLU());
    in = h;
  }
  s->push_back(torch::nn::Linear(in, out));
  return s;
}

// QMIX's mixer (Rashid et al. 2018): Q_tot = w2^T elu(W1^T q + b1) + V(s), with W1 and w2 made
// non-negative by abs(), so Q_tot never decreases when an agent's Q grows.
struct QmixMixer : torch::nn::Module {
  int64_t agents, embed;
  torch::nn::Sequential hyper_w1{nullptr}, hyper_w2{nullptr}, value{nullptr};
  torch::nn::Linear hyper_b1{nullptr};

  QmixMixer(int64_t n_agents, int64_t state_dim, int64_t embed_dim, int64_t hyper_hidden)
      : agents(n_agents), embed(embed_dim) {
    hyper_w1 = register_module("hyper_w1", mlp(state_dim, {hyper_hidden}, agents * embed));
    hyper_w2 = register_module("hyper_w2", mlp(state_dim, {hyper_hidden}, embed));
    hyper_b1 = register_module("hyper_b1", torch::nn::Linear(state_dim, embed));
    value = register_module("value", mlp(state_dim, {embed}, 1));
  }

  // qs [B, T, A], states [B, T, S] -> [B, T]
  torch::Tensor forward(const torch::Tensor& qs, const torch::Tensor& states) {
    const auto B = qs.size(0), T = qs.size(1);
    torch::Tensor s = states.reshape({B * T, -1});
    torch::Tensor w1 = hyper_w1->forward(s).abs().view({B * T, agents, embed});
    torch::Tensor b1 = hyper_b1->forward(s).view({B * T, 1, embed});
    torch::Tensor hidden = torch::elu(torch::bmm(qs.reshape({B * T, 1, agents}), w1) + b1);
    torch::Tensor w2 = hyper_w2->forward(s).abs().view({B * T, embed, 1});
    torch::Tensor v = value->forward(s).view({B * T, 1, 1});
    return (torch::bmm(hidden, w2) + v).view({B, T});
  }
};

}  // namespace

struct QLearner::Impl {
  EpisodeShape shape;
  torch::nn::Sequential agent{nullptr}, target_agent{nullptr};
  std::shared_ptr<QmixMixer> mixer, target_mixer;
  std::unique_ptr<torch::optim::Adam> optimizer;
  std::vector<torch::Tensor> params;
  int64_t updates = 0;

  int64_t input_dim() const { return shape.obs_dim + shape.agents + shape.actions; }

  // [..., A, O] observations and [..., A] last actions (-1: none) -> agent network inputs.
  torch::Tensor inputs(const torch::Tensor& obs, const torch::Tensor& last_action) const {
    std::vector<int64_t> lead(obs.sizes().begin(), obs.sizes().end() - 2);
    std::vector<int64_t> id_shape = lead;
    id_shape.push_back(shape.agents);
    id_shape.push_back(shape.agents);
    torch::Tensor ids = torch::eye(shape.agents).expand(id_shape);
    torch::Tensor last = torch::one_hot(last_action.clamp_min(0), shape.actions).to(torch::kFloat) *
                         (last_action >= 0).unsqueeze(-1).to(torch::kFloat);
    return torch::cat({obs, ids, last}, -1);
  }

  torch::Tensor mix(const std::string& kind, std::shared_ptr<QmixMixer>& net, const torch::Tensor& qs,
                    const torch::Tensor& states) {
    if (kind == "vdn") return qs.sum(-1);
    return net->forward(qs, states);
  }
};

QLearner::QLearner(const QConfig& config, const EpisodeShape& shape) : config_(config), impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.shape = shape;
  m.agent = mlp(m.input_dim(), config.hidden, shape.actions);
  m.target_agent = mlp(m.input_dim(), config.hidden, shape.actions);
  for (const auto& p : m.agent->parameters()) m.params.push_back(p);
  if (config.mixer == "qmix") {
    m.mixer = std::make_shared<QmixMixer>(shape.agents, shape.state_dim, config.mixing_embed, config.hypernet_hidden);
    m.target_mixer = std::make_shared<QmixMixer>(shape.agents, shape.state_dim, config.mixing_embed, config.hypernet_hidden);
    for (const auto& p : m.mixer->parameters()) m.params.push_back(p);
  }
  m.optimizer = std::make_unique<torch::optim::Adam>(m.params, torch::optim::AdamOptions(config.lr));
  // Targets start as copies of the online networks.
  torch::NoGradGuard no_grad;
  auto copy = [](torch::nn::Module& from, torch::nn::Module& to) {
    auto src = from.parameters(), dst = to.parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  };
  copy(*m.agent, *m.target_agent);
  if (m.mixer) copy(*m.mixer, *m.target_mixer);
}

QLearner::~QLearner() = default;

at::Tensor QLearner::act(const at::Tensor& obs, const at::Tensor& avail, const at::Tensor& last_action, double epsilon,
                         at::Generator& gen) {
  torch::NoGradGuard no_grad;
  Impl& m = *impl_;
  torch::Tensor q = m.agent->forward(m.inputs(obs, last_action)).masked_fill(~avail, -1e9);
  torch::Tensor greedy = q.argmax(-1);
  const int64_t K = m.shape.actions;
  torch::Tensor random = at::multinomial(avail.reshape({-1, K}).to(torch::kFloat), 1, false, gen).view(greedy.sizes());
  torch::Tensor explore = at::rand(greedy.sizes(), gen) < epsilon;
  return torch::where(explore, random, greedy);
}

core::Scalars QLearner::update(const core::Batch& batch) {
  Impl& m = *impl_;
  // Only the steps up to the longest episode in the batch: short episodes (a quick battle) would
  // otherwise spend most of the update on padding.
  const int64_t T = std::max<int64_t>(1, batch["filled"].sum(1).max().item<int64_t>());
  auto steps = [&](const char* name, int64_t extra) { return batch[name].narrow(1, 0, T + extra); };
  const torch::Tensor obs = steps("obs", 1), state = steps("state", 1), avail = steps("avail", 1);
  const torch::Tensor action = steps("action", 0), reward = steps("reward", 0), terminated = steps("terminated", 0),
                      filled = steps("filled", 0);
  // Last actions: none at t = 0, then the previous step's.
  torch::Tensor last = torch::cat({torch::full({action.size(0), 1, action.size(2)}, -1, torch::kLong), action}, 1);
  torch::Tensor in = m.inputs(obs, last);
  torch::Tensor q = m.agent->forward(in);  // [B, T+1, A, K]
  torch::Tensor chosen = q.narrow(1, 0, T).gather(3, action.unsqueeze(3)).squeeze(3);  // [B, T, A]
  torch::Tensor target_next;
  {
    torch::NoGradGuard no_grad;
    torch::Tensor next_avail = avail.narrow(1, 1, T);
    torch::Tensor tq = m.target_agent->forward(in).narrow(1, 1, T).masked_fill(~next_avail, -1e9);
    if (config_.double_q) {
      torch::Tensor best = q.detach().narrow(1, 1, T).masked_fill(~next_avail, -1e9).argmax(3, true);
      target_next = tq.gather(3, best).squeeze(3);
    } else {
      target_next = std::get<0>(tq.max(3));
    }
    // Padding steps have no available action; keep their (masked-out) targets finite and small.
    target_next = target_next.masked_fill(filled.unsqueeze(-1) == 0, 0.0);
  }
  torch::Tensor mask = filled;
  torch::Tensor td;
  if (config_.mixer == "none") {  // IQL: every agent on its own reward
    torch::Tensor y = reward + config_.gamma * (1 - terminated).unsqueeze(-1) * target_next;
    td = (chosen - y.detach()) * mask.unsqueeze(-1);
    mask = mask.unsqueeze(-1).expand_as(td);
  } else {  // VDN and QMIX: the team reward (the agents' mean) against the mixed Q
    torch::Tensor team_reward = reward.mean(-1);
    torch::Tensor chosen_tot = m.mix(config_.mixer, m.mixer, chosen, state.narrow(1, 0, T));
    torch::Tensor target_tot;
    {
      torch::NoGradGuard no_grad;
      target_tot = m.mix(config_.mixer, m.target_mixer, target_next, state.narrow(1, 1, T));
    }
    torch::Tensor y = team_reward + config_.gamma * (1 - terminated) * target_tot;
    td = (chosen_tot - y.detach()) * mask;
  }
  const torch::Tensor count = mask.sum().clamp_min(1.0);
  torch::Tensor loss = td.pow(2).sum() / count;
  if (!std::isfinite(loss.item<double>()))
    throw Error("the " + config_.mixer + " TD loss is not finite; stopping before the update corrupts the networks");
  m.optimizer->zero_grad();
  loss.backward();
  const double grad_norm =
      config_.max_grad_norm > 0 ? torch::nn::utils::clip_grad_norm_(m.params, config_.max_grad_norm) : 0.0;
  m.optimizer->step();
  if (++m.updates % config_.target_update_interval == 0) {
    torch::NoGradGuard no_grad;
    auto src = m.agent->parameters(), dst = m.target_agent->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
    if (m.mixer) {
      auto ms = m.mixer->parameters(), md = m.target_mixer->parameters();
      for (size_t i = 0; i < ms.size(); ++i) md[i].copy_(ms[i]);
    }
  }
  const torch::Tensor masked_q = (chosen.detach() * filled.unsqueeze(-1)).sum() / (filled.sum() * chosen.size(2)).clamp_min(1.0);
  return {{"losses/td_loss", loss.item<double>()},
          {"losses/q_values", masked_q.item<double>()},
          {"losses/grad_norm", grad_norm}};
}

at::Tensor QLearner::mix(const at::Tensor& agent_qs, const at::Tensor& states) {
  if (config_.mixer == "none") return agent_qs;
  return impl_->mix(config_.mixer, impl_->mixer, agent_qs, states);
}

std::vector<std::pair<std::string, at::Tensor>> QLearner::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto add = [&](const std::string& prefix, torch::nn::Module& module) {
    for (const auto& p : module.named_parameters()) out.emplace_back(prefix + "." + p.key(), p.value().detach());
  };
  Impl& m = *impl_;
  add("agent", *m.agent);
  add("target_agent", *m.target_agent);
  if (m.mixer) {
    add("mixer", *m.mixer);
    add("target_mixer", *m.target_mixer);
  }
  for (auto& t : adam_state(*m.optimizer, m.params)) out.push_back(std::move(t));
  out.emplace_back("updates", torch::full({1}, m.updates, torch::kLong));
  return out;
}

void QLearner::load(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  Impl& m = *impl_;
  torch::NoGradGuard no_grad;
  auto load_module = [&](const std::string& prefix, torch::nn::Module& module) {
    for (auto& p : module.named_parameters()) {
      auto it = by_name.find(prefix + "." + p.key());
      if (it == by_name.end()) throw FormatError("checkpoint has no tensor '" + prefix + "." + p.key() + "'");
      if (it->second.sizes() != p.value().sizes())
        throw FormatError("checkpoint tensor '" + it->first + "' does not fit the network (another env or model?)");
      p.value().copy_(it->second);
    }
  };
  load_module("agent", *m.agent);
  load_module("target_agent", *m.target_agent);
  if (m.mixer) {
    load_module("mixer", *m.mixer);
    load_module("target_mixer", *m.target_mixer);
  }
  load_adam_state(*m.optimizer, m.params, by_name);
  if (by_name.count("updates")) m.updates = by_name.at("updates").item<int64_t>();
}

}  // namespace flotilla::algorithms
