// SMAX-style micro-management: damage, cooldowns, range, shields, death, the episode's outcome
// and action masks, at hand-built states.
#include <cmath>

#include "core/config.hpp"
#include "core/error.hpp"
#include "envs/multi_agent.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;

namespace {

std::unique_ptr<envs::MultiAgentVecEnv> make(const std::string& id) {
  auto env = envs::make_multi_agent_env(id, envs::EnvOptions{});
  env->reset(1);
  return env;
}

at::Tensor acts(std::vector<int64_t> a) { return at::tensor(a, at::kLong).reshape({1, -1}); }

// Marines: max reward = 3 x (45 health + 10 kill bonus) + 200 win bonus, scaled to 20.
constexpr double k3mScale = 20.0 / (3 * 45 + 3 * 10 + 200);

// A duel in 3m: agent 0 at (10, 16) against enemy 0 at `enemy_x`; everyone else is dead.
void duel(envs::MultiAgentVecEnv& env, double enemy_x, double agent_health = 45, double enemy_health = 45) {
  env.set_state_json(0, R"({"units":[{"pos":[10,16],"health":)" + std::to_string(agent_health) +
                            R"(,"cooldown":0},{"health":0},{"health":0},{"pos":[)" + std::to_string(enemy_x) +
                            R"(,16],"health":)" + std::to_string(enemy_health) + R"(,"cooldown":0},{"health":0},{"health":0}]})");
}

}  // namespace

TEST_CASE("smax_units_fire_in_range_and_wait_for_their_cooldown") {
  auto env = make("smax/3m");
  duel(*env, 14);  // 4 apart: inside a marine's range 5 plus two radii of 0.375
  CHECK(env->avail_actions()[0][0][5].item<bool>());  // attack enemy 0
  CHECK_FALSE(env->avail_actions()[0][0][6].item<bool>());  // enemy 1 is dead
  env->step(acts({5, 0, 0}));
  // One shot each in 0.5 s (cooldown 0.61 s): 9 damage both ways, at the same time.
  at::Tensor obs = env->obs()[0][0];
  CHECK(obs[0].item<float>() == doctest::Approx(36.0 / 45));  // own health
  CHECK(obs[2].item<float>() == doctest::Approx((0.61 - 0.5) / 0.61).epsilon(1e-4));  // cooldown left
  CHECK(env->reward()[0][0].item<float>() == doctest::Approx(9 * k3mScale).epsilon(1e-5));
  CHECK(env->reward()[0][1].item<float>() == env->reward()[0][0].item<float>());  // a team reward
  CHECK_FALSE(env->terminated()[0].item<bool>());
  // Enemy 0 is the 3rd other unit in agent 0's view: [visible/attackable, distance, dx, dy, health, shield].
  const int enemy0 = 3 + 2 * 6;
  CHECK(obs[enemy0].item<float>() == 1.0f);
  CHECK(obs[enemy0 + 1].item<float>() == doctest::Approx(4.0 / 9.0));
  CHECK(obs[enemy0 + 4].item<float>() == doctest::Approx(36.0 / 45));
  env->step(acts({5, 0, 0}));  // the weapon is ready again 0.11 s in: a second shot
  CHECK(env->reward()[0][0].item<float>() == doctest::Approx(9 * k3mScale).epsilon(1e-5));
}

TEST_CASE("smax_out_of_range_attacks_are_masked_and_hold_position") {
  auto env = make("smax/3m");
  duel(*env, 17);  // 7 apart: out of range (5.75) but in sight (9)
  CHECK_FALSE(env->avail_actions()[0][0][5].item<bool>());
  CHECK(env->avail_actions()[0][0][3].item<bool>());  // moving is always possible
  env->step(acts({5, 0, 0}));
  // The agent held its position; the heuristic enemy walked toward it (3.15 per s for 0.5 s) and fired.
  CHECK(env->obs()[0][0][3 + 2 * 6 + 1].item<float>() == doctest::Approx((7 - 3.15 * 0.5) / 9).epsilon(1e-5));
  env->set_state_json(0, R"({"units":[{"pos":[10,16]},{},{},{"pos":[30,16]},{},{}]})");
  env->step(acts({3, 0, 0}));  // east: 3.15 * 0.5 = 1.575
  CHECK(env->global_state()[0][3].item<float>() == doctest::Approx((10 + 1.575 - 16) / 32).epsilon(1e-5));
}

TEST_CASE("smax_kills_end_the_episode_with_its_outcome") {
  auto env = make("smax/3m");
  duel(*env, 14, 45, 5);  // the enemy has 5 health left: the agent's shot kills it
  env->step(acts({5, 0, 0}));
  CHECK(env->terminated()[0].item<bool>());
  CHECK(env->won()[0].item<float>() == 1.0f);
  // The damage dealt is what the enemy had left; a kill and a win add 10 and 200.
  CHECK(env->reward()[0][0].item<float>() == doctest::Approx((5 + 10 + 200) * k3mScale).epsilon(1e-5));
  CHECK(env->episode_length()[0].item<int>() == 1);

  duel(*env, 14, 5, 5);  // both die in the same world step: a draw is not a win
  env->step(acts({5, 0, 0}));
  CHECK(env->terminated()[0].item<bool>());
  CHECK(env->won()[0].item<float>() == 0.0f);

  duel(*env, 14, 5, 45);  // the agent dies: a loss
  env->step(acts({0, 0, 0}));
  CHECK(env->terminated()[0].item<bool>());
  CHECK(env->won()[0].item<float>() == 0.0f);
  CHECK(env->agent_done()[0][0].item<bool>());
}

TEST_CASE("smax_dead_agents_can_only_stop_and_observe_zeros") {
  auto env = make("smax/3m");
  env->set_state_json(0, R"({"units":[{"pos":[10,16]},{"health":0},{},{"pos":[22,16]},{},{}]})");
  CHECK(env->avail_actions()[0][1].sum().item<int64_t>() == 1);
  CHECK(env->avail_actions()[0][1][0].item<bool>());
  CHECK(env->obs()[0][1].abs().sum().item<float>() == 0.0f);
  env->step(acts({0, 0, 0}));
  CHECK(env->agent_done()[0][1].item<bool>());
  CHECK_FALSE(env->agent_done()[0][0].item<bool>());
  CHECK_THROWS_AS(env->step(acts({0, 8, 0})), Error);  // 3m has 8 actions: 5 moves and 3 targets
}

TEST_CASE("smax_shields_take_damage_first_and_recharge_after_ten_seconds") {
  auto env = make("smax/2s3z");  // units: 2 stalkers, 3 zealots per side
  // Agent stalker 0 at (10, 16) against enemy stalker 0 (unit 5) at (15, 16), whose weapon never
  // cools down in this test; everyone else is dead.
  env->set_state_json(0, R"({"units":[{"pos":[10,16],"cooldown":0},{"health":0},{"health":0},{"health":0},{"health":0},
                                      {"pos":[15,16],"cooldown":1000},{"health":0},{"health":0},{"health":0},{"health":0}]})");
  env->step(acts({5, 0, 0, 0, 0}));  // 13 damage in the first world step: all to the shield
  const int enemy0 = 3 + 4 * (6 + 2);  // 4 other agents, each 6 features and a 2-type one-hot
  auto shield = [&] { return env->obs()[0][0][enemy0 + 5].item<float>() * 80.0; };
  CHECK(env->obs()[0][0][enemy0 + 4].item<float>() == doctest::Approx(1.0));  // health untouched
  CHECK(shield() == doctest::Approx(67.0));
  // No recharge until 10 s after the hit (the hit came 7/16 s before the first step ended) ...
  for (int t = 0; t < 19; ++t) env->step(acts({0, 0, 0, 0, 0}));
  CHECK(shield() == doctest::Approx(67.0));
  // ... then 2 per second: the next 0.5 s adds 1.
  env->step(acts({0, 0, 0, 0, 0}));
  CHECK(shield() == doctest::Approx(68.0).epsilon(1e-4));
}

TEST_CASE("smax_scenarios_have_their_armies") {
  const std::vector<std::tuple<std::string, int, int>> armies = {
      {"smax/3m", 3, 3},   {"smax/8m", 8, 8},           {"smax/2s3z", 5, 5},        {"smax/3s5z", 8, 8},
      {"smax/5m_vs_6m", 5, 6}, {"smax/10m_vs_11m", 10, 11}, {"smax/3s_vs_5z", 3, 5}};
  for (const auto& [id, agents, enemies] : armies) {
    CAPTURE(id);
    const envs::MultiAgentSpec& s = envs::multi_agent_spec(id);
    CHECK(s.num_agents() == agents);
    CHECK(s.agents[0].action.n == 5 + enemies);
    CHECK(s.has_outcome);
    CHECK(s.max_episode_steps == 100);
  }
  CHECK(envs::multi_agent_spec("smax/3s_vs_5z").agents[0].name == "stalker_0");
  auto env = make("smax/3m");
  CHECK_THROWS_AS(env->set_state_json(0, R"({"units":[{}]})"), ConfigError);
  CHECK_THROWS_AS(env->set_state_json(0, R"({"units":[{"hp":1},{},{},{},{},{}]})"), ConfigError);
}
