#include "algorithms/ppo.hpp"

#include <torch/torch.h>

#include <cmath>
#include <map>

#include "algorithms/adam_state.hpp"
#include "algorithms/advantages.hpp"
#include "core/error.hpp"

namespace flotilla::algorithms {

PPOConfig PPOConfig::read(const core::ConfigView& a) {
  PPOConfig c;
  c.lr = a.get<double>("lr", c.lr, core::greater_than(0.0));
  c.anneal_lr = a.get<bool>("anneal_lr", c.anneal_lr);
  c.gamma = a.get<double>("gamma", c.gamma, core::in_range(0.0, 1.0));
  c.gae_lambda = a.get<double>("gae_lambda", c.gae_lambda, core::in_range(0.0, 1.0));
  c.num_minibatches = a.get<int>("num_minibatches", c.num_minibatches, core::at_least(1));
  c.update_epochs = a.get<int>("update_epochs", c.update_epochs, core::at_least(1));
  c.norm_adv = a.get<bool>("norm_adv", c.norm_adv);
  c.clip_coef = a.get<double>("clip_coef", c.clip_coef, core::greater_than(0.0));
  c.clip_vloss = a.get<bool>("clip_vloss", c.clip_vloss);
  c.ent_coef = a.get<double>("ent_coef", c.ent_coef, core::at_least(0.0));
  c.vf_coef = a.get<double>("vf_coef", c.vf_coef, core::at_least(0.0));
  c.max_grad_norm = a.get<double>("max_grad_norm", c.max_grad_norm, core::at_least(0.0));
  c.target_kl = a.get<double>("target_kl", c.target_kl, core::at_least(0.0));
  c.adam_eps = a.get<double>("adam_eps", c.adam_eps, core::greater_than(0.0));
  return c;
}

PPOLosses ppo_losses(const PPOConfig& c, const at::Tensor& log_prob, const at::Tensor& entropy, const at::Tensor& value,
                     const at::Tensor& log_prob_old, const at::Tensor& value_old, const at::Tensor& advantage,
                     const at::Tensor& ret) {
  PPOLosses l;
  const at::Tensor log_ratio = log_prob - log_prob_old;
  const at::Tensor ratio = log_ratio.exp();
  {
    torch::NoGradGuard no_grad;
    l.approx_kl = ((ratio - 1) - log_ratio).mean();  // Schulman's low-variance estimator
    l.clipfrac = ((ratio - 1.0).abs() > c.clip_coef).to(at::kFloat).mean();
  }
  at::Tensor adv = advantage;
  if (c.norm_adv) adv = (adv - adv.mean()) / (adv.std() + 1e-8);
  const at::Tensor surrogate = -adv * ratio;
  const at::Tensor clipped = -adv * ratio.clamp(1 - c.clip_coef, 1 + c.clip_coef);
  l.policy = at::max(surrogate, clipped).mean();
  if (c.clip_vloss) {
    const at::Tensor v_clipped = value_old + (value - value_old).clamp(-c.clip_coef, c.clip_coef);
    l.value = 0.5 * at::max((value - ret).pow(2), (v_clipped - ret).pow(2)).mean();
  } else {
    l.value = 0.5 * (value - ret).pow(2).mean();
  }
  l.entropy = entropy.mean();
  return l;
}

namespace {

}  // namespace

std::unique_ptr<Algorithm> make_ppo(const core::ConfigView& algo, models::Policy& policy);

namespace {

class PPO final : public Algorithm {
 public:
  PPO(PPOConfig c, models::Policy& policy)
      : c_(c), policy_(policy), optimizer_(policy.parameters(), torch::optim::AdamOptions(c.lr).eps(c.adam_eps)) {}

  double gamma() const override { return c_.gamma; }
  double gae_lambda() const override { return c_.gae_lambda; }

  core::Scalars update(const core::Batch& batch, double progress, at::Generator& gen) override {
    const double lr = c_.anneal_lr ? c_.lr * (1.0 - progress) : c_.lr;
    for (auto& group : optimizer_.param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
    const at::Tensor &obs = batch["obs"], &action = batch["action"], &log_prob_old = batch["log_prob"];
    const at::Tensor &value_old = batch["value"], &advantage = batch["advantage"], &ret = batch["return"];
    const int64_t n = batch.size();
    // With value normalization the critic learns returns in running-statistics units.
    policy_.update_value_norm(ret);
    const at::Tensor value_old_n = policy_.normalize_value(value_old), ret_n = policy_.normalize_value(ret);
    const int64_t mb = std::max<int64_t>(1, n / c_.num_minibatches);
    double kl = 0, clipfrac = 0, pg = 0, vl = 0, ent = 0;
    int64_t count = 0;
    bool stopped = false;
    for (int epoch = 0; epoch < c_.update_epochs && !stopped; ++epoch) {
      at::Tensor perm = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
      for (int64_t start = 0; start + mb <= n; start += mb) {
        at::Tensor idx = perm.narrow(0, start, mb);
        models::EvalOutput e = policy_.evaluate(obs.index_select(0, idx), action.index_select(0, idx));
        PPOLosses l = ppo_losses(c_, e.log_prob, e.entropy, e.value, log_prob_old.index_select(0, idx),
                                 value_old_n.index_select(0, idx), advantage.index_select(0, idx), ret_n.index_select(0, idx));
        at::Tensor loss = l.policy - c_.ent_coef * l.entropy + c_.vf_coef * l.value;
        const double loss_value = loss.item<double>();
        if (!std::isfinite(loss_value)) {
          const char* which = !std::isfinite(l.policy.item<double>())  ? "losses/policy_loss"
                              : !std::isfinite(l.value.item<double>()) ? "losses/value_loss"
                                                                        : "losses/entropy";
          throw Error(std::string("the PPO loss is not finite (") + which + " = " +
                      std::to_string(loss_value) + "); stopping before the update corrupts the policy");
        }
        optimizer_.zero_grad();
        loss.backward();
        sync_gradients(policy_.parameters());
        if (c_.max_grad_norm > 0) torch::nn::utils::clip_grad_norm_(policy_.parameters(), c_.max_grad_norm);
        optimizer_.step();
        kl += l.approx_kl.item<double>();
        clipfrac += l.clipfrac.item<double>();
        pg += l.policy.item<double>();
        vl += l.value.item<double>();
        ent += l.entropy.item<double>();
        ++count;
        if (c_.target_kl > 0 && l.approx_kl.item<double>() > c_.target_kl) {
          stopped = true;
          break;
        }
      }
    }
    const double k = std::max<int64_t>(count, 1);
    const double var_ret = ret.var().item<double>();
    const double explained = var_ret == 0 ? NAN : 1.0 - (ret - value_old).var().item<double>() / var_ret;
    return {{"losses/policy_loss", pg / k}, {"losses/value_loss", vl / k},   {"losses/entropy", ent / k},
            {"losses/approx_kl", kl / k},   {"losses/clipfrac", clipfrac / k}, {"losses/explained_variance", explained},
            {"charts/learning_rate", lr}};
  }

  std::vector<std::pair<std::string, at::Tensor>> state() const override {
    return adam_state(optimizer_, policy_.parameters());
  }

  void load(const std::vector<std::pair<std::string, at::Tensor>>& tensors) override {
    load_adam_state(optimizer_, policy_.parameters(), {tensors.begin(), tensors.end()});
  }

 private:
  PPOConfig c_;
  models::Policy& policy_;
  torch::optim::Adam optimizer_;
};

}  // namespace

std::unique_ptr<Algorithm> make_ppo(const core::ConfigView& algo, models::Policy& policy) {
  return std::make_unique<PPO>(PPOConfig::read(algo), policy);
}

}  // namespace flotilla::algorithms
