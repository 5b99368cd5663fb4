// LM losses and advantages at hand-computed values.
#include <ATen/ATen.h>

#include <cmath>

#include "algorithms/lm_losses.hpp"
#include "core/error.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using namespace flotilla::algorithms;

namespace {
at::Tensor t2(std::vector<float> v, int64_t rows) { return at::tensor(v).view({rows, -1}); }
double at0(const at::Tensor& t) { return t.item<double>(); }
}  // namespace

TEST_CASE("masked_mean_and_kl_estimators") {
  CHECK(at0(masked_mean(t2({1, 2, 3, 4, 5, 6}, 2), t2({1, 1, 0, 1, 0, 0}, 2))) == doctest::Approx(7.0 / 3));
  const at::Tensor lp = at::full({1}, -1.0), ref = at::full({1}, -2.0);
  CHECK(at0(kl_estimate(lp, ref, "k1")) == doctest::Approx(1.0));
  CHECK(at0(kl_estimate(lp, ref, "k2")) == doctest::Approx(0.5));
  CHECK(at0(kl_estimate(lp, ref, "k3")) == doctest::Approx(std::exp(-1.0)));
  at::manual_seed(1);
  CHECK(kl_estimate(at::randn({1000}), at::randn({1000}), "k3").min().item<float>() >= 0.0f);
  CHECK_THROWS_AS(kl_estimate(lp, ref, "k4"), ConfigError);
}

TEST_CASE("group_advantages_grpo_rloo") {
  const at::Tensor r = at::tensor(std::vector<float>{1, 0, 0, 1, 2, 2, 2, 2});
  const at::Tensor g = grpo_advantages(r, 4);
  const double a = 0.5 / std::sqrt(1.0 / 3.0);  // group mean 0.5, unbiased std sqrt(1/3)
  CHECK(g[0].item<float>() == doctest::Approx(a).epsilon(1e-4));
  CHECK(g[1].item<float>() == doctest::Approx(-a).epsilon(1e-4));
  CHECK(g.narrow(0, 4, 4).abs().max().item<float>() == 0.0f);  // a group of equal rewards teaches nothing
  const at::Tensor l = rloo_advantages(r, 4);
  CHECK(l[0].item<float>() == doctest::Approx(2.0 / 3));  // 1 minus the others' mean 1/3
  CHECK(l[1].item<float>() == doctest::Approx(-2.0 / 3));
  CHECK_THROWS_AS(grpo_advantages(r, 3), Error);
  CHECK_THROWS_AS(rloo_advantages(r, 1), Error);
}

TEST_CASE("reinforce_pp_returns_to_go_with_kl_then_batch_normalization") {
  const at::Tensor mask = t2({1, 1, 0, 1, 1, 1}, 2);
  const at::Tensor adv = reinforce_pp_advantages(at::tensor(std::vector<float>{1, 0}), at::full({2, 3}, 0.1), mask, 1.0);
  // Returns: [0.8, 0.9, -] and [-0.3, -0.2, -0.1]; mean 0.22, std sqrt(0.2696).
  const double s = std::sqrt(0.2696);
  CHECK(adv[0][0].item<float>() == doctest::Approx((0.8 - 0.22) / s).epsilon(1e-4));
  CHECK(adv[1][0].item<float>() == doctest::Approx((-0.3 - 0.22) / s).epsilon(1e-4));
  CHECK(adv[0][2].item<float>() == 0.0f);  // padding stays zero
}

TEST_CASE("ppo_token_loss_clips_the_ratio") {
  const at::Tensor lp = at::log(t2({1.5, 0.5}, 1)), old = at::zeros({1, 2}), adv = t2({1, -1}, 1), mask = at::ones({1, 2});
  LmPolicyLoss l = ppo_token_loss(lp, old, adv, mask, 0.2, 0.2);
  // max(-1.5, -1.2) = -1.2 and max(0.5, 0.8) = 0.8: mean -0.2; both ratios outside the clip.
  CHECK(at0(l.loss) == doctest::Approx(-0.2));
  CHECK(at0(l.clipfrac) == doctest::Approx(1.0));
  CHECK(at0(ppo_token_loss(lp, old, adv, mask, 0.2, 0.2, "seq-sum").loss) == doctest::Approx(-0.4));
  CHECK(at0(ppo_token_loss(lp, old, adv, mask, 0.2, 0.6).loss) == doctest::Approx((-1.5 + 0.8) / 2));  // a higher upper clip
}

TEST_CASE("decoupled_ppo_weights_tokens_by_proximal_over_behaviour_capped") {
  // Proximal probabilities 0.5 and 0.4; the rollout's (behaviour) 0.25 and 0.01: weights 2 and 40,
  // the second capped at 5.
  const at::Tensor prox = at::log(t2({0.5, 0.4}, 1)), behaviour = at::log(t2({0.25, 0.01}, 1));
  const at::Tensor w = behaviour_weight(prox, behaviour, 5.0);
  CHECK(w[0][0].item<float>() == doctest::Approx(2.0));
  CHECK(w[0][1].item<float>() == doctest::Approx(5.0));
  // The current policy's ratios to the proximal one: 1.5 and 0.5, so the clipped surrogates are
  // -1.2 and 0.8 (as in the test above), then weighted: (2 * -1.2 + 5 * 0.8) / 2.
  const at::Tensor lp = (prox + at::log(t2({1.5, 0.5}, 1))).requires_grad_(), adv = t2({1, -1}, 1), mask = at::ones({1, 2});
  LmPolicyLoss l = ppo_token_loss(lp, prox, adv, mask, 0.2, 0.2, "token-mean", w);
  CHECK(at0(l.loss) == doctest::Approx((2 * -1.2 + 5 * 0.8) / 2).epsilon(1e-5));
  // Both tokens are clipped, so no gradient flows; unclipped, the weight scales it.
  l.loss.backward();
  CHECK(lp.grad().abs().sum().item<float>() == 0.0f);
  const at::Tensor lp2 = prox.clone().requires_grad_();  // ratio 1: -A * w / 2 per token
  ppo_token_loss(lp2, prox, adv, mask, 0.2, 0.2, "token-mean", w).loss.backward();
  CHECK(lp2.grad()[0][0].item<float>() == doctest::Approx(-1.0));  // -1 * 2 / 2
  CHECK(lp2.grad()[0][1].item<float>() == doctest::Approx(2.5));   // +1 * 5 / 2
  // No weight is weight one.
  CHECK(at0(ppo_token_loss(lp, prox, adv, mask, 0.2, 0.2).loss) ==
        doctest::Approx(at0(ppo_token_loss(lp, prox, adv, mask, 0.2, 0.2, "token-mean", at::ones({1, 2})).loss)));
}

TEST_CASE("sequence_mean_weights_sequences_not_tokens") {
  // Row 0: three tokens of 1; row 1: one token of 4; row 2: no tokens (left out).
  const at::Tensor x = t2({1, 1, 1, 4, 9, 9, 9, 9, 9}, 3), mask = t2({1, 1, 1, 1, 0, 0, 0, 0, 0}, 3);
  CHECK(at0(sequence_mean(x, mask)) == doctest::Approx(2.5));  // token-mean would be 7 / 4
  CHECK(at0(masked_mean(x, mask)) == doctest::Approx(7.0 / 4));
  const at::Tensor lp = at::log(t2({1.5, 0.5, 1.0, 1.0}, 2)), old = at::zeros({2, 2});
  const at::Tensor adv = t2({1, -1, 1, 0}, 2), m = t2({1, 1, 1, 0}, 2);
  // Row 0: mean(-1.2, 0.8) = -0.2; row 1: -1 on its one token; seq-mean -0.6, token-mean -1.4 / 3.
  CHECK(at0(ppo_token_loss(lp, old, adv, m, 0.2, 0.2, "seq-mean").loss) == doctest::Approx(-0.6));
  CHECK(at0(ppo_token_loss(lp, old, adv, m, 0.2, 0.2, "token-mean").loss) == doctest::Approx(-1.4 / 3));
  CHECK_THROWS_AS(ppo_token_loss(lp, old, adv, m, 0.2, 0.2, "mean"), ConfigError);
}

TEST_CASE("dpo_sft_and_adaptive_kl") {
  at::Tensor chosen = at::full({1}, -1.0).requires_grad_(true);
  const at::Tensor rejected = at::full({1}, -3.0), zero = at::zeros({1});
  at::Tensor loss = dpo_loss(chosen, rejected, zero, zero, 0.1);
  CHECK(at0(loss) == doctest::Approx(std::log1p(std::exp(-0.2))));
  loss.backward();
  CHECK(chosen.grad().item<float>() < 0.0f);  // raising the chosen response lowers the loss
  CHECK(at0(dpo_loss(chosen.detach(), rejected, zero, zero, 0.1, "ipo")) == doctest::Approx(9.0));
  CHECK_THROWS_AS(dpo_loss(chosen, rejected, zero, zero, 0.1, "kto"), ConfigError);
  CHECK(at0(sft_loss(t2({-1, -3, -100}, 1), t2({1, 1, 0}, 1))) == doctest::Approx(2.0));
  AdaptiveKl kl(0.1, 6.0, 10000);
  kl.update(12.0, 256);  // twice the target: +20% (clamped) scaled by 256 / horizon
  CHECK(kl.value() == doctest::Approx(0.1 * (1 + 0.2 * 256 / 10000.0)));
  kl.update(3.0, 10000);  // half the target: -20% over a whole horizon
  CHECK(kl.value() == doctest::Approx(0.1 * (1 + 0.2 * 256 / 10000.0) * 0.8));
}
