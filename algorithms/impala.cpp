// IMPALA (Espeholt et al. 2018): an actor-critic update on rollout fragments that actors made
// with older parameters, corrected by V-trace. Fragments stay in their [N, T] structure.
#include <torch/torch.h>

#include <cmath>

#include "algorithms/algorithm.hpp"
#include "core/error.hpp"
#include "kernels/vtrace.hpp"

namespace flotilla::algorithms {
namespace {

struct ImpalaConfig {
  double lr = 1e-3;
  bool anneal_lr = true;
  double gamma = 0.99;
  double rho_bar = 1.0, c_bar = 1.0;
  double ent_coef = 0.01;
  double vf_coef = 0.5;
  double max_grad_norm = 0.5;
  double adam_eps = 1e-5;

  static ImpalaConfig read(const core::ConfigView& a) {
    ImpalaConfig c;
    c.lr = a.get<double>("lr", c.lr, core::greater_than(0.0));
    c.anneal_lr = a.get<bool>("anneal_lr", c.anneal_lr);
    c.gamma = a.get<double>("gamma", c.gamma, core::in_range(0.0, 1.0));
    c.rho_bar = a.get<double>("rho_bar", c.rho_bar, core::greater_than(0.0));
    c.c_bar = a.get<double>("c_bar", c.c_bar, core::greater_than(0.0));
    c.ent_coef = a.get<double>("ent_coef", c.ent_coef, core::at_least(0.0));
    c.vf_coef = a.get<double>("vf_coef", c.vf_coef, core::at_least(0.0));
    c.max_grad_norm = a.get<double>("max_grad_norm", c.max_grad_norm, core::at_least(0.0));
    c.adam_eps = a.get<double>("adam_eps", c.adam_eps, core::greater_than(0.0));
    return c;
  }
};

class Impala final : public Algorithm {
 public:
  Impala(ImpalaConfig c, models::Policy& policy)
      : c_(c), policy_(policy), optimizer_(policy.parameters(), torch::optim::AdamOptions(c.lr).eps(c.adam_eps)) {}

  double gamma() const override { return c_.gamma; }
  double gae_lambda() const override { return 1.0; }
  core::Batch prepare(const core::Batch& fragment, models::Policy&) const override { return fragment; }
  bool takes_gae_batches() const override { return false; }

  core::Scalars update(const core::Batch& b, double progress, at::Generator&) override {
    const double lr = c_.anneal_lr ? c_.lr * (1.0 - progress) : c_.lr;
    for (auto& group : optimizer_.param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
    const at::Tensor& obs = b["obs"];  // [N, T, ...]
    const int64_t n = obs.size(0), T = obs.size(1);
    auto flat = [&](const at::Tensor& x) { return x.reshape({n * T, -1}); };
    const at::Tensor& action = b["action"];
    models::EvalOutput e = policy_.evaluate(flat(obs), action.dim() == 2 ? action.reshape({n * T}) : flat(action));
    at::Tensor log_prob = e.log_prob.view({n, T}), value = e.value.view({n, T});

    // V-trace targets from the current network, without gradients, time-major for the kernel.
    at::Tensor vs, pg_adv, rho_mean;
    {
      torch::NoGradGuard no_grad;
      at::Tensor final_value = policy_.value(flat(b["final_obs"])).view({n, T});
      at::Tensor next = at::cat({value.detach().narrow(1, 1, T - 1), policy_.value(b["bootstrap_obs"]).unsqueeze(1)}, 1);
      next = at::where(b["truncated"] & ~b["terminated"], final_value, next);
      at::Tensor log_rho = log_prob.detach() - b["log_prob"];
      auto tm = [](const at::Tensor& x) { return x.transpose(0, 1).contiguous(); };
      at::Tensor reward = tm(b["reward"]), v = tm(value.detach()), nv = tm(next), lr_ = tm(log_rho);
      at::Tensor term = tm(b["terminated"]), done = tm(b["terminated"] | b["truncated"]);
      at::Tensor out_vs = at::empty_like(reward), out_adv = at::empty_like(reward);
      kernels::VtraceArgs a;
      a.steps = T;
      a.envs = n;
      a.reward = reward.data_ptr<float>();
      a.value = v.data_ptr<float>();
      a.next_value = nv.data_ptr<float>();
      a.log_rho = lr_.data_ptr<float>();
      a.terminated = term.data_ptr<bool>();
      a.done = done.data_ptr<bool>();
      a.gamma = static_cast<float>(c_.gamma);
      a.rho_bar = static_cast<float>(c_.rho_bar);
      a.c_bar = static_cast<float>(c_.c_bar);
      a.vs = out_vs.data_ptr<float>();
      a.pg_advantage = out_adv.data_ptr<float>();
      kernels::vtrace_cpu(a);
      vs = out_vs.transpose(0, 1);
      pg_adv = out_adv.transpose(0, 1);
      rho_mean = log_rho.exp().mean();
    }
    at::Tensor pg_loss = -(pg_adv * log_prob).mean();
    at::Tensor v_loss = 0.5 * (vs - value).pow(2).mean();
    at::Tensor entropy = e.entropy.mean();
    at::Tensor loss = pg_loss + c_.vf_coef * v_loss - c_.ent_coef * entropy;
    if (!std::isfinite(loss.item<double>()))
      throw Error("the IMPALA loss is not finite (losses/policy_loss = " + std::to_string(pg_loss.item<double>()) +
                  ", losses/value_loss = " + std::to_string(v_loss.item<double>()) + ")");
    optimizer_.zero_grad();
    loss.backward();
    sync_gradients(policy_.parameters());
    if (c_.max_grad_norm > 0) torch::nn::utils::clip_grad_norm_(policy_.parameters(), c_.max_grad_norm);
    optimizer_.step();
    return {{"losses/policy_loss", pg_loss.item<double>()},
            {"losses/value_loss", v_loss.item<double>()},
            {"losses/entropy", entropy.item<double>()},
            {"losses/mean_importance_ratio", rho_mean.item<double>()},
            {"charts/learning_rate", lr}};
  }

  std::vector<std::pair<std::string, at::Tensor>> state() const override { return {}; }
  void load(const std::vector<std::pair<std::string, at::Tensor>>&) override {}

 private:
  ImpalaConfig c_;
  models::Policy& policy_;
  torch::optim::Adam optimizer_;
};

}  // namespace

std::unique_ptr<Algorithm> make_impala(const core::ConfigView& algo, models::Policy& policy) {
  if (policy.value_norm()) throw ConfigError("algo 'impala' does not support model.value_norm (V-trace uses raw values)");
  return std::make_unique<Impala>(ImpalaConfig::read(algo), policy);
}

}  // namespace flotilla::algorithms
