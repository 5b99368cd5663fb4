#include <cmath>

#include <nlohmann/json.hpp>

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/multi_agent.hpp"
#include "support/torch_doctest.hpp"
#include "support/error_of.hpp"

using namespace flotilla;
using test::error_of;

namespace {

std::unique_ptr<envs::MultiAgentVecEnv> make(const std::string& id, const std::string& params = "{}", int64_t num_envs = 1,
                                             int threads = 1) {
  core::Config config(core::ConfigTree::load_string(params));
  core::ConfigView view = config.root();
  envs::EnvOptions o;
  o.num_envs = num_envs;
  o.threads = threads;
  return envs::make_multi_agent_env(id, o, &view);
}

at::Tensor acts(std::vector<int64_t> a) { return at::tensor(a, at::kLong).reshape({1, -1}); }

std::vector<float> obs_of(const envs::MultiAgentVecEnv& env, int agent) {
  const int64_t n = env.spec().agents[agent].observation.numel();
  at::Tensor o = env.obs()[0][agent].narrow(0, 0, n).contiguous();
  return std::vector<float>(o.data_ptr<float>(), o.data_ptr<float>() + n);
}

float reward_of(const envs::MultiAgentVecEnv& env, int agent) { return env.reward()[0][agent].item<float>(); }

void check_close(const std::vector<float>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    CAPTURE(k);
    CHECK(got[k] == doctest::Approx(want[k]).epsilon(1e-5));
  }
}

}  // namespace

TEST_CASE("mpe_scenarios_have_mpe2_agent_names_and_observation_widths") {
  // Widths from MPE2's documentation of each scenario's observation space.
  const std::vector<std::pair<std::string, std::vector<int64_t>>> widths = {
      {"mpe/simple", {4}},
      {"mpe/simple_spread", {18, 18, 18}},
      {"mpe/simple_tag", {16, 16, 16, 14}},
      {"mpe/simple_adversary", {8, 10, 10}},
      {"mpe/simple_push", {8, 19}},
      {"mpe/simple_reference", {21, 21}},
      {"mpe/simple_speaker_listener", {3, 11}},
      {"mpe/simple_crypto", {4, 8, 8}},
      {"mpe/simple_world_comm", {34, 34, 34, 34, 28, 28}},
  };
  for (const auto& [id, w] : widths) {
    CAPTURE(id);
    const envs::MultiAgentSpec& spec = envs::multi_agent_spec(id);
    REQUIRE(spec.agents.size() == w.size());
    int64_t total = 0;
    for (size_t a = 0; a < w.size(); ++a) {
      CHECK(spec.agents[a].observation.numel() == w[a]);
      total += w[a];
    }
    CHECK(spec.state.numel() == total);  // PettingZoo's state(): every observation, concatenated
    CHECK(spec.max_episode_steps == 25);
    auto env = make(id);
    env->reset(3);
    env->step(at::zeros({1, static_cast<int64_t>(w.size())}, at::kLong));
    std::vector<at::Tensor> parts;
    for (size_t a = 0; a < w.size(); ++a) parts.push_back(env->obs()[0][a].narrow(0, 0, w[a]));
    CHECK(at::equal(env->global_state()[0], at::cat(parts)));
  }
  CHECK(envs::multi_agent_spec("mpe/simple_world_comm").agents[0].name == "leadadversary_0");
  CHECK(envs::multi_agent_spec("mpe/simple_world_comm").agents[0].action.n == 20);
  CHECK(envs::multi_agent_spec("mpe/simple_reference").agents[0].action.n == 50);
  CHECK(envs::multi_agent_spec("mpe/simple_speaker_listener").agents[0].action.n == 3);
  CHECK(envs::multi_agent_spec("mpe/simple_crypto").agents[2].name == "alice_0");
}

TEST_CASE("mpe_constructor_arguments_change_the_world") {
  auto env = make("mpe/simple_spread", "{N: 5, max_cycles: 40}");
  CHECK(env->num_agents() == 5);
  CHECK(env->spec().agents[0].observation.numel() == 2 + 2 + 2 * 5 + 2 * 4 + 2 * 4);
  CHECK(env->max_episode_steps() == 40);
  auto tag = make("mpe/simple_tag", "{num_good: 2, num_adversaries: 4, num_obstacles: 1}");
  CHECK(tag->num_agents() == 6);
  CHECK(tag->spec().agents[0].observation.numel() == 2 + 2 + 2 + 2 * 5 + 2 * 2);
  CHECK_THROWS_AS(make("mpe/simple_spread", "{N: 0}"), ConfigError);
  CHECK_THROWS_AS(make("mpe/simple_spread", "{local_ratio: 2}"), ConfigError);
}

TEST_CASE("mpe_steps_as_mpe2_does_from_random_states") {
  // tests/data/mpe2_reference.json: MPE2's own code stepped from random states (velocities too)
  // with random actions, by scripts/mpe2_reference.py. After every step the hidden state
  // (positions and velocities, in double), each agent's observation and reward must agree.
  auto data = nlohmann::json::parse(core::read_file(std::string(FLOTILLA_SOURCE_DIR) + "/tests/data/mpe2_reference.json"));
  REQUIRE(data["scenarios"].size() >= 11);
  for (const auto& scenario : data["scenarios"]) {
    const std::string id = scenario["env"];
    const bool continuous = scenario["params"]["continuous_actions"];
    CAPTURE(id);
    CAPTURE(continuous);
    auto env = make(id, continuous ? "{continuous_actions: true}" : "{}");
    const int64_t A = env->num_agents();
    double worst_state = 0, worst_obs = 0, worst_reward = 0;
    for (const auto& c : scenario["cases"]) {
      env->reset(1);
      env->set_state_json(0, c["init"].dump());
      for (const auto& s : c["steps"]) {
        if (continuous) {
          const int64_t width = static_cast<int64_t>(s["actions"][0].size());
          std::vector<float> flat;
          for (const auto& a : s["actions"])
            for (const auto& v : a) flat.push_back(v.get<float>());
          env->step(at::tensor(flat).reshape({1, A, width}));
        } else {
          env->step(acts(s["actions"].get<std::vector<int64_t>>()));
        }
        at::Tensor state;
        for (const auto& [name, t] : env->save())
          if (name == "env.state") state = t.reshape({-1});
        REQUIRE(state.defined());
        for (size_t e = 0; e < s["pos"].size(); ++e)
          for (int d = 0; d < 2; ++d) {
            worst_state = std::max(worst_state, std::fabs(state[4 * e + d].item<double>() - s["pos"][e][d].get<double>()));
            worst_state = std::max(worst_state, std::fabs(state[4 * e + 2 + d].item<double>() - s["vel"][e][d].get<double>()));
          }
        for (int64_t a = 0; a < A; ++a) {
          const std::vector<float> o = obs_of(*env, static_cast<int>(a));
          REQUIRE(o.size() == s["obs"][a].size());
          for (size_t k = 0; k < o.size(); ++k) worst_obs = std::max(worst_obs, std::fabs(o[k] - s["obs"][a][k].get<double>()));
          worst_reward = std::max(worst_reward, std::fabs(reward_of(*env, static_cast<int>(a)) - s["rewards"][a].get<double>()));
        }
      }
    }
    CHECK(worst_state < 1e-12);  // the same double arithmetic, up to the order of a few operations
    CHECK(worst_obs < 1e-6);
    CHECK(worst_reward < 1e-6);  // rewards are float32
    MESSAGE(id << std::string(continuous ? " (continuous)" : "") << ": largest difference state " << worst_state << ", obs " << worst_obs
               << ", reward " << worst_reward);
  }
}

TEST_CASE("mpe_simple_rewards_minus_squared_distance") {
  // MPE2's integration order: the position moves with the velocity from before the step, then the
  // velocity is damped (x 0.75) and pushed by force * dt. Agent at (0.1, 0.2) moving (0.05, -0.1),
  // action right (force 5): position (0.105, 0.19), velocity (0.5375, -0.075).
  auto env = make("mpe/simple");
  env->reset(1);
  env->set_state_json(0, R"({"agents":[{"p_pos":[0.1,0.2],"p_vel":[0.05,-0.1]}],"landmarks":[{"p_pos":[0.5,-0.3]}]})");
  check_close(obs_of(*env, 0), {0.05, -0.1, 0.4, -0.5});
  env->step(acts({2}));
  check_close(obs_of(*env, 0), {0.5375, -0.075, 0.395, -0.49});
  CHECK(reward_of(*env, 0) == doctest::Approx(-(0.395 * 0.395 + 0.49 * 0.49)).epsilon(1e-6));  // -0.396125
  env->step(acts({0}));  // no-op: moves by the new velocity, which decays
  check_close(obs_of(*env, 0), {0.5375 * 0.75, -0.075 * 0.75, 0.395 - 0.05375, -0.49 + 0.0075});
}

TEST_CASE("mpe_spread_contact_forces_and_shared_reward") {
  // Two agents 0.2 apart with radius 0.15 overlap by 0.1: the soft contact pushes each away with
  // force 100 * softplus(0.1 / 1e-3) * 1e-3 = 10.
  auto env = make("mpe/simple_spread");
  env->reset(1);
  env->set_state_json(0, R"({"agents":[{"p_pos":[0,0]},{"p_pos":[0.2,0]},{"p_pos":[1,1]}],
                             "landmarks":[{"p_pos":[0.5,0.5]},{"p_pos":[-0.5,0.5]},{"p_pos":[0,-1]}]})");
  env->step(acts({0, 1, 2}));
  const std::vector<float> o0 = obs_of(*env, 0), o1 = obs_of(*env, 1);
  CHECK(o0[0] == doctest::Approx(-1.0));  // no-op, pushed left: 10 * dt
  CHECK(o1[0] == doctest::Approx(0.5));   // left (-5) plus the push (+10)
  CHECK(o0[2] == doctest::Approx(0.0));   // positions move with the velocities before the step (zero)
  CHECK(o1[2] == doctest::Approx(0.2));
  // global = -(sum over landmarks of the nearest agent's distance); half global, half collisions:
  // agents 0 and 1 still overlap and lose 1 each.
  auto d = [](double x, double y) { return std::sqrt(x * x + y * y); };
  const double global = -(d(0.3, 0.5) + d(0.5, 0.5) + d(0.0, 1.0));
  CHECK(reward_of(*env, 0) == doctest::Approx(0.5 * global - 0.5).epsilon(1e-5));
  CHECK(reward_of(*env, 1) == doctest::Approx(0.5 * global - 0.5).epsilon(1e-5));
  CHECK(reward_of(*env, 2) == doctest::Approx(0.5 * global).epsilon(1e-5));
  env->step(acts({0, 0, 0}));  // now they move apart: x -0.1 and 0.25
  CHECK(obs_of(*env, 0)[2] == doctest::Approx(-0.1));
  CHECK(obs_of(*env, 1)[2] == doctest::Approx(0.25));
  // Agents still overlapping after the step lose 1 each (times local_ratio).
  // 0.29 apart: the contact (force 1) is weaker than their actions (5) toward each other.
  env->set_state_json(0, R"({"agents":[{"p_pos":[0,0]},{"p_pos":[0.29,0]},{"p_pos":[1,1]}]})");
  env->step(acts({2, 1, 0}));
  CHECK(reward_of(*env, 2) - reward_of(*env, 0) == doctest::Approx(0.5).epsilon(1e-4));
}

TEST_CASE("mpe_tag_rewards_captures_and_walls") {
  auto env = make("mpe/simple_tag");
  env->reset(1);
  // Adversary 0 overlaps the good agent (radii 0.075 + 0.05 at distance 0.1) and both push toward
  // each other. Positions move with the velocities before the step (zero), so they touch after it.
  env->set_state_json(0, R"({"agents":[{"p_pos":[0.85,0]},{"p_pos":[-0.5,-0.5]},{"p_pos":[-0.5,0.5]},{"p_pos":[0.95,0]}],
                             "landmarks":[{"p_pos":[0,0.8]},{"p_pos":[0,-0.8]}]})");
  env->step(acts({2, 0, 0, 1}));
  for (int a = 0; a < 3; ++a) CHECK(reward_of(*env, a) == doctest::Approx(10.0));  // adversaries share the capture
  // -10 for the capture and (x - 0.9) * 10 for standing past 0.9.
  CHECK(reward_of(*env, 3) == doctest::Approx(-10.0 - (0.95 - 0.9) * 10).epsilon(1e-6));
  std::vector<float> good = obs_of(*env, 3), adv = obs_of(*env, 0);
  CHECK(good[2] == doctest::Approx(0.95));     // own position
  CHECK(good[4] == doctest::Approx(-0.95));    // landmark 0, relative
  CHECK(adv[0] == doctest::Approx(0.05));      // adversary velocity: -0.25 from the contact (force 2.5), +0.3 own
  CHECK(adv[14] == doctest::Approx(-0.15));    // it sees the good agent's velocity last: -0.4 own, +0.25 contact
  // The next step moves them by those velocities (adversary x 0.855, good x 0.935): still touching.
  env->step(acts({0, 0, 0, 0}));
  good = obs_of(*env, 3);
  CHECK(good[2] == doctest::Approx(0.935));
  CHECK(reward_of(*env, 3) == doctest::Approx(-10.0 - (0.935 - 0.9) * 10).epsilon(1e-6));
}

TEST_CASE("mpe_adversary_and_push_goal_observations") {
  auto adv = make("mpe/simple_adversary");
  adv->reset(1);
  adv->set_state_json(0, R"({"agents":[{"p_pos":[0,0]},{"p_pos":[1,0]},{"p_pos":[0,1]}],
                             "landmarks":[{"p_pos":[0.5,0]},{"p_pos":[-0.5,0]}],"goal":1})");
  check_close(obs_of(*adv, 0), {0.5, 0, -0.5, 0, 1, 0, 0, 1});
  check_close(obs_of(*adv, 1), {-1.5, 0, -0.5, 0, -1.5, 0, -1, 0, -1, 1});
  adv->step(acts({0, 0, 0}));
  const double goal_good = std::min(1.5, std::sqrt(0.25 + 1.0));
  CHECK(reward_of(*adv, 0) == doctest::Approx(-0.5));
  CHECK(reward_of(*adv, 1) == doctest::Approx(0.5 - goal_good).epsilon(1e-5));

  auto push = make("mpe/simple_push");
  push->reset(1);
  push->set_state_json(0, R"({"agents":[{"p_pos":[0,0]},{"p_pos":[1,0]}],"landmarks":[{"p_pos":[0,1]},{"p_pos":[0,-1]}],"goal":0})");
  // Good agent: velocity, goal offset, its color (the goal's), landmarks, their colors, the adversary.
  check_close(obs_of(*push, 1), {0, 0, -1, 1, 0.25, 0.75, 0.25, -1, 1, -1, -1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9, -1, 0});
  push->step(acts({0, 0}));
  CHECK(reward_of(*push, 1) == doctest::Approx(-std::sqrt(2.0)).epsilon(1e-5));
  CHECK(reward_of(*push, 0) == doctest::Approx(std::sqrt(2.0) - 1.0).epsilon(1e-5));
}

TEST_CASE("mpe_talking_scenarios_deliver_messages") {
  auto sl = make("mpe/simple_speaker_listener");
  sl->reset(1);
  sl->set_state_json(0, R"({"agents":[{"p_pos":[0,0]},{"p_pos":[0.3,0.4]}],
                            "landmarks":[{"p_pos":[0,0]},{"p_pos":[1,1]},{"p_pos":[-1,1]}],"goal":2})");
  check_close(obs_of(*sl, 0), {0.15, 0.15, 0.65});  // the goal landmark's color
  sl->step(acts({1, 0}));  // the speaker says word 1; the listener stays
  const std::vector<float> listener = obs_of(*sl, 1);
  check_close(std::vector<float>(listener.end() - 3, listener.end()), {0, 1, 0});
  const double dx = 0.3 + 1, dy = 0.4 - 1;
  CHECK(reward_of(*sl, 0) == doctest::Approx(-(dx * dx + dy * dy)).epsilon(1e-5));
  CHECK(reward_of(*sl, 1) == reward_of(*sl, 0));

  auto ref = make("mpe/simple_reference");
  ref->reset(1);
  ref->set_state_json(0, R"({"agents":[{"p_pos":[0,0]},{"p_pos":[1,0]}],
                             "landmarks":[{"p_pos":[0,0]},{"p_pos":[1,1]},{"p_pos":[-1,1]}],"goals":[1,0]})");
  ref->step(acts({0 + 5 * 7, 0 + 5 * 2}));  // no move; agent 0 says word 7, agent 1 word 2
  const std::vector<float> o0 = obs_of(*ref, 0), o1 = obs_of(*ref, 1);
  CHECK(o0[8] == doctest::Approx(0.25));  // agent 0's goal color: landmark 1's [0.25, 0.75, 0.25]
  CHECK(o0[9] == doctest::Approx(0.75));
  CHECK(o0[11 + 2] == 1.0f);  // agent 0 hears agent 1's word 2
  CHECK(o1[11 + 7] == 1.0f);
  // Agent 0 wants agent 1 on landmark 1 (distance 1); agent 1 wants agent 0 on landmark 0 (0).
  CHECK(reward_of(*ref, 0) == doctest::Approx(0.5 * -0.5 + 0.5 * -1.0));
  CHECK(reward_of(*ref, 1) == doctest::Approx(0.5 * -0.5 + 0.5 * 0.0));

  auto crypto = make("mpe/simple_crypto");
  crypto->reset(1);
  crypto->set_state_json(0, R"({"goals":[1,0]})");  // goal landmark 1, key landmark 0
  check_close(obs_of(*crypto, 2), {0, 1, 0, 0, 1, 0, 0, 0});  // alice: goal color, key
  crypto->step(acts({0, 1, 3}));                              // eve guesses 0, bob guesses 1, alice says 3
  CHECK(reward_of(*crypto, 0) == doctest::Approx(-2.0));      // eve is wrong by two squared units
  CHECK(reward_of(*crypto, 1) == doctest::Approx(0.0 + 2.0)); // bob right, eve wrong
  check_close(obs_of(*crypto, 1), {1, 0, 0, 0, 0, 0, 0, 1});  // bob: key, alice's message
  check_close(obs_of(*crypto, 0), {0, 0, 0, 1});              // eve hears the message only
}

TEST_CASE("mpe_world_comm_forests_hide_agents") {
  auto env = make("mpe/simple_world_comm");
  env->reset(1);
  // Entities: 4 adversaries (0 leads), 2 good agents, 1 obstacle, 2 food, 2 forests.
  env->set_state_json(0, R"({"agents":[{"p_pos":[-0.9,0]},{"p_pos":[-0.7,0]},{"p_pos":[-0.5,0]},{"p_pos":[-0.3,0]},
                                       {"p_pos":[0.5,0.5]},{"p_pos":[0.0,0.5]}],
                             "landmarks":[{"p_pos":[0.8,-0.5]},{"p_pos":[0.9,0.9]},{"p_pos":[-0.9,0.9]},
                                          {"p_pos":[0.5,0.5]},{"p_pos":[-0.5,-0.5]}]})");
  // Good agent 0 stands in forest 0: adversary 1 (outside) sees zeros for it; the leader sees it.
  const std::vector<float> adv = obs_of(*env, 1), lead = obs_of(*env, 0);
  // Layout: vel 2, pos 2, 5 landmarks 10, other agents 10 (leader, adv2, adv3, good0, good1) ...
  // Others of adversary 1, from index 14: leader, adversary 2, adversary 3, good 0, good 1.
  CHECK(adv[14 + 6] == 0.0f);
  CHECK(adv[14 + 7] == 0.0f);
  CHECK(adv[14 + 8] == doctest::Approx(0.7));  // good agent 1 is in the open
  CHECK(adv[14 + 9] == doctest::Approx(0.5));
  CHECK(lead[14 + 6] == doctest::Approx(1.4));  // the leader sees into forests
  // The good agent in the forest sees forest flags [1, -1].
  const std::vector<float> good = obs_of(*env, 4);
  CHECK(good[24] == 1.0f);
  CHECK(good[25] == -1.0f);
}

TEST_CASE("multi_agent_actions_are_checked_per_agent") {
  auto sl = make("mpe/simple_speaker_listener");
  sl->reset(1);
  const std::string e = error_of([&] { sl->step(acts({4, 0})); });
  CHECK(e.find("speaker_0") != std::string::npos);
  CHECK(e.find("Discrete(3)") != std::string::npos);
  CHECK(error_of([&] { sl->step(acts({0, 0, 0})); }).find("expected [1, 2]") != std::string::npos);
  // Negative, and in a later env: the first bad action is named, env and agent.
  CHECK(error_of([&] { sl->step(acts({-1, 0})); }).find("agent 'speaker_0': action -1 is outside Discrete(3)") != std::string::npos);
  auto many = make("mpe/simple_speaker_listener", "{}", 3);
  many->reset(1);
  const at::Tensor before = many->obs().clone();
  const std::string late = error_of([&] { many->step(at::tensor({0, 4, 2, 1, 1, 5}, at::kLong).reshape({3, 2})); });
  CHECK(late.find("env 2, agent 'listener_0': action 5 is outside Discrete(5)") != std::string::npos);
  CHECK(many->obs().equal(before));  // a rejected batch steps no env
  CHECK(error_of([&] { sl->step(at::zeros({1, 2})); }).find("int64") != std::string::npos);
  // The speaker's padding actions (3, 4 of the listener's 5) are masked out.
  at::Tensor avail = sl->avail_actions()[0];
  CHECK(avail[0].sum().item<int64_t>() == 3);
  CHECK(avail[1].sum().item<int64_t>() == 5);
  CHECK_THROWS_AS(sl->set_state_json(0, R"({"agents":[{"p_pos":[0]}]})"), ConfigError);
  CHECK_THROWS_AS(sl->set_state_json(0, R"({"agent":[]})"), ConfigError);
  CHECK_THROWS_AS(sl->set_state_json(0, R"({"goal":7})"), ConfigError);
}

TEST_CASE("mpe_continuous_actions_decode_as_mpe2") {
  auto env = make("mpe/simple", "{continuous_actions: true}");
  CHECK(env->spec().agents[0].action.str() == "Box(0.0, 1.0, (5,), float32)");
  env->reset(1);
  env->set_state_json(0, R"({"agents":[{"p_pos":[0,0]}],"landmarks":[{"p_pos":[1,1]}]})");
  env->step(at::tensor(std::vector<float>{0.0f, 0.25f, 1.0f, 0.5f, 0.0f}).reshape({1, 1, 5}));
  // u = (right - left, up - down) * 5 = (3.75, -2.5); velocity = u * dt.
  const std::vector<float> o = obs_of(*env, 0);
  check_close({o[0], o[1]}, {0.375, -0.25});
}

TEST_CASE("multi_agent_episodes_end_at_max_cycles_with_final_observations_and_returns") {
  auto env = make("mpe/simple_reference", "{max_cycles: 3}", 2);  // no collisions: moves are exact
  env->reset(5);
  at::Tensor sum = at::zeros({2, 2});
  for (int t = 0; t < 3; ++t) {
    env->step(at::full({2, 2}, 2, at::kLong));  // right, word 0
    sum += env->reward();
    if (t < 2) CHECK_FALSE(env->truncated().any().item<bool>());
  }
  CHECK(env->truncated().all().item<bool>());
  CHECK(env->episode_length()[0].item<int>() == 3);
  CHECK(at::allclose(env->episode_return(), sum, 1e-5, 1e-5));
  // The final observation has the third step's velocity (0.5, then 0.875, then 1.15625); the env
  // has already reset (velocities back to zero).
  CHECK(env->final_obs()[0][0][0].item<float>() == doctest::Approx(1.15625));
  CHECK(env->obs()[0][0][0].item<float>() == 0.0f);
  CHECK_FALSE(at::equal(env->final_obs(), env->obs()));
}

TEST_CASE("multi_agent_cuda_backend_without_a_gpu_says_so") {
  envs::EnvOptions o;
  o.backend = "cuda";
  const std::string e = error_of([&] { envs::make_multi_agent_env("mpe/simple_spread", o); });
  CHECK(e.find("backend 'cuda'") != std::string::npos);
  CHECK(e.find("use backend 'cpu'") != std::string::npos);
}

TEST_CASE("multi_agent_batches_do_not_depend_on_threads") {
  auto a = make("mpe/simple_tag", "{}", 37, 1), b = make("mpe/simple_tag", "{}", 37, 3);
  a->reset(9);
  b->reset(9);
  at::Tensor actions = at::randint(0, 5, {37, 4}, at::kLong);
  for (int t = 0; t < 30; ++t) {
    a->step(actions);
    b->step(actions);
  }
  CHECK(at::equal(a->obs(), b->obs()));
  CHECK(at::equal(a->reward(), b->reward()));
}

TEST_CASE("agent_rows_are_env_major_with_ids_state_and_masks") {
  auto ma = make("mpe/simple_speaker_listener", "{}", 3);
  auto* raw = ma.get();
  auto rows = envs::agent_rows(std::move(ma));
  rows->reset(3);
  const envs::ObsLayout& l = rows->spec().layout;
  REQUIRE(l.multi_agent());
  CHECK(rows->num_envs() == 6);
  CHECK(l.obs_dim == 11);
  CHECK(l.state_dim == 14);
  CHECK(l.mask_dim == 5);
  rows->step(at::tensor(std::vector<int64_t>{0, 1, 2, 3, 1, 4}, at::kLong));
  for (int64_t env = 0; env < 3; ++env)
    for (int64_t agent = 0; agent < 2; ++agent) {
      const envs::AgentLayout layout = raw->layout();
      at::Tensor row = rows->obs()[layout.row(env, agent)];
      CHECK(at::equal(row.narrow(0, 0, 11), raw->obs()[env][agent]));
      CHECK(row[l.obs_dim + agent].item<float>() == 1.0f);
      CHECK(row[l.obs_dim + 1 - agent].item<float>() == 0.0f);
      CHECK(at::equal(row.narrow(0, l.critic_offset() + l.agents, l.state_dim), raw->global_state()[env]));
      CHECK(at::equal(row.narrow(0, l.mask_offset(), l.mask_dim), raw->avail_actions()[env][agent].to(at::kFloat)));
      CHECK(rows->reward()[layout.row(env, agent)].item<float>() == raw->reward()[env][agent].item<float>());
    }
  // The layout check names a misaligned tensor.
  const envs::AgentLayout layout{3, 2};
  CHECK(error_of([&] { layout.check(at::zeros({2, 3, 5}), "obs", true, {5}); }).find("'obs' has shape [2, 3, 5]") !=
        std::string::npos);
  CHECK_NOTHROW(layout.check(at::zeros({3, 2, 5}), "obs", true, {5}));
}
