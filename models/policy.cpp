#include "models/policy.hpp"

#include <torch/torch.h>

#include <cmath>

#include "core/error.hpp"
#include "core/registry.hpp"
#include "models/distributions.hpp"

namespace flotilla::models {

PolicyConfig PolicyConfig::read(const core::ConfigView& m, const Defaults& defaults) {
  PolicyConfig c;
  c.network = m.choice("network", c.network, network_names());
  c.hidden = m.get<std::vector<int64_t>>("hidden", c.hidden);
  for (int64_t h : c.hidden)
    if (h < 1) m.fail("hidden", "expected positive layer sizes, found " + std::to_string(h));
  c.activation = m.choice("activation", c.activation, {"tanh", "relu"});
  c.shared_trunk = m.get<bool>("shared_trunk", c.shared_trunk);
  std::vector<std::string> dists = distribution_names();
  dists.insert(dists.begin(), "auto");
  c.distribution = m.choice("distribution", c.distribution, dists);
  c.init_log_std = m.get<double>("init_log_std", c.init_log_std);
  c.critic = m.choice("critic", defaults.critic, {"local", "global", "agent_specific"});
  if (defaults.local_critic_only && c.critic != "local")
    m.fail("critic", defaults.algo + " trains independent critics on each agent's own observation; use algo.name: mappo "
                     "for a centralized critic");
  c.value_norm = m.get<bool>("value_norm", defaults.value_norm);
  if (c.value_norm && c.shared_trunk)
    m.fail("value_norm", "value normalization needs separate actor and critic trunks (shared_trunk: false)");
  return c;
}

std::unique_ptr<Policy> make_policy(const PolicyConfig& c, const envs::EnvSpec& spec) {
  return std::make_unique<Policy>(c, spec.observation_space, spec.action_space, spec.layout);
}

namespace {

// Linear layers with orthogonal weights (gain as CleanRL uses) and zero biases.
torch::nn::Linear ortho_linear(int64_t in, int64_t out, double gain) {
  torch::nn::Linear l(in, out);
  torch::NoGradGuard no_grad;
  torch::nn::init::orthogonal_(l->weight, gain);
  l->bias.zero_();
  return l;
}

torch::nn::Sequential mlp(int64_t in, const std::vector<int64_t>& hidden, const std::string& activation) {
  torch::nn::Sequential s;
  for (int64_t h : hidden) {
    s->push_back(ortho_linear(in, h, std::sqrt(2.0)));
    if (activation == "tanh") s->push_back(torch::nn::Tanh());
    else s->push_back(torch::nn::ReLU());
    in = h;
  }
  return s;
}

// Trunks by `model.network`: the layers between an input of `in` features and the heads.
using TrunkFactory = std::function<torch::nn::Sequential(int64_t in, const PolicyConfig& c)>;
core::Registry<TrunkFactory>& networks() {
  static core::Registry<TrunkFactory> r("network", [](auto& r) {
    r.add("mlp", [](int64_t in, const PolicyConfig& c) { return mlp(in, c.hidden, c.activation); });
  });
  return r;
}

}  // namespace

std::vector<std::string> network_names() { return networks().names(); }

struct Policy::Impl : torch::nn::Module {
  std::unique_ptr<Distribution> dist;
  torch::nn::Sequential actor_trunk{nullptr}, critic_trunk{nullptr};
  torch::nn::Linear actor_head{nullptr}, critic_head{nullptr};
  torch::Tensor log_std;
  torch::Tensor vn_mean, vn_var, vn_count;  // value normalizer statistics (not trained)
  bool shared = false;
  bool discrete = true;
  bool global_critic = false, agent_specific = false;
  envs::ObsLayout layout;

  Impl(const PolicyConfig& c, const envs::Space& obs, const envs::Space& action, const envs::ObsLayout& l) : layout(l) {
    if (obs.kind != envs::Space::Kind::Box || obs.shape.size() != 1)
      throw ConfigError("model.network 'mlp' needs flat Box observations, got " + obs.str());
    if (action.kind == envs::Space::Kind::MultiDiscrete)
      throw ConfigError("model: MultiDiscrete actions are not supported by the mlp policy yet (" + action.str() + ")");
    discrete = action.kind == envs::Space::Kind::Discrete;
    std::string dname = c.distribution == "auto" ? (discrete ? "categorical" : "diag_gaussian") : c.distribution;
    dist = make_distribution(dname);
    if (dist->continuous() == discrete)
      throw ConfigError("model.distribution '" + dname + "' does not fit the action space " + action.str());
    global_critic = c.critic != "local";
    agent_specific = c.critic == "agent_specific";
    if (global_critic && !layout.multi_agent())
      throw ConfigError("model.critic '" + c.critic + "' reads a multi-agent env's global state; this env has none");
    if (global_critic && c.shared_trunk)
      throw ConfigError("model.critic '" + c.critic + "' needs separate actor and critic trunks (shared_trunk: false)");
    const int64_t in = layout.multi_agent() ? layout.actor_dim() : obs.shape[0];
    const int64_t critic_in = agent_specific ? layout.mask_offset() : global_critic ? layout.critic_dim() : in;
    const int64_t head = dist->head_size(discrete ? action.n : action.numel());
    shared = c.shared_trunk;
    const TrunkFactory& trunk = networks().at(c.network);
    actor_trunk = register_module("actor_trunk", trunk(in, c));
    if (!shared) critic_trunk = register_module("critic_trunk", trunk(critic_in, c));
    actor_head = register_module("actor_head", ortho_linear(c.hidden.empty() ? in : c.hidden.back(), head, 0.01));
    critic_head = register_module("critic_head", ortho_linear(c.hidden.empty() ? critic_in : c.hidden.back(), 1, 1.0));
    if (!discrete) log_std = register_parameter("log_std", torch::full({head}, c.init_log_std));
    if (c.value_norm) {
      // Parameters without gradients, so they travel with the weights to actors and checkpoints.
      vn_mean = register_parameter("value_norm_mean", torch::zeros({1}), false);
      vn_var = register_parameter("value_norm_var", torch::ones({1}), false);
      vn_count = register_parameter("value_norm_count", torch::full({1}, 1e-4), false);
    }
  }

  torch::Tensor actor_input(const torch::Tensor& obs) const {
    return layout.multi_agent() ? obs.narrow(-1, 0, layout.actor_dim()) : obs;
  }
  torch::Tensor critic_features(const torch::Tensor& obs, const torch::Tensor& actor_features) {
    if (shared) return actor_features;
    if (agent_specific) return critic_trunk->forward(obs.narrow(-1, 0, layout.mask_offset()));  // obs | id | state
    return critic_trunk->forward(global_critic ? obs.narrow(-1, layout.critic_offset(), layout.critic_dim()) : actor_input(obs));
  }
  // The critic's prediction in return units.
  torch::Tensor denormalize(const torch::Tensor& v) const {
    return vn_mean.defined() ? v * (vn_var + 1e-5).sqrt() + vn_mean : v;
  }

  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& obs) {
    torch::Tensor a = actor_trunk->forward(actor_input(obs));
    torch::Tensor logits = actor_head->forward(a);
    if (layout.mask_dim > 0) {  // unavailable actions get (practically) zero probability
      torch::Tensor mask = obs.narrow(-1, layout.mask_offset(), layout.mask_dim);
      logits = logits.masked_fill(mask < 0.5, -1e8);
    }
    return {logits, critic_head->forward(critic_features(obs, a)).squeeze(-1)};
  }
};

Policy::Policy(const PolicyConfig& config, const envs::Space& observation, const envs::Space& action,
               const envs::ObsLayout& layout)
    : impl_(std::make_unique<Impl>(config, observation, action, layout)) {}
Policy::~Policy() = default;
Policy::Policy(Policy&&) noexcept = default;
Policy& Policy::operator=(Policy&&) noexcept = default;

ActOutput Policy::act(const at::Tensor& obs, bool deterministic, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  auto [head, value] = impl_->forward(obs);
  at::Tensor action = deterministic ? impl_->dist->mode(head) : impl_->dist->sample(head, impl_->log_std, gen);
  return {action, impl_->dist->log_prob(head, impl_->log_std, action), impl_->denormalize(value)};
}

at::Tensor Policy::value(const at::Tensor& obs) {
  torch::NoGradGuard no_grad;
  torch::Tensor a = impl_->shared ? impl_->actor_trunk->forward(impl_->actor_input(obs)) : torch::Tensor();
  return impl_->denormalize(impl_->critic_head->forward(impl_->critic_features(obs, a)).squeeze(-1));
}

bool Policy::value_norm() const { return impl_->vn_mean.defined(); }

void Policy::update_value_norm(const at::Tensor& returns) {
  if (!value_norm()) return;
  torch::NoGradGuard no_grad;
  // Chan et al.'s parallel update of the running mean and variance.
  torch::Tensor x = returns.reshape({-1}).to(torch::kFloat);
  const double n = static_cast<double>(x.numel());
  if (n == 0) return;
  torch::Tensor delta = x.mean() - impl_->vn_mean;
  torch::Tensor total = impl_->vn_count + n;
  torch::Tensor m2 = impl_->vn_var * impl_->vn_count + x.var(false) * n + delta * delta * impl_->vn_count * n / total;
  impl_->vn_mean.add_(delta * n / total);
  impl_->vn_var.copy_(m2 / total);
  impl_->vn_count.copy_(total);
}

at::Tensor Policy::normalize_value(const at::Tensor& values) const {
  if (!value_norm()) return values;
  return (values - impl_->vn_mean.detach()) / (impl_->vn_var.detach() + 1e-5).sqrt();
}

EvalOutput Policy::evaluate(const at::Tensor& obs, const at::Tensor& action) {
  auto [head, value] = impl_->forward(obs);
  return {impl_->dist->log_prob(head, impl_->log_std, action), impl_->dist->entropy(head, impl_->log_std), value};
}

std::vector<at::Tensor> Policy::parameters() const { return impl_->parameters(); }

std::vector<std::pair<std::string, at::Tensor>> Policy::named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : impl_->named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

void Policy::load(const std::vector<std::pair<std::string, at::Tensor>>& values) {
  torch::NoGradGuard no_grad;
  auto params = impl_->named_parameters();
  for (const auto& p : params) {
    const at::Tensor* found = nullptr;
    for (const auto& [name, t] : values)
      if (name == p.key()) found = &t;
    if (!found) throw FormatError("checkpoint has no tensor for parameter '" + p.key() + "'");
    if (found->sizes() != p.value().sizes()) {
      auto str = [](at::IntArrayRef s) {
        std::string out = "[";
        for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
        return out + "]";
      };
      throw FormatError("checkpoint tensor '" + p.key() + "' has shape " + str(found->sizes()) + ", the model's is " +
                        str(p.value().sizes()));
    }
    p.value().copy_(*found);
  }
}

at::Tensor Policy::flat() const {
  std::vector<at::Tensor> parts;
  for (const auto& p : impl_->parameters()) parts.push_back(p.detach().reshape({-1}));
  return at::cat(parts).to(at::kFloat);
}

void Policy::load_flat(const at::Tensor& flat) {
  torch::NoGradGuard no_grad;
  auto params = impl_->parameters();
  int64_t total = 0;
  for (const auto& p : params) total += p.numel();
  if (flat.dim() != 1 || flat.numel() != total)
    throw FormatError("a flat parameter buffer of " + std::to_string(flat.numel()) + " values does not fit a policy of " +
                      std::to_string(total));
  int64_t offset = 0;
  for (auto& p : params) {
    p.copy_(flat.narrow(0, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
}

}  // namespace flotilla::models
