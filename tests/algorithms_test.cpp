#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <deque>
#include <random>

#include "algorithms/advantages.hpp"
#include "algorithms/ppo.hpp"
#include "algorithms/staleness.hpp"
#include "core/error.hpp"
#include "kernels/vtrace.hpp"
#include "models/distributions.hpp"
#include "models/normalizer.hpp"
#include "models/policy.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;

namespace {
at::Tensor f(std::vector<float> v) { return at::tensor(v, at::kFloat); }
at::Tensor b(std::vector<uint8_t> v) { return at::tensor(v, at::kByte).to(at::kBool); }
}  // namespace

TEST_CASE("ppo_clips_ratio_outside_epsilon") {
  algorithms::PPOConfig c;
  c.clip_coef = 0.2;
  c.norm_adv = false;
  // ratios 1, 1.5, 0.5 with advantages 1, 1, -1: the clipped side wins where it is worse.
  auto l = algorithms::ppo_losses(c, f({0.0f, std::log(1.5f), std::log(0.5f)}), f({0.5f, 0.7f, 0.9f}), f({1, 2, 0}),
                                  f({0, 0, 0}), f({0.5f, 0.5f, 0.5f}), f({1, 1, -1}), f({1, 1, 1}));
  CHECK(l.policy.item<double>() == doctest::Approx((-1.0 - 1.2 + 0.8) / 3).epsilon(1e-6));
  CHECK(l.clipfrac.item<double>() == doctest::Approx(2.0 / 3));
  const double kl = (0 + (0.5 - std::log(1.5)) + (-0.5 - std::log(0.5))) / 3;
  CHECK(l.approx_kl.item<double>() == doctest::Approx(kl).epsilon(1e-6));
  // Clipped value loss: max of (v - R)^2 and (v_old + clip(v - v_old) - R)^2, halved.
  CHECK(l.value.item<double>() == doctest::Approx(0.5 * (0.09 + 1 + 1) / 3).epsilon(1e-6));
  CHECK(l.entropy.item<double>() == doctest::Approx(0.7).epsilon(1e-6));
  c.clip_vloss = false;
  auto plain = algorithms::ppo_losses(c, f({0, 0, 0}), f({0, 0, 0}), f({1, 2, 0}), f({0, 0, 0}), f({0.5f, 0.5f, 0.5f}),
                                      f({1, 1, -1}), f({1, 1, 1}));
  CHECK(plain.value.item<double>() == doctest::Approx(0.5 * (0 + 1 + 1) / 3).epsilon(1e-6));
}

TEST_CASE("ppo_normalizes_advantages_per_minibatch") {
  algorithms::PPOConfig c;
  c.norm_adv = true;
  // Equal ratios of 1: the loss is minus the mean normalized advantage, which is 0.
  auto l = algorithms::ppo_losses(c, f({0, 0, 0, 0}), f({0, 0, 0, 0}), f({0, 0, 0, 0}), f({0, 0, 0, 0}), f({0, 0, 0, 0}),
                                  f({1, 2, 3, 10}), f({0, 0, 0, 0}));
  CHECK(std::fabs(l.policy.item<double>()) < 1e-6);
}

TEST_CASE("gae_bootstraps_truncation_from_final_obs_and_not_termination") {
  // Column 0 is truncated at t = 1 (V(final obs) = 2), column 1 terminated at t = 1.
  algorithms::Rollout r;
  r.reward = at::ones({3, 2});
  r.value = at::full({3, 2}, 0.5f);
  r.next_value = at::tensor(std::vector<float>{0.5f, 0.5f, 2.0f, 9.0f, 0.7f, 0.7f}).reshape({3, 2});
  r.terminated = b({0, 0, 0, 1, 0, 0}).reshape({3, 2});
  r.done = b({0, 0, 1, 1, 0, 0}).reshape({3, 2});
  auto a = algorithms::gae(r, 0.9, 0.5);
  const double a2 = 1 + 0.9 * 0.7 - 0.5;
  CHECK(a.advantages[2][0].item<double>() == doctest::Approx(a2).epsilon(1e-6));
  CHECK(a.advantages[1][0].item<double>() == doctest::Approx(1 + 0.9 * 2.0 - 0.5).epsilon(1e-6));
  CHECK(a.advantages[0][0].item<double>() == doctest::Approx(0.95 + 0.45 * 2.3).epsilon(1e-6));
  CHECK(a.advantages[1][1].item<double>() == doctest::Approx(0.5).epsilon(1e-6));
  CHECK(a.advantages[0][1].item<double>() == doctest::Approx(0.95 + 0.45 * 0.5).epsilon(1e-6));
  CHECK(a.returns[0][1].item<double>() == doctest::Approx(0.95 + 0.45 * 0.5 + 0.5).epsilon(1e-6));
  // lambda = 1, no episode end and next values that are the next rows' values: the value
  // target is the discounted return bootstrapped from the last next value.
  r.done.zero_();
  r.terminated.zero_();
  r.next_value[1][0] = 0.5f;
  auto mc = algorithms::gae(r, 0.9, 1.0);
  CHECK(mc.returns[0][0].item<double>() == doctest::Approx(1 + 0.9 * (1 + 0.9 * (1 + 0.9 * 0.7))).epsilon(1e-6));
}

TEST_CASE("categorical_log_prob_entropy_and_sampling") {
  auto d = models::make_distribution("categorical");
  at::Tensor logits = at::log(f({0.2f, 0.3f, 0.5f})).unsqueeze(0).repeat({20000, 1});
  at::Tensor none;
  CHECK(d->log_prob(logits.narrow(0, 0, 1), none, at::tensor(std::vector<int64_t>{2})).item<double>() ==
        doctest::Approx(std::log(0.5)).epsilon(1e-6));
  const double h = -(0.2 * std::log(0.2) + 0.3 * std::log(0.3) + 0.5 * std::log(0.5));
  CHECK(d->entropy(logits.narrow(0, 0, 1), none).item<double>() == doctest::Approx(h).epsilon(1e-6));
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  at::Tensor s = d->sample(logits, none, gen);
  CHECK(s.min().item<int64_t>() >= 0);
  CHECK(s.max().item<int64_t>() <= 2);
  CHECK((s == 2).to(at::kFloat).mean().item<double>() == doctest::Approx(0.5).epsilon(0.05));
  CHECK((s == 0).to(at::kFloat).mean().item<double>() == doctest::Approx(0.2).epsilon(0.08));
  CHECK(d->mode(logits.narrow(0, 0, 1)).item<int64_t>() == 2);
  CHECK_THROWS_AS(models::make_distribution("gaussian"), ConfigError);
}

TEST_CASE("diag_gaussian_log_prob_matches_the_density") {
  auto d = models::make_distribution("diag_gaussian");
  at::Tensor mean = f({0.5f, -1.0f}).unsqueeze(0), log_std = f({0.0f, std::log(2.0f)});
  at::Tensor a = f({1.5f, -1.0f}).unsqueeze(0);
  const double expected = (-0.5 * 1.0 - 0.5 * std::log(2 * M_PI)) + (-std::log(2.0) - 0.5 * std::log(2 * M_PI));
  CHECK(d->log_prob(mean, log_std, a).item<double>() == doctest::Approx(expected).epsilon(1e-6));
  const double h = (0.5 + 0.5 * std::log(2 * M_PI)) * 2 + std::log(2.0);
  CHECK(d->entropy(mean, log_std).item<double>() == doctest::Approx(h).epsilon(1e-6));
}

TEST_CASE("running_mean_std_equals_the_statistics_of_all_batches") {
  models::RunningMeanStd rms(2);
  at::Tensor x = at::randn({1000, 2}) * 3 + 1;
  rms.update(x.narrow(0, 0, 300));
  rms.update(x.narrow(0, 300, 700));
  CHECK(rms.mean()[0].item<double>() == doctest::Approx(x.select(1, 0).mean().item<double>()).epsilon(1e-3));
  CHECK(rms.var()[1].item<double>() == doctest::Approx(x.select(1, 1).var(false).item<double>()).epsilon(1e-3));
  at::Tensor n = rms.normalize(x, 10);
  CHECK(n.mean().item<double>() == doctest::Approx(0.0).epsilon(0.01));
  CHECK(rms.normalize(at::full({1, 2}, 1e9), 5).max().item<double>() == 5.0);
}

TEST_CASE("policy_loads_its_own_parameters_and_names_a_mismatch") {
  auto obs = envs::Space::box({-1, -1, -1, -1}, {1, 1, 1, 1});
  models::PolicyConfig c;
  at::manual_seed(1);
  models::Policy a(c, obs, envs::Space::discrete(2));
  at::manual_seed(2);
  models::Policy b(c, obs, envs::Space::discrete(2));
  at::Tensor x = at::randn({5, 4});
  CHECK_FALSE(at::equal(a.value(x), b.value(x)));
  b.load(a.named_parameters());
  CHECK(at::equal(a.value(x), b.value(x)));
  c.hidden = {32};
  models::Policy small(c, obs, envs::Space::discrete(2));
  CHECK_THROWS_AS(small.load(a.named_parameters()), FormatError);
  c.distribution = "diag_gaussian";
  CHECK_THROWS_AS(models::Policy(c, obs, envs::Space::discrete(2)), ConfigError);
}

TEST_CASE("vtrace_on_policy_equals_discounted_returns_and_clips_off_policy_weights") {
  // One env, 3 steps, no episode end; on-policy (log rho = 0) V-trace gives the n-step return
  // bootstrapped from the last next value, like GAE with lambda = 1.
  std::vector<float> reward{1, 2, 3}, value{0.5f, 0.4f, 0.3f}, next{0.4f, 0.3f, 0.2f}, log_rho{0, 0, 0};
  bool term[3] = {false, false, false}, done[3] = {false, false, false};
  std::vector<float> vs(3), adv(3);
  kernels::VtraceArgs a;
  a.steps = 3;
  a.envs = 1;
  a.reward = reward.data();
  a.value = value.data();
  a.next_value = next.data();
  a.log_rho = log_rho.data();
  a.terminated = term;
  a.done = done;
  a.gamma = 0.9f;
  a.vs = vs.data();
  a.pg_advantage = adv.data();
  kernels::vtrace_cpu(a);
  CHECK(vs[2] == doctest::Approx(3 + 0.9 * 0.2));
  CHECK(vs[1] == doctest::Approx(2 + 0.9 * (3 + 0.9 * 0.2)));
  CHECK(vs[0] == doctest::Approx(1 + 0.9 * (2 + 0.9 * (3 + 0.9 * 0.2))));
  CHECK(adv[0] == doctest::Approx(1 + 0.9 * vs[1] - 0.5));
  // A terminal step cuts the bootstrap; a huge importance weight is clipped to rho_bar = 1.
  term[1] = done[1] = true;
  log_rho = {5.0f, 0, 0};
  kernels::vtrace_cpu(a);
  CHECK(vs[1] == doctest::Approx(2.0));
  CHECK(vs[0] == doctest::Approx(0.5 + (1 + 0.9 * 0.4 - 0.5) + 0.9 * (vs[1] - 0.4)));
  // A small weight scales the correction down.
  log_rho = {std::log(0.5f), 0, 0};
  kernels::vtrace_cpu(a);
  CHECK(vs[0] == doctest::Approx(0.5 + 0.5 * (1 + 0.9 * 0.4 - 0.5) + 0.9 * 0.5 * (vs[1] - 0.4)));
}

TEST_CASE("staleness_admission_and_batches_by_hand") {
  algorithms::Staleness s(1, 4);
  CHECK(s.admissible(0, 0) == 8);  // (1 + 0 + 1) * 4
  CHECK(s.admissible(0, 6) == 2);
  CHECK(s.admissible(3, 16) == 4);
  CHECK(s.fresh(2, 3));
  CHECK_FALSE(s.fresh(1, 3));
  // Version 3: the oldest ready units, unit 0 (admitted at 2, due) first.
  CHECK((s.pick({2, 3, 3, 3, 3}, {}, 3) == std::vector<size_t>{0, 1, 2, 3}));
  // A due unit still running holds the batch back, however many others are ready.
  CHECK(s.pick({3, 3, 3, 3, 3}, {2}, 3).empty());
  CHECK(s.pick({3, 3, 3}, {}, 3).empty());  // not enough ready
  // Five units admitted at 2 still running would all be due at version 4, one batch (4): wait.
  CHECK(s.pick({3, 3, 3, 3}, {2, 2, 2, 2, 2}, 3).empty());
  CHECK((s.pick({3, 3, 3, 3}, {3, 3, 3, 3}, 3) == std::vector<size_t>{0, 1, 2, 3}));
  // Staleness 0 is synchronous: only the batch admitted at this version trains it.
  algorithms::Staleness sync(0, 2);
  CHECK(sync.admissible(0, 0) == 2);
  CHECK(sync.admissible(0, 2) == 0);
  CHECK((sync.pick({0, 0}, {}, 0) == std::vector<size_t>{0, 1}));
  CHECK(sync.pick({0}, {0}, 0).empty());
  algorithms::Staleness free(algorithms::Staleness::kUnbounded, 2);
  CHECK(free.fresh(0, 1000));
  CHECK((free.pick({0, 5, 9}, {0}, 1000) == std::vector<size_t>{0, 1}));
  CHECK(free.str() == "unbounded");
  CHECK_THROWS_AS(algorithms::Staleness(-2, 4), Error);
}

TEST_CASE("staleness_never_exceeds_the_bound_with_skewed_workers") {
  // A simulated asynchronous run: four rollout workers of very different speeds generate units of
  // long-tailed lengths, each taking its queue in order; units are admitted by the rule; a trainer
  // takes a batch whenever pick() gives one. A unit is made by the trainer's version when its
  // generation starts (weights reach a rollout at once here).
  std::mt19937_64 rng(7);
  for (int64_t max : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{4}, algorithms::Staleness::kUnbounded}) {
    CAPTURE(max);
    const int64_t batch = 8, versions = 1300;  // 10,400 units trained
    const size_t none = SIZE_MAX;
    algorithms::Staleness s(max, batch);
    struct Unit {
      int64_t admitted = 0, made = -1;
      double done = 1e300;
      bool trained = false;
    };
    std::vector<Unit> units;
    std::vector<std::deque<size_t>> queue(4);
    std::vector<size_t> busy(4, none);
    std::vector<double> speed(4);
    std::lognormal_distribution<double> skew(0.0, 1.0), length(0.0, 1.2);
    for (auto& v : speed) v = skew(rng);
    int64_t version = 0, trained = 0, worst = 0;
    double now = 0, trainer_free = 0;
    while (version < versions) {
      for (int64_t k = s.admissible(version, static_cast<int64_t>(units.size())); k > 0 && units.size() < 12000; --k) {
        size_t w = 0;  // the worker with the least work waiting
        for (size_t x = 1; x < 4; ++x)
          if (queue[x].size() + (busy[x] != none) < queue[w].size() + (busy[w] != none)) w = x;
        queue[w].push_back(units.size());
        units.push_back({version});
      }
      for (size_t w = 0; w < 4; ++w) {
        if (busy[w] != none && units[busy[w]].done <= now) busy[w] = none;
        if (busy[w] == none && !queue[w].empty()) {
          busy[w] = queue[w].front();
          queue[w].pop_front();
          units[busy[w]].made = version;
          units[busy[w]].done = now + length(rng) / speed[w];
        }
      }
      std::vector<int64_t> ready, running;
      std::vector<size_t> ids;
      for (size_t i = 0; i < units.size(); ++i) {
        if (units[i].trained) continue;
        if (units[i].done <= now) ready.push_back(units[i].admitted), ids.push_back(i);
        else running.push_back(units[i].admitted);
      }
      if (now >= trainer_free) {
        const std::vector<size_t> pick = s.pick(ready, running, version);
        if (!pick.empty()) {
          for (size_t p : pick) {
            worst = std::max(worst, version - units[ids[p]].made);
            units[ids[p]].trained = true;
            ++trained;
          }
          ++version;
          trainer_free = now + 0.5;
          continue;
        }
      }
      double next = now < trainer_free ? trainer_free : 1e300;
      for (size_t w = 0; w < 4; ++w)
        if (busy[w] != none) next = std::min(next, units[busy[w]].done);
      REQUIRE(next < 1e300);  // never stuck
      now = std::max(now, next);
    }
    CHECK(trained >= 10000);
    if (max >= 0) CHECK(worst <= max);
    if (max == 4) CHECK(worst == 4);  // the skew does push samples to the bound
  }
}
