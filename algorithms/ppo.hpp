#pragma once
// Proximal Policy Optimization (Schulman et al. 2017) as CleanRL writes it: clipped surrogate,
// optional value clipping, entropy bonus, advantage normalization per minibatch, epochs of
// shuffled minibatches, gradient-norm clipping, linear learning-rate annealing and an optional
// early stop on approximate KL.
#include <ATen/core/Tensor.h>

#include "algorithms/algorithm.hpp"

namespace flotilla::algorithms {

struct PPOConfig {
  double lr = 2.5e-4;
  bool anneal_lr = true;
  double gamma = 0.99;
  double gae_lambda = 0.95;
  int num_minibatches = 4;
  int update_epochs = 4;
  bool norm_adv = true;
  double clip_coef = 0.2;
  bool clip_vloss = true;
  double ent_coef = 0.01;
  double vf_coef = 0.5;
  double max_grad_norm = 0.5;
  double target_kl = 0.0;  // 0: no early stop
  double adam_eps = 1e-5;

  static PPOConfig read(const core::ConfigView& algo);
};

struct PPOLosses {
  at::Tensor policy, value, entropy, approx_kl, clipfrac;
};

// The PPO loss on one minibatch; `value_old` and `log_prob_old` come from the rollout.
PPOLosses ppo_losses(const PPOConfig& c, const at::Tensor& log_prob, const at::Tensor& entropy, const at::Tensor& value,
                     const at::Tensor& log_prob_old, const at::Tensor& value_old, const at::Tensor& advantage,
                     const at::Tensor& ret);

}  // namespace flotilla::algorithms
