#pragma once
// Training language models for RLHF: the actor (policy losses: PPO-clip for PPO, GRPO, RLOO and
// REINFORCE++; DPO; SFT), the critic (clipped value loss) and the reward model (Bradley-Terry).
// The advantage estimators are in algorithms/advantages.hpp.
//
// Sequence batches (core::Batch) share one layout: `tokens` [B, T] int64, prompt then response,
// right-padded; `response_mask` [B, T-1] float, 1 where log-prob position t (predicting token t+1)
// is a response token. Fields per stage: `old_log_prob`, `ref_log_prob`, `values`, `advantages`,
// `returns` [B, T-1]; `scores` [B]. DPO pairs are rows 2i (chosen) and 2i+1 (rejected).
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/batch.hpp"
#include "core/config.hpp"
#include "core/metrics.hpp"
#include "core/registry.hpp"

namespace flotilla::models {
class CausalLm;
}

namespace flotilla::algorithms {

// ---- the trainers ----

struct LmOptimConfig {
  double lr = 1e-5;
  double max_grad_norm = 1.0;
  int epochs = 1;        // passes over each step's batch
  int mini_batches = 1;  // optimizer steps per pass (the same on every data-parallel rank)
  int64_t micro_batch = 16;  // rows per forward pass (gradients accumulate over a mini-batch)
  // Micro-batches hold the rows of a prompt together, the prompt's positions run once for them,
  // and only the response positions get logits (CausalLm::response_logits); false: every row's
  // whole sequence through forward().
  bool shared_prompts = true;
  static LmOptimConfig read(core::ConfigView section, double default_lr);
};

struct PolicyLossConfig {
  std::string loss = "ppo";  // a policy_losses() name: ppo, dpo, sft, bradley_terry
  double clip_low = 0.2, clip_high = 0.2;
  std::string aggregation = "token-mean";  // token-mean, seq-mean, seq-sum
  double kl_loss_coef = 0;                 // > 0: KL to the reference as a loss term
  std::string kl_estimator = "k3";
  double entropy_coef = 0;
  double dpo_beta = 0.1;
  std::string dpo_kind = "sigmoid";  // sigmoid, ipo
  double label_smoothing = 0;
  double dpo_nll_coef = 0;  // > 0: plus the chosen responses' NLL (RPO)
  // Samples made by older weights (asynchronous RLHF) carry `rollout_log_prob`, the behaviour's:
  // "decoupled" clips against `old_log_prob` (the trainer's weights before this update, the
  // proximal policy) and weights each token by behaviour_weight(), capped at `is_cap`; "plain"
  // clips against the behaviour log-probs. Rows without them train as on-policy PPO.
  std::string off_policy = "decoupled";
  double is_cap = 5.0;
};

// A policy loss by name: the loss of one micro-batch, adding its statistics to `stats`.
struct PolicyLoss {
  std::function<at::Tensor(models::CausalLm& model, const core::Batch& micro, const PolicyLossConfig& c, core::Scalars& stats)> loss;
  int64_t row_group = 1;       // rows that stay together when batches are shuffled and split (pairs)
  bool token_weighted = true;  // with token-mean aggregation a micro-batch counts by its response tokens, else by rows
  std::string prefix = "actor";  // of the statistics the update adds (grad_norm)
};
core::Registry<PolicyLoss>& policy_losses();

// The ranks one model trains on and their collectives (runtime/layout_group.hpp builds one from
// a layout). Data ranks (dp replicas x fsdp shards) see different rows; the fsdp ranks of a
// replica each hold one chunk of the parameters' flat buffer, of its gradient and of Adam's
// state; tensor-parallel ranks hold slices of the same parameters and see the same rows.
class TrainingGroup {
 public:
  enum class Axis { Data, Dp, Fsdp, Tp };
  virtual ~TrainingGroup() = default;
  virtual int size(Axis axis) const = 0;
  virtual int rank(Axis axis) const = 0;
  // Sums over the ranks that differ only along `axis` (Data: along dp and fsdp), in place.
  virtual void sum(at::Tensor& t, Axis axis) = 0;
  // Over the fsdp ranks: a flat tensor of size(Fsdp) chunks summed, this rank's chunk; and every
  // rank's chunk side by side.
  virtual at::Tensor reduce_scatter(const at::Tensor& flat) = 0;
  virtual at::Tensor all_gather(const at::Tensor& chunk) = 0;
};

// Adam over one model's parameters with gradient clipping. Over several ranks (set_group) an
// update computes exactly what one process computes on all the ranks' rows: each data rank's
// gradient counts by its share of the mini-batch's tokens (or rows), they are summed (all-reduce,
// or reduce-scatter to fsdp chunks), the norm for clipping is the whole model's, and under fsdp
// each rank steps Adam on its chunk and the chunks are gathered back into the parameters.
class LmTrainer {
 public:
  LmTrainer(models::CausalLm& model, LmOptimConfig optim);
  ~LmTrainer();
  // Trains over `group`'s ranks from now on (the optimizer's state starts afresh: call first).
  void set_group(TrainingGroup* group);
  const LmOptimConfig& optim() const { return optim_; }

  // The actor's update on a batch with the loss `loss.loss` names (fields per the loss); returns
  // its statistics (actor/*, or reward_model/* for a reward head's Bradley-Terry loss).
  core::Scalars update_policy(const core::Batch& batch, const PolicyLossConfig& loss, uint64_t seed);
  // The critic's clipped value loss on `values` (old) and `returns`; returns critic/* statistics.
  core::Scalars update_critic(const core::Batch& batch, double value_clip, uint64_t seed);

  // Optimizer state as named tensors for checkpoints, and back.
  std::vector<std::pair<std::string, at::Tensor>> state() const;
  void load_state(const std::map<std::string, at::Tensor>& tensors);

  // Adam's moments as flat buffers in this rank's layout order (runtime/layout.hpp: its
  // tensor-parallel slice, cut to its fsdp chunk) with the step count, and back: how a
  // checkpoint is written and read under any layout. Undefined tensors before the first step.
  struct FlatState {
    at::Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
  };
  FlatState flat_state() const;
  void load_flat_state(const FlatState& s);
  // After the model's parameters were replaced (a checkpoint loaded): under fsdp, this rank's
  // chunk that Adam steps is cut from them again.
  void parameters_replaced();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  models::CausalLm& model_;
  LmOptimConfig optim_;
};

// log p(token t+1 | tokens up to t) for every row, [B, T-1], computed `micro_batch` rows at a
// time without gradients. Given a `response_mask`, only the positions from each row's first
// response position on are computed (the others are 0), with each prompt's positions run once
// for the rows that share it (CausalLm::response_logits).
at::Tensor sequence_log_probs(models::CausalLm& model, const at::Tensor& tokens, int64_t micro_batch = 16,
                              const at::Tensor& response_mask = {});
// The value head at every log-prob position, [B, T-1], without gradients; `response_mask` as above.
at::Tensor sequence_values(models::CausalLm& model, const at::Tensor& tokens, int64_t micro_batch = 16,
                           const at::Tensor& response_mask = {});
// The reward head at each row's `last` token, [B], without gradients.
at::Tensor sequence_rewards(models::CausalLm& model, const at::Tensor& tokens, const at::Tensor& last, int64_t micro_batch = 16);

}  // namespace flotilla::algorithms
