#include "algorithms/lm_losses.hpp"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.hpp"

namespace flotilla::algorithms {
namespace {

at::Tensor groups(const at::Tensor& rewards, int64_t n) {
  if (rewards.dim() != 1 || n < 1 || rewards.size(0) % n != 0)
    throw Error("group advantages: " + std::to_string(rewards.numel()) + " rewards do not split into groups of " +
                std::to_string(n));
  return rewards.view({-1, n});
}

}  // namespace

at::Tensor masked_mean(const at::Tensor& x, const at::Tensor& mask) { return (x * mask).sum() / mask.sum().clamp_min(1.0); }

at::Tensor kl_estimate(const at::Tensor& lp, const at::Tensor& ref, const std::string& kind) {
  const at::Tensor d = lp - ref;
  if (kind == "k1") return d;
  if (kind == "k2") return 0.5 * d * d;
  if (kind == "k3") return at::exp(-d) + d - 1;
  throw ConfigError("KL estimator '" + kind + "' is not one of k1, k2, k3");
}

at::Tensor grpo_advantages(const at::Tensor& rewards, int64_t n, bool scale, double eps) {
  const at::Tensor g = groups(rewards, n);
  at::Tensor a = g - g.mean(1, true);
  if (scale) a = a / (g.std(1, /*unbiased=*/true, true) + eps);
  return a.reshape({-1});
}

at::Tensor grpo_advantages(const at::Tensor& rewards, const at::Tensor& group_ids, bool scale, double eps) {
  const int64_t G = group_ids.numel() ? group_ids.max().item<int64_t>() + 1 : 0;
  const at::Tensor r = rewards.to(at::kDouble);
  const at::Tensor count = at::zeros({G}, r.options()).index_add_(0, group_ids, at::ones_like(r));
  const at::Tensor mean = at::zeros({G}, r.options()).index_add_(0, group_ids, r) / count.clamp_min(1);
  at::Tensor a = r - mean.index_select(0, group_ids);
  if (scale) {
    // Unbiased std per group, as in the equal-size version; 0 for a group of one.
    const at::Tensor ss = at::zeros({G}, r.options()).index_add_(0, group_ids, a * a);
    const at::Tensor std = (ss / (count - 1).clamp_min(1)).sqrt();
    a = a / (std.index_select(0, group_ids) + eps);
  }
  return a.to(rewards.scalar_type());
}

at::Tensor rloo_advantages(const at::Tensor& rewards, int64_t n) {
  if (n < 2) throw Error("RLOO needs at least 2 samples per prompt, got " + std::to_string(n));
  const at::Tensor g = groups(rewards, n);
  const at::Tensor others = (g.sum(1, true) - g) / static_cast<double>(n - 1);
  return (g - others).reshape({-1});
}

at::Tensor reinforce_pp_advantages(const at::Tensor& rewards, const at::Tensor& kl, const at::Tensor& mask, double beta) {
  // Token rewards: -beta * KL everywhere, plus the sequence reward on the last response token.
  const at::Tensor last = (mask.cumsum(1) == mask.sum(1, true)) & (mask > 0);
  at::Tensor r = -beta * kl * mask + last.to(kl.scalar_type()) * rewards.unsqueeze(1);
  at::Tensor returns = r.flip(1).cumsum(1).flip(1) * mask;  // reward-to-go, gamma 1
  const at::Tensor mean = masked_mean(returns, mask);
  const at::Tensor var = masked_mean((returns - mean).pow(2), mask);
  return (returns - mean) / (var + 1e-8).sqrt() * mask;
}

at::Tensor sequence_mean(const at::Tensor& x, const at::Tensor& mask) {
  const at::Tensor tokens = mask.sum(1);
  const at::Tensor has = tokens > 0;
  const at::Tensor per_row = (x * mask).sum(1) / tokens.clamp_min(1);
  return per_row.masked_select(has).sum() / has.sum().clamp_min(1);
}

LmPolicyLoss ppo_token_loss(const at::Tensor& lp, const at::Tensor& old, const at::Tensor& adv, const at::Tensor& mask,
                            double clip_low, double clip_high, const std::string& aggregation, const at::Tensor& weight) {
  const at::Tensor log_ratio = lp - old;
  const at::Tensor ratio = log_ratio.exp();
  at::Tensor surrogate = at::max(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high));
  if (weight.defined()) surrogate = surrogate * weight;
  LmPolicyLoss l;
  if (aggregation == "token-mean") l.loss = masked_mean(surrogate, mask);
  else if (aggregation == "seq-sum") l.loss = (surrogate * mask).sum(1).mean();
  else if (aggregation == "seq-mean") l.loss = sequence_mean(surrogate, mask);
  else throw ConfigError("loss aggregation '" + aggregation + "' is not one of token-mean, seq-mean, seq-sum");
  at::NoGradGuard no_grad;
  l.clipfrac = masked_mean(((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).to(lp.scalar_type()), mask);
  l.approx_kl = masked_mean((ratio - 1) - log_ratio, mask);
  return l;
}

at::Tensor behaviour_weight(const at::Tensor& proximal_log_prob, const at::Tensor& behaviour_log_prob, double cap) {
  at::NoGradGuard no_grad;
  return (proximal_log_prob - behaviour_log_prob).exp().clamp_max(cap);
}

at::Tensor dpo_loss(const at::Tensor& chosen, const at::Tensor& rejected, const at::Tensor& ref_chosen,
                    const at::Tensor& ref_rejected, double beta, const std::string& kind, double label_smoothing) {
  const at::Tensor margin = (chosen - ref_chosen) - (rejected - ref_rejected);
  if (kind == "sigmoid")
    return (-(1 - label_smoothing) * at::log_sigmoid(beta * margin) - label_smoothing * at::log_sigmoid(-beta * margin)).mean();
  if (kind == "ipo") return (margin - 1.0 / (2.0 * beta)).pow(2).mean();
  throw ConfigError("DPO loss '" + kind + "' is not one of sigmoid, ipo");
}

at::Tensor sft_loss(const at::Tensor& log_prob, const at::Tensor& mask) { return -masked_mean(log_prob, mask); }

void AdaptiveKl::update(double observed_kl, int64_t steps) {
  const double error = std::clamp(observed_kl / target_ - 1.0, -0.2, 0.2);
  value_ *= 1.0 + error * static_cast<double>(steps) / horizon_;
}

std::vector<int64_t> informative_rows(const at::Tensor& scores, int64_t n) {
  const at::Tensor g = scores.view({-1, n});
  const at::Tensor keep = ((g.amax(1) - g.amin(1)) > 1e-9).nonzero().view({-1});
  const at::Tensor rows = (keep.repeat_interleave(n) * n + at::arange(n).repeat(keep.numel())).contiguous();
  return std::vector<int64_t>(rows.data_ptr<int64_t>(), rows.data_ptr<int64_t>() + rows.numel());
}

std::vector<int64_t> best_and_worst(const at::Tensor& scores, int64_t n) {
  const at::Tensor g = scores.view({-1, n});
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < g.size(0); ++i) {
    const int64_t hi = g[i].argmax().item<int64_t>(), lo = g[i].argmin().item<int64_t>();
    if (g[i][hi].item<double>() - g[i][lo].item<double>() <= 1e-9) continue;
    rows.push_back(i * n + hi);
    rows.push_back(i * n + lo);
  }
  return rows;
}

}  // namespace flotilla::algorithms
