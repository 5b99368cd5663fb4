#pragma once
// Losses and advantages for language-model RL, each short enough to read in one screen. Token
// tensors are [B, T] over response tokens with a float `mask` (1 on real response tokens, 0 on
// prompt and padding); sequence tensors are [B]. Groups (GRPO, RLOO) are consecutive rows:
// rows g*n .. g*n+n-1 are the n samples of prompt g.
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace flotilla::algorithms {

// Mean of x over the masked tokens of the whole batch.
at::Tensor masked_mean(const at::Tensor& x, const at::Tensor& mask);

// Per-token KL(policy || reference) estimates from log-probabilities of the sampled tokens
// (Schulman, "Approximating KL divergence"): "k1" = lp - ref, "k2" = (lp - ref)^2 / 2,
// "k3" = exp(ref - lp) - (ref - lp) - 1 (non-negative, unbiased).
at::Tensor kl_estimate(const at::Tensor& log_prob, const at::Tensor& ref_log_prob, const std::string& kind);

// GRPO: each reward minus its group's mean, divided by the group's std (+ eps) when `scale`.
at::Tensor grpo_advantages(const at::Tensor& rewards, int64_t group_size, bool scale = true, double eps = 1e-6);
// The same over groups of any size: `group_ids` [B] int64 names each row's group (0 .. G-1).
at::Tensor grpo_advantages(const at::Tensor& rewards, const at::Tensor& group_ids, bool scale = true, double eps = 1e-6);
// RLOO: each reward minus the mean of the other samples of its group.
// The rows of the groups of `n` consecutive rows whose scores differ (the groups with a learning
// signal; dynamic sampling keeps only those).
std::vector<int64_t> informative_rows(const at::Tensor& scores, int64_t n);
// In each group of `n` whose scores differ, its best and its worst row (online DPO's pairs).
std::vector<int64_t> best_and_worst(const at::Tensor& scores, int64_t n);

at::Tensor rloo_advantages(const at::Tensor& rewards, int64_t group_size);
// REINFORCE++: per token, the sequence reward at its last token minus beta * the per-token KL,
// summed from each token to the end (gamma 1), then normalized over all masked tokens of the batch.
at::Tensor reinforce_pp_advantages(const at::Tensor& rewards, const at::Tensor& kl, const at::Tensor& mask, double beta);

struct LmPolicyLoss {
  at::Tensor loss, clipfrac, approx_kl;
};
// Mean over sequences of each sequence's mean over its masked tokens (rows without any are left
// out).
at::Tensor sequence_mean(const at::Tensor& x, const at::Tensor& mask);

// PPO's clipped surrogate per token (ratio clipped to [1 - clip_low, 1 + clip_high]), averaged
// over masked tokens ("token-mean"), averaged per sequence then over sequences ("seq-mean"), or
// summed per sequence and averaged over sequences ("seq-sum"). `weight` (optional, per token,
// no gradient) scales each token's surrogate: the decoupled objective's behaviour weight.
LmPolicyLoss ppo_token_loss(const at::Tensor& log_prob, const at::Tensor& old_log_prob, const at::Tensor& advantages,
                            const at::Tensor& mask, double clip_low, double clip_high,
                            const std::string& aggregation = "token-mean", const at::Tensor& weight = {});

// The decoupled PPO objective's behaviour weight (Hilton et al., as AReaL uses it for stale
// samples): pi_proximal / pi_behaviour per token, from the trainer's log-probs before the update
// and the rollout's, capped at `cap` so a token the rollout found unlikely cannot dominate.
at::Tensor behaviour_weight(const at::Tensor& proximal_log_prob, const at::Tensor& behaviour_log_prob, double cap);

// DPO (Rafailov et al.) on summed response log-probabilities [B]: "sigmoid" with label smoothing,
// or "ipo" (Azar et al.). Returns the mean loss.
at::Tensor dpo_loss(const at::Tensor& chosen, const at::Tensor& rejected, const at::Tensor& ref_chosen,
                    const at::Tensor& ref_rejected, double beta, const std::string& kind = "sigmoid",
                    double label_smoothing = 0.0);

// SFT: the negative mean log-likelihood of the masked tokens.
at::Tensor sft_loss(const at::Tensor& log_prob, const at::Tensor& mask);

// The adaptive KL coefficient of Ziegler et al.: moves toward keeping the observed KL at
// `target`, by at most 20% per horizon.
class AdaptiveKl {
 public:
  AdaptiveKl(double initial, double target, double horizon) : value_(initial), target_(target), horizon_(horizon) {}
  double value() const { return value_; }
  void update(double observed_kl, int64_t steps);

 private:
  double value_, target_, horizon_;
};

}  // namespace flotilla::algorithms
