#include "algorithms/advantages.hpp"

#include <ATen/ATen.h>

#include "algorithms/lm_losses.hpp"
#include "core/error.hpp"
#include "kernels/gae.hpp"

namespace flotilla::algorithms {

#if FLOTILLA_WITH_CUDA
void gae_on_gpu(const kernels::GaeArgs& args);  // algorithms/advantages_cuda.cu
#endif

Advantages gae(const Rollout& r, double gamma, double lambda) {
  at::Tensor reward = r.reward.contiguous(), value = r.value.contiguous(), next = r.next_value.contiguous();
  Advantages out{at::empty(reward.sizes(), reward.options()), at::empty(reward.sizes(), reward.options())};
  at::Tensor term = r.terminated.contiguous(), done = r.done.contiguous();
  kernels::GaeArgs a;
  a.steps = reward.size(0);
  a.envs = reward.size(1);
  a.reward = reward.data_ptr<float>();
  a.value = value.data_ptr<float>();
  a.next_value = next.data_ptr<float>();
  a.terminated = term.data_ptr<bool>();
  a.done = done.data_ptr<bool>();
  a.gamma = static_cast<float>(gamma);
  a.lambda = static_cast<float>(lambda);
  a.advantage = out.advantages.data_ptr<float>();
  a.ret = out.returns.data_ptr<float>();
  if (reward.is_cuda()) {
#if FLOTILLA_WITH_CUDA
    gae_on_gpu(a);
#else
    throw Error("GAE on a CUDA tensor needs a build with CUDA");
#endif
  } else {
    kernels::gae_cpu(a);
  }
  return out;
}

core::Batch training_batch(const Fragment& f, double gamma, double lambda) {
  const int64_t T = f.reward.size(0), n = f.reward.size(1);
  at::Tensor next = at::cat({f.value.narrow(0, 1, T - 1), f.bootstrap_value.unsqueeze(0)});
  next = at::where(f.truncated & ~f.terminated, f.final_value, next);
  Advantages adv = gae({f.reward, f.value, next, f.terminated, f.terminated | f.truncated}, gamma, lambda);
  core::Batch b;
  b.set("obs", f.obs.reshape({T * n, -1}));
  b.set("action", f.action.dim() == 2 ? f.action.reshape({T * n}) : f.action.reshape({T * n, f.action.size(2)}));
  b.set("log_prob", f.log_prob.reshape({T * n}));
  b.set("value", f.value.reshape({T * n}));
  b.set("advantage", adv.advantages.reshape({T * n}));
  b.set("return", adv.returns.reshape({T * n}));
  return b;
}

namespace {

// The sequence reward spread over a row's response tokens.
at::Tensor per_token(const at::Tensor& seq, const at::Tensor& mask) { return seq.unsqueeze(1) * mask; }

// Sequence scores with the summed KL penalty taken off when the KL is part of the reward.
at::Tensor penalized_scores(const AdvantageInputs& in) {
  if (in.kl_coef <= 0 || !in.kl.defined()) return in.scores;
  return in.scores - in.kl_coef * (in.kl * in.response_mask).sum(1);
}

// PPO's GAE over response tokens: each row is an episode from its first response token to its
// last, with the score on the last token and -kl_coef * KL on every token. Prompt and padding
// positions are terminal steps with no reward and no value, so nothing flows across them.
Advantages lm_gae(const AdvantageInputs& in) {
  if (!in.values.defined()) throw ConfigError("the gae advantage estimator needs a critic's values");
  const at::Tensor& mask = in.response_mask;
  const at::Tensor last = (mask.cumsum(1) == mask.sum(1, true)) & (mask > 0);
  at::Tensor rewards = last.to(at::kFloat) * in.scores.unsqueeze(1);
  if (in.kl_coef > 0 && in.kl.defined()) rewards = rewards - in.kl_coef * in.kl * mask;
  const at::Tensor values = (in.values * mask).to(at::kFloat);
  const at::Tensor next = at::cat({values.slice(1, 1), at::zeros({values.size(0), 1})}, 1);
  const at::Tensor terminal = last | (mask <= 0);
  // Time-major for the kernel: one column per sequence.
  Advantages tm = gae({rewards.t(), values.t(), next.t(), terminal.t(), terminal.t()}, in.gamma, in.lam);
  const at::Tensor adv = tm.advantages.t() * mask;
  Advantages out;
  out.returns = (adv + values) * mask;
  const at::Tensor mean = masked_mean(adv, mask);
  const at::Tensor var = masked_mean((adv - mean).pow(2), mask);
  out.advantages = (adv - mean) / (var + 1e-8).sqrt() * mask;
  return out;
}

Advantages grpo(const AdvantageInputs& in) {
  return {per_token(grpo_advantages(penalized_scores(in), in.group_size, in.norm_by_std), in.response_mask), {}};
}

Advantages rloo(const AdvantageInputs& in) {
  return {per_token(rloo_advantages(penalized_scores(in), in.group_size), in.response_mask), {}};
}

Advantages reinforce_pp(const AdvantageInputs& in) {
  const at::Tensor kl = in.kl.defined() ? in.kl : at::zeros_like(in.response_mask);
  return {reinforce_pp_advantages(in.scores, kl, in.response_mask, in.kl_coef), {}};
}

}  // namespace

core::Registry<AdvantageEstimator>& advantage_estimators() {
  static core::Registry<AdvantageEstimator> r("advantage estimator", [](auto& r) {
    r.add("gae", lm_gae);
    r.add("grpo", grpo);
    r.add("rloo", rloo);
    r.add("reinforce_pp", reinforce_pp);
  });
  return r;
}

}  // namespace flotilla::algorithms
