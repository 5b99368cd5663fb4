#include <nlohmann/json.hpp>

#include <cmath>
#include <numbers>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/batched_env.hpp"
#include "envs/registry.hpp"
#include "support/torch_doctest.hpp"
#include "support/error_of.hpp"

using namespace flotilla;
using test::error_of;
using envs::EnvOptions;
using envs::make_env;

namespace {

std::unique_ptr<envs::VecEnv> one_env(const std::string& id, int32_t max_steps = 0) {
  EnvOptions o;
  o.max_episode_steps = max_steps;
  return make_env(id, o);
}

at::Tensor discrete(std::vector<int64_t> a) { return at::tensor(a, at::kLong); }
at::Tensor box(std::vector<float> a) { return at::tensor(a, at::kFloat).reshape({static_cast<int64_t>(a.size()), 1}); }

at::Tensor action_from_json(const envs::Space& space, const nlohmann::json& a) {
  if (space.kind == envs::Space::Kind::Discrete) return discrete({a.get<int64_t>()});
  return box({a[0].get<float>()});
}

}  // namespace

TEST_CASE("classic_envs_follow_the_reference_equations_step_by_step") {
  // tests/data/classic_traces.json comes from tests/reference/classic_control.py, an independent
  // scalar implementation of Gymnasium 1.x's equations. Every step must agree to 1e-4.
  auto traces = nlohmann::json::parse(core::read_file(std::string(FLOTILLA_SOURCE_DIR) + "/tests/data/classic_traces.json"));
  REQUIRE(traces.size() >= 10);
  for (const auto& trace : traces) {
    const std::string id = trace["env"];
    CAPTURE(id);
    CAPTURE(trace["init_state"].dump());
    auto env = one_env(id);
    env->reset(7);
    env->set_state(0, trace["init_state"].get<std::vector<double>>());
    double worst = 0;
    for (size_t k = 0; k < trace["obs0"].size(); ++k)
      worst = std::max(worst, std::fabs(env->obs()[0][k].item<double>() - trace["obs0"][k].get<double>()));
    int steps = 0;
    for (const auto& s : trace["steps"]) {
      env->step(action_from_json(env->spec().action_space, s["action"]));
      ++steps;
      const bool terminated = env->terminated()[0].item<bool>(), truncated = env->truncated()[0].item<bool>();
      CHECK(terminated == s["terminated"].get<bool>());
      const at::Tensor& obs = terminated || truncated ? env->final_obs() : env->obs();
      for (size_t k = 0; k < s["obs"].size(); ++k)
        worst = std::max(worst, std::fabs(obs[0][k].item<double>() - s["obs"][k].get<double>()));
      worst = std::max(worst, std::fabs(env->reward()[0].item<double>() - s["reward"].get<double>()));
      CHECK(truncated == (steps == env->max_episode_steps()));
    }
    CHECK(worst < 1e-4);
    MESSAGE(id << ": " << steps << " steps, largest difference " << worst);
  }
}

TEST_CASE("cartpole_first_step_from_rest_matches_hand_derivation") {
  // From rest, pushing right: temp = 10 / 1.1; thetaacc = -temp / (0.5 (4/3 - 0.1/1.1));
  // xacc = temp - 0.05 thetaacc / 1.1. Euler moves velocities by 0.02 * acceleration.
  auto env = one_env("CartPole-v1");
  env->reset(0);
  env->set_state(0, {0, 0, 0, 0});
  env->step(discrete({1}));
  const double temp = 10.0 / 1.1, thetaacc = -temp / (0.5 * (4.0 / 3.0 - 0.1 / 1.1));
  const double xacc = temp - 0.05 * thetaacc / 1.1;
  CHECK(env->obs()[0][0].item<double>() == doctest::Approx(0.0));
  CHECK(env->obs()[0][1].item<double>() == doctest::Approx(0.02 * xacc).epsilon(1e-6));
  CHECK(env->obs()[0][3].item<double>() == doctest::Approx(0.02 * thetaacc).epsilon(1e-6));
  CHECK(env->obs()[0][1].item<double>() == doctest::Approx(0.195122).epsilon(1e-5));
  CHECK(env->reward()[0].item<float>() == 1.0f);
}

TEST_CASE("pendulum_reward_and_step_match_hand_derivation") {
  auto env = one_env("Pendulum-v1");
  env->reset(0);
  env->set_state(0, {1.0, 0.5});
  env->step(box({0.5f}));
  // cost = 1^2 + 0.1 * 0.5^2 + 0.001 * 0.5^2; thdot' = 0.5 + (15 sin 1 + 3 * 0.5) * 0.05.
  CHECK(env->reward()[0].item<double>() == doctest::Approx(-1.02525).epsilon(1e-6));
  const double thdot = 0.5 + (15 * std::sin(1.0) + 1.5) * 0.05;
  CHECK(env->obs()[0][2].item<double>() == doctest::Approx(thdot).epsilon(1e-6));
  CHECK(env->obs()[0][0].item<double>() == doctest::Approx(std::cos(1.0 + thdot * 0.05)).epsilon(1e-6));
  // Torque is clipped to [-2, 2]: 5 and 2 give the same step.
  env->set_state(0, {0.3, 0.0});
  env->step(box({5.0f}));
  const float clipped = env->obs()[0][2].item<float>();
  env->set_state(0, {0.3, 0.0});
  env->step(box({2.0f}));
  CHECK(env->obs()[0][2].item<float>() == clipped);
}

TEST_CASE("termination_and_rewards_at_the_goal") {
  auto cart = one_env("CartPole-v1");
  cart->reset(0);
  cart->set_state(0, {2.39, 1.0, 0.0, 0.0});
  cart->step(discrete({1}));
  CHECK(cart->terminated()[0].item<bool>());
  CHECK_FALSE(cart->truncated()[0].item<bool>());
  CHECK(cart->final_obs()[0][0].item<float>() > 2.4f);

  auto car = one_env("MountainCar-v0");
  car->reset(0);
  car->set_state(0, {0.49, 0.05});
  car->step(discrete({2}));
  CHECK(car->terminated()[0].item<bool>());
  CHECK(car->reward()[0].item<float>() == -1.0f);

  auto cont = one_env("MountainCarContinuous-v0");
  cont->reset(0);
  cont->set_state(0, {0.44, 0.05});
  cont->step(box({0.5f}));
  CHECK(cont->terminated()[0].item<bool>());
  CHECK(cont->reward()[0].item<double>() == doctest::Approx(100.0 - 0.025).epsilon(1e-6));

  auto acro = one_env("Acrobot-v1");
  acro->reset(0);
  acro->set_state(0, {3.0, 0.0, 0.0, 0.0});  // the tip far above the line
  acro->step(discrete({1}));
  CHECK(acro->terminated()[0].item<bool>());
  CHECK(acro->reward()[0].item<float>() == 0.0f);
}

TEST_CASE("mountain_car_stops_at_the_left_wall") {
  auto car = one_env("MountainCar-v0");
  car->reset(0);
  car->set_state(0, {-1.19, -0.05});
  car->step(discrete({0}));
  auto s = car->state(0);
  CHECK(s[0] == -1.2);
  CHECK(s[1] == 0.0);
}

TEST_CASE("truncation_keeps_final_obs_and_episode_statistics_then_resets") {
  auto env = one_env("Pendulum-v1", 5);
  env->reset(3);
  at::Tensor last_obs;
  for (int t = 1; t <= 5; ++t) {
    env->step(box({0.0f}));
    CHECK(env->truncated()[0].item<bool>() == (t == 5));
    if (t < 5) last_obs = env->obs().clone();
  }
  CHECK_FALSE(env->terminated()[0].item<bool>());
  CHECK(env->episode_length()[0].item<int>() == 5);
  CHECK(env->episode_return()[0].item<float>() < 0.0f);
  // final_obs continues the episode; obs is the start of the next one.
  CHECK_FALSE(at::equal(env->final_obs()[0], env->obs()[0]));
  auto s = env->state(0);
  CHECK(std::fabs(s[1]) <= 1.0);  // a fresh reset: speed drawn from [-1, 1]
  env->step(box({0.0f}));
  CHECK_FALSE(env->truncated()[0].item<bool>());  // the step count restarted
}

TEST_CASE("episode_return_counts_every_reward_of_the_episode") {
  auto env = one_env("CartPole-v1");
  env->reset(0);
  env->set_state(0, {2.3, 2.0, 0.0, 0.0});
  int steps = 0;
  do {
    env->step(discrete({1}));
    ++steps;
  } while (!env->terminated()[0].item<bool>());
  CHECK(env->episode_length()[0].item<int>() == steps);
  CHECK(env->episode_return()[0].item<float>() == static_cast<float>(steps));
}

TEST_CASE("reset_draws_follow_gymnasium_ranges") {
  EnvOptions o;
  o.num_envs = 500;
  auto check_range = [&](const std::string& id, std::vector<std::pair<double, double>> ranges) {
    auto env = make_env(id, o);
    env->reset(11);
    for (int64_t i = 0; i < o.num_envs; ++i) {
      auto s = env->state(i);
      for (size_t k = 0; k < ranges.size(); ++k) {
        CHECK(s[k] >= ranges[k].first);
        CHECK(s[k] <= ranges[k].second);
      }
    }
    // Not all equal: the streams differ between envs.
    CHECK(env->state(0)[0] != env->state(1)[0]);
  };
  check_range("CartPole-v1", {{-0.05, 0.05}, {-0.05, 0.05}, {-0.05, 0.05}, {-0.05, 0.05}});
  check_range("Acrobot-v1", {{-0.1, 0.1}, {-0.1, 0.1}, {-0.1, 0.1}, {-0.1, 0.1}});
  check_range("MountainCar-v0", {{-0.6, -0.4}, {0.0, 0.0}});
  check_range("Pendulum-v1", {{-std::numbers::pi, std::numbers::pi}, {-1.0, 1.0}});
}

TEST_CASE("trajectories_do_not_depend_on_threads_or_batch_size") {
  for (const std::string id : {"CartPole-v1", "Acrobot-v1", "Pendulum-v1"}) {
    CAPTURE(id);
    std::vector<at::Tensor> obs_by_threads;
    const int64_t n = 1000;  // not a whole number of CPU blocks: padding is exercised
    const bool is_box = id == "Pendulum-v1";
    at::manual_seed(5);
    std::vector<at::Tensor> actions;
    for (int t = 0; t < 300; ++t)
      actions.push_back(is_box ? (at::rand({n, 1}) * 4 - 2).contiguous() : at::randint(0, id == "Acrobot-v1" ? 3 : 2, {n}, at::kLong));
    for (int threads : {1, 2, 3}) {
      EnvOptions o;
      o.num_envs = n;
      o.threads = threads;
      auto env = make_env(id, o);
      env->reset(42);
      at::Tensor returns = at::zeros({n});
      for (const auto& a : actions) {
        env->step(a);
        returns += env->reward();
      }
      obs_by_threads.push_back(at::cat({env->obs(), returns.unsqueeze(1)}, 1));
    }
    CHECK(at::equal(obs_by_threads[0], obs_by_threads[1]));
    CHECK(at::equal(obs_by_threads[0], obs_by_threads[2]));
  }
  // Env i's stream depends on (seed, i) only, not on how many envs share the batch.
  EnvOptions small, large;
  small.num_envs = 10;
  large.num_envs = 700;
  auto a = make_env("CartPole-v1", small), b = make_env("CartPole-v1", large);
  a->reset(9);
  b->reset(9);
  CHECK(at::equal(a->obs()[7], b->obs()[7]));
  b->reset(10);
  CHECK_FALSE(at::equal(a->obs()[7], b->obs()[7]));
}

TEST_CASE("spaces_print_in_gymnasium_notation") {
  CHECK(envs::Space::discrete(3).str() == "Discrete(3)");
  CHECK(envs::Space::multi_discrete({3, 2}).str() == "MultiDiscrete([3 2])");
  CHECK(envs::Space::box({-1.0}, {1.0}).str() == "Box(-1.0, 1.0, (1,), float32)");
  CHECK(envs::Space::box({-1.0, -2.0}, {1.0, 2.0}).str() == "Box([-1.0 -2.0], [1.0 2.0], (2,), float32)");
  CHECK(envs::env_spec("Pendulum-v1").action_space.str() == "Box(-2.0, 2.0, (1,), float32)");
  CHECK(envs::env_spec("CartPole-v1").max_episode_steps == 500);
  CHECK(envs::env_spec("Acrobot-v1").max_episode_steps == 500);
  CHECK(envs::env_spec("MountainCar-v0").max_episode_steps == 200);
  CHECK(envs::env_spec("MountainCarContinuous-v0").max_episode_steps == 999);
  CHECK(envs::env_spec("Pendulum-v1").max_episode_steps == 200);
}

TEST_CASE("bad_actions_are_rejected_naming_the_env_and_value") {
  EnvOptions o;
  o.num_envs = 4;
  auto cart = make_env("CartPole-v1", o);
  cart->reset(0);
  CHECK(error_of([&] { cart->step(discrete({0, 1, 2, 0})); }).find("env 2: action 2 is outside Discrete(2)") !=
        std::string::npos);
  CHECK(error_of([&] { cart->step(discrete({0, -1, 0, 0})); }).find("env 1: action -1") != std::string::npos);
  CHECK(error_of([&] { cart->step(at::zeros({4}, at::kFloat)); }).find("dtype Float, expected int64") !=
        std::string::npos);
  CHECK(error_of([&] { cart->step(discrete({0, 1})); }).find("shape [2], expected [4]") != std::string::npos);
  auto pend = make_env("Pendulum-v1", o);
  pend->reset(0);
  at::Tensor a = at::zeros({4, 1});
  a[3][0] = NAN;
  CHECK(error_of([&] { pend->step(a); }).find("env 3: action[0] is NaN") != std::string::npos);
  CHECK(error_of([&] { pend->step(at::zeros({4})); }).find("expected [4, 1]") != std::string::npos);
  // A rejected step changes nothing.
  at::Tensor before = pend->obs().clone();
  CHECK(at::equal(before, pend->obs()));
}

TEST_CASE("unknown_ids_wrong_states_and_unavailable_backends_get_clear_errors") {
  std::string err = error_of([] { one_env("CartPole-v2"); });
  CHECK(err.find("unknown env id 'CartPole-v2'; did you mean 'CartPole-v1'?") != std::string::npos);
  CHECK(err.find("Pendulum-v1") != std::string::npos);
  auto env = one_env("Acrobot-v1");
  env->reset(0);
  err = error_of([&] { env->set_state(0, {0.1, 0.2}); });
  CHECK(err.find("4 values [theta1, theta2, dtheta1, dtheta2], got 2") != std::string::npos);
  CHECK_THROWS_AS(env->set_state(1, {0, 0, 0, 0}), Error);
  EnvOptions o;
  o.backend = "cuda";
  if (!at::hasCUDA()) {
    // With CUDA kernels compiled, no GPU; without them (the cpu and asan presets), no kernels.
    err = error_of([&] { make_env("CartPole-v1", o); });
    CHECK_MESSAGE((err.find("backend 'cuda' needs a GPU") != std::string::npos ||
                   err.find("this build has no CUDA kernels for this env") != std::string::npos), err);
  }
  o.backend = "tpu";
  CHECK(error_of([&] { make_env("CartPole-v1", o); }).find("backend must be 'cpu' or 'cuda'") != std::string::npos);
  EnvOptions zero;
  zero.num_envs = 0;
  CHECK_THROWS_AS(make_env("CartPole-v1", zero), ConfigError);
}

// ---- a user's own env, registered from this file without touching Flotilla's ----

namespace {

// Two counters; action k of each in {0, 1, 2} moves it by k - 1; the episode ends when both
// counters reach 3. Reward is the sum of the counters.
struct TwoCounters {
  static constexpr int kStateDim = 2;
  static constexpr int kObsDim = 2;
  static constexpr kernels::ActionKind kActionKind = kernels::ActionKind::MultiDiscrete;
  static constexpr int kActionDim = 2;
  static constexpr int64_t kNumActions = 0;
  using Action = const int64_t*;
  struct Params {
    double start = 0.0;
  };
  FLOTILLA_HD static void reset(const Params& p, kernels::StateRef s, kernels::EnvRng&) {
    s[0] = p.start;
    s[1] = p.start;
  }
  FLOTILLA_HD static void step(const Params&, kernels::StateRef s, Action a, float& reward, bool& terminated) {
    s[0] += static_cast<double>(a[0] - 1);
    s[1] += static_cast<double>(a[1] - 1);
    reward = static_cast<float>(s[0] + s[1]);
    terminated = s[0] >= 3 && s[1] >= 3;
  }
  FLOTILLA_HD static void observe(const Params&, kernels::StateRef s, kernels::ObsRef obs) {
    obs[0] = static_cast<float>(s[0]);
    obs[1] = static_cast<float>(s[1]);
  }
};

envs::EnvSpec two_counters_spec() {
  return {"TwoCounters-v0", "a test env", envs::Space::box({-100, -100}, {100, 100}), envs::Space::multi_discrete({3, 3}),
          50, {"a", "b"}};
}

FLOTILLA_REGISTER_ENV(TwoCounters, two_counters_spec(), [](const core::ConfigView& v) {
  return TwoCounters::Params{v.get<double>("start", 0.0)};
});

}  // namespace

TEST_CASE("a_user_env_registers_from_its_own_file_with_multidiscrete_actions") {
  EnvOptions o;
  o.num_envs = 3;
  auto env = make_env("TwoCounters-v0", o);
  env->reset(0);
  at::Tensor up = at::full({3, 2}, 2, at::kLong);
  for (int t = 0; t < 2; ++t) env->step(up);
  CHECK(env->obs()[1][0].item<float>() == 2.0f);
  env->step(up);
  CHECK(env->terminated().all().item<bool>());
  CHECK(env->episode_return()[0].item<float>() == 2.0f + 4.0f + 6.0f);
  CHECK(env->obs()[0][0].item<float>() == 0.0f);  // reset
  at::Tensor bad = at::ones({3, 2}, at::kLong);
  bad[2][1] = 3;
  CHECK(error_of([&] { env->step(bad); }).find("env 2: action[1] = 3 is outside 0 to 2") != std::string::npos);
  bool listed = false;
  for (const auto& s : envs::env_specs()) listed |= s.id == "TwoCounters-v0";
  CHECK(listed);
}

TEST_CASE("env_params_come_from_the_experiment_config") {
  core::Config c(core::ConfigTree::load_string("env: {id: TwoCounters-v0, num_envs: 2, params: {start: 1.5}}\n"));
  auto env = envs::make_env(c.root().section("env"));
  env->reset(0);
  CHECK(env->obs()[0][0].item<float>() == 1.5f);
  CHECK(env->num_envs() == 2);
  core::Config bad(core::ConfigTree::load_string("env: {id: TwoCounters-v0, params: {strat: 1}}\n", "x.yaml"));
  auto env2 = envs::make_env(bad.root().section("env"));
  CHECK(error_of([&] { bad.check_unknown_keys(); }).find("unknown key 'strat' in 'env.params'; did you mean 'start'?") !=
        std::string::npos);
  core::Config wrong(core::ConfigTree::load_string("env: {id: CartPol-v1}\n", "y.yaml"));
  CHECK(error_of([&] { envs::make_env(wrong.root().section("env")); }).find("y.yaml:1:11: env.id") != std::string::npos);
}

TEST_CASE("clip_actions_bounds_box_actions_and_leaves_discrete_ones") {
  EnvOptions o;
  o.num_envs = 2;
  auto pend = make_env("Pendulum-v1", o);
  at::Tensor clipped = pend->clip_actions(box({5.0f, -0.5f}));
  CHECK(clipped[0][0].item<float>() == 2.0f);
  CHECK(clipped[1][0].item<float>() == -0.5f);
  auto cart = make_env("CartPole-v1", o);
  at::Tensor a = discrete({1, 0});
  CHECK(at::equal(cart->clip_actions(a), a));
}
