// Multi-agent learners: episode recording and replay, QMIX's monotonic mixing, VDN, the Q
// update, and the MAPPO policy's critic, masks and value normalization.
#include <ATen/CPUGeneratorImpl.h>

#include "algorithms/algorithm.hpp"
#include "algorithms/episode_replay.hpp"
#include "algorithms/q_learning.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "envs/multi_agent.hpp"
#include "models/policy.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using algorithms::EpisodeShape;

namespace {

core::Config yaml(const std::string& text) { return core::Config(core::ConfigTree::load_string(text)); }

// Observations that encode (env, step) so the recorded order can be read back.
at::Tensor marked(int64_t envs, double step, const EpisodeShape& s) {
  at::Tensor o = at::zeros({envs, s.agents, s.obs_dim});
  for (int64_t e = 0; e < envs; ++e) o[e].fill_(100.0 * e + step);
  return o;
}

}  // namespace

TEST_CASE("episode_recorder_keeps_whole_episodes_with_their_final_observation") {
  const EpisodeShape s{4, 2, 3, 5, 6};
  algorithms::EpisodeRecorder rec(s, 2);
  auto state = [&](double v) { return at::full({2, s.state_dim}, v); };
  at::Tensor avail = at::ones({2, s.agents, s.actions}, at::kBool);
  rec.begin(marked(2, 0, s), state(0), avail);
  auto step = [&](int t, std::vector<bool> done, std::vector<bool> term) {
    at::Tensor d = at::tensor(std::vector<int64_t>(done.begin(), done.end())).to(at::kBool);
    at::Tensor te = at::tensor(std::vector<int64_t>(term.begin(), term.end())).to(at::kBool);
    at::Tensor action = at::full({2, s.agents}, t, at::kLong);
    at::Tensor reward = at::full({2, s.agents}, static_cast<double>(t));
    // After an end the env's current observation is the next episode's first (step 50 + t).
    at::Tensor next = at::where(d.view({2, 1, 1}), marked(2, 50 + t, s), marked(2, t, s));
    return rec.step(action, reward, te, d, next, state(t), avail, marked(2, t, s), state(t), avail);
  };
  CHECK(step(1, {false, false}, {false, false}).empty());
  core::Batch first = step(2, {true, false}, {true, false});  // env 0 ends after 2 steps (terminated)
  REQUIRE(first.size() == 1);
  CHECK(first["obs"][0][0][0][0].item<float>() == 0.0f);
  CHECK(first["obs"][0][1][0][0].item<float>() == 1.0f);
  CHECK(first["obs"][0][2][0][0].item<float>() == 2.0f);  // the final observation, at t = length
  CHECK(at::equal(first["filled"][0], at::tensor(std::vector<float>{1, 1, 0, 0})));
  CHECK(at::equal(first["terminated"][0], at::tensor(std::vector<float>{0, 1, 0, 0})));
  CHECK(first["action"][0][1][0].item<int64_t>() == 2);
  CHECK(first["reward"][0][0][1].item<float>() == 1.0f);
  CHECK(step(3, {false, false}, {false, false}).empty());
  core::Batch second = step(4, {false, true}, {false, false});  // env 1 hits the time limit
  REQUIRE(second.size() == 1);
  CHECK(second["obs"][0][4][0][0].item<float>() == 104.0f);
  CHECK(second["filled"][0].sum().item<float>() == 4.0f);
  CHECK(second["terminated"][0].sum().item<float>() == 0.0f);  // truncated: bootstrapped, not terminal
  // Env 0's second episode began from the observation after its reset (step 52).
  core::Batch again = step(5, {true, false}, {true, false});
  CHECK(again["obs"][0][0][0][0].item<float>() == 52.0f);
  CHECK(again["filled"][0].sum().item<float>() == 3.0f);
}

TEST_CASE("episode_replay_overwrites_the_oldest_episodes") {
  const EpisodeShape s{2, 1, 1, 1, 2};
  algorithms::EpisodeReplay replay(s, 2);
  for (int k = 0; k < 3; ++k) {
    core::Batch e = algorithms::empty_episodes(s, 1);
    e["reward"].fill_(static_cast<double>(k));
    replay.add(e);
  }
  CHECK(replay.size() == 2);
  CHECK(replay.episodes_added() == 3);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  at::Tensor seen = replay.sample(64, gen)["reward"].select(1, 0).select(1, 0);
  CHECK(seen.min().item<float>() == 1.0f);  // episode 0 was overwritten
  CHECK(seen.max().item<float>() == 2.0f);
}

TEST_CASE("qmix_mixing_is_monotonic_in_every_agent_q") {
  at::manual_seed(4);
  algorithms::QConfig c;
  c.mixer = "qmix";
  algorithms::QLearner learner(c, EpisodeShape{5, 3, 4, 7, 5});
  at::Tensor states = at::randn({16, 5, 7});
  at::Tensor qs = at::randn({16, 5, 3}).requires_grad_(true);
  at::Tensor total = learner.mix(qs, states);
  REQUIRE(total.sizes() == at::IntArrayRef({16, 5}));
  total.sum().backward();
  CHECK(qs.grad().min().item<float>() >= 0.0f);  // dQ_tot / dQ_a >= 0 everywhere
  for (int a = 0; a < 3; ++a) {
    at::Tensor up = qs.detach().clone();
    up.select(2, a).add_(at::rand({16, 5}) * 3);
    CHECK((learner.mix(up, states) - learner.mix(qs.detach(), states)).min().item<float>() >= -1e-5f);
  }
  algorithms::QConfig v;
  v.mixer = "vdn";
  algorithms::QLearner vdn(v, EpisodeShape{5, 3, 4, 7, 5});
  CHECK(at::allclose(vdn.mix(qs.detach(), states), qs.detach().sum(-1)));
}

TEST_CASE("q_learners_reduce_the_td_error_on_a_batch") {
  for (const char* mixer : {"none", "vdn", "qmix"}) {
    CAPTURE(std::string(mixer));
    at::manual_seed(5);
    algorithms::QConfig c;
    c.mixer = mixer;
    c.lr = 3e-3;
    const EpisodeShape s{6, 2, 4, 5, 3};
    algorithms::QLearner learner(c, s);
    core::Batch e = algorithms::empty_episodes(s, 8);
    e["obs"].copy_(at::randn({8, 7, 2, 4}));
    e["state"].copy_(at::randn({8, 7, 5}));
    e["avail"].fill_(true);
    e["action"].copy_(at::randint(0, 3, {8, 6, 2}, at::kLong));
    e["reward"].copy_(at::randn({8, 6, 2}));
    e["filled"].fill_(1.0);
    e["terminated"].select(1, 5).fill_(1.0);
    const double first = learner.update(e)[0].second;
    double last = first;
    for (int k = 0; k < 60; ++k) last = learner.update(e)[0].second;
    CHECK(last < 0.5 * first);
  }
}

TEST_CASE("q_learner_acts_only_among_available_actions") {
  at::manual_seed(6);
  algorithms::QConfig c;
  algorithms::QLearner learner(c, EpisodeShape{5, 2, 3, 4, 4});
  at::Tensor avail = at::zeros({64, 2, 4}, at::kBool);
  avail.select(2, 1).fill_(true);
  avail.select(2, 3).fill_(true);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  for (double eps : {0.0, 1.0}) {
    at::Tensor a = learner.act(at::randn({64, 2, 3}), avail, at::full({64, 2}, -1, at::kLong), eps, gen);
    CHECK(((a == 1) | (a == 3)).all().item<bool>());
  }
  c.epsilon_anneal_steps = 100;
  CHECK(c.epsilon(0) == doctest::Approx(1.0));
  CHECK(c.epsilon(50) == doctest::Approx(0.525));
  CHECK(c.epsilon(1000) == doctest::Approx(0.05));
}

TEST_CASE("mappo_policy_reads_the_global_state_and_masks_actions") {
  core::Config cfg = yaml("model: {hidden: [16]}\nalgo: {name: mappo}\n");
  auto env = envs::make_env("smax/3m", envs::EnvOptions{});
  env->reset(2);
  at::manual_seed(1);
  auto policy = algorithms::make_policy(cfg.root(), env->spec());
  CHECK(policy->value_norm());
  const envs::ObsLayout& l = env->spec().layout;
  at::Tensor obs = env->obs().clone();
  // The critic sees the global state: changing it changes the value, not the action distribution.
  at::Tensor other = obs.clone();
  other.narrow(1, l.critic_offset() + l.agents, l.state_dim).add_(1.0);
  at::Tensor action = at::zeros({3}, at::kLong);
  models::EvalOutput a = policy->evaluate(obs, action), b = policy->evaluate(other, action);
  CHECK(at::allclose(a.log_prob, b.log_prob));
  CHECK_FALSE(at::allclose(a.value, b.value));
  // Unavailable actions (attacks out of range at the start) are never sampled.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(2);
  at::Tensor many = obs.repeat({200, 1});
  at::Tensor sampled = policy->act(many, false, gen).action;
  at::Tensor mask = many.narrow(1, l.mask_offset(), l.mask_dim);
  CHECK(mask.gather(1, sampled.unsqueeze(1)).min().item<float>() == 1.0f);
  // IPPO keeps critics local, and says so when asked for a global one.
  core::Config ippo = yaml("model: {critic: global}\nalgo: {name: ippo}\n");
  CHECK_THROWS_AS(algorithms::make_policy(ippo.root(), env->spec()), ConfigError);
  core::Config single = yaml("algo: {name: mappo}\n");
  CHECK_THROWS_AS(algorithms::make_policy(single.root(), envs::env_spec("CartPole-v1")), ConfigError);
}

TEST_CASE("value_normalization_tracks_returns_and_round_trips") {
  core::Config cfg = yaml("model: {hidden: [8]}\nalgo: {name: mappo}\n");
  auto env = envs::make_env("mpe/simple_spread", envs::EnvOptions{});
  at::manual_seed(1);
  auto policy = algorithms::make_policy(cfg.root(), env->spec());
  at::Tensor returns = at::randn({4096}) * 5 + 20;
  policy->update_value_norm(returns);
  at::Tensor n = policy->normalize_value(returns);
  CHECK(n.mean().item<double>() == doctest::Approx(0.0).epsilon(0.05));
  CHECK(n.std().item<double>() == doctest::Approx(1.0).epsilon(0.05));
  // The statistics travel with the weights (flat buffers for actors, checkpoints).
  auto copy = algorithms::make_policy(cfg.root(), env->spec());
  copy->load_flat(policy->flat());
  CHECK(at::allclose(copy->normalize_value(returns), n));
}
