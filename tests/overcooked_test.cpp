// Overcooked: each rule at hand-built states in cramped room, the original's lossless encoding,
// layouts from text, and replays of overcooked_ai's own episodes (tests/data/overcooked_reference.json,
// written by scripts/overcooked_reference.py).
//
// Cramped room (x across, y down):   y0 X X P X X
//                                    y1 O . . 2 O
//                                    y2 X 1 . . X
//                                    y3 X D X S X
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/multi_agent.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;

namespace {

enum { N, S, E, W, Stay, Act };
constexpr int kH = 4, kLayers = 26;  // cramped room's height

std::unique_ptr<envs::MultiAgentVecEnv> make(const std::string& id, const std::string& params = "{}", int64_t envs = 1,
                                             int threads = 1, int32_t max_steps = 0) {
  core::Config c(core::ConfigTree::load_string(params, "params"));
  core::ConfigView v = c.root();
  envs::EnvOptions o;
  o.num_envs = envs;
  o.threads = threads;
  o.max_episode_steps = max_steps;
  auto env = envs::make_multi_agent_env(id, o, &v);
  c.check_unknown_keys();
  env->reset(1);
  return env;
}

at::Tensor acts(int64_t a0, int64_t a1) { return at::tensor(std::vector<int64_t>{a0, a1}, at::kLong).reshape({1, 2}); }

// Layer `layer` of cook `agent`'s encoding at cell (x, y) of a grid `h` cells high.
int cell(const envs::MultiAgentVecEnv& env, int agent, int x, int y, int layer, int h = kH) {
  return env.obs()[0][agent][(x * h + y) * kLayers + layer].item<int>();
}

float reward(const envs::MultiAgentVecEnv& env, int agent) { return env.reward()[0][agent].item<float>(); }

// Cook 0 at (x, y) facing `dir` ([dx, dy]) holding `held` (JSON or null); cook 1 at (3, 1).
std::string cooks(int x, int y, const char* dir, const char* held = "null", const char* held1 = "null") {
  return std::string(R"({"players":[{"position":[)") + std::to_string(x) + "," + std::to_string(y) + R"(],"orientation":)" +
         dir + R"(,"held_object":)" + held + R"(},{"position":[3,1],"orientation":[0,-1],"held_object":)" + held1 + "}]";
}
const char* kUp = "[0,-1]";
const char* kDown = "[0,1]";
const char* kOnion = R"({"name":"onion"})";
const char* kDish = R"({"name":"dish"})";
const char* kSoup = R"({"name":"soup","_ingredients":[{"name":"onion"},{"name":"onion"},{"name":"onion"}]})";
std::string pot(int onions, int tick) {
  std::string ing;
  for (int k = 0; k < onions; ++k) ing += std::string(k ? "," : "") + R"({"name":"onion"})";
  return R"({"name":"soup","position":[2,0],"_ingredients":[)" + ing + R"(],"cooking_tick":)" + std::to_string(tick) + "}";
}

}  // namespace

TEST_CASE("overcooked_start_state_is_the_layouts_with_cooks_facing_north") {
  auto env = make("overcooked/cramped_room");
  const auto& spec = env->spec();
  CHECK(spec.agents.size() == 2);
  CHECK(spec.agents[0].name == "agent_0");
  CHECK(spec.agents[0].observation.numel() == 5 * 4 * 26);
  CHECK(spec.agents[0].observation.dtype == "uint8");
  CHECK((env->obs().scalar_type() == at::kByte));
  CHECK(spec.max_episode_steps == 400);
  // Own position and facing come first: cook 0 sees itself at (1, 2), cook 1 at (3, 1).
  CHECK(cell(*env, 0, 1, 2, 0) == 1);
  CHECK(cell(*env, 0, 1, 2, 2) == 1);  // facing north
  CHECK(cell(*env, 0, 3, 1, 1) == 1);
  CHECK(cell(*env, 0, 3, 1, 6) == 1);
  CHECK(cell(*env, 1, 3, 1, 0) == 1);
  CHECK(cell(*env, 1, 1, 2, 1) == 1);
  // Terrain layers.
  CHECK(cell(*env, 0, 2, 0, 10) == 1);  // pot
  CHECK(cell(*env, 0, 0, 0, 11) == 1);  // counter
  CHECK(cell(*env, 0, 0, 1, 12) == 1);  // onions
  CHECK(cell(*env, 0, 4, 1, 12) == 1);
  CHECK(cell(*env, 0, 1, 3, 14) == 1);  // dishes
  CHECK(cell(*env, 0, 3, 3, 15) == 1);  // serving
  CHECK(env->obs()[0][0].sum().item<int>() == 4 + 9 + 1 + 2 + 1 + 1);  // cooks' 4 bits, 9 counters, pot, 2+1+1
  CHECK(at::equal(env->global_state()[0], env->obs()[0][0]));
  CHECK(env->avail_actions().all().item<bool>());
}

TEST_CASE("overcooked_moves_turn_and_walls_block") {
  auto env = make("overcooked/cramped_room");
  env->step(acts(W, Stay));  // (0, 2) is a counter: cook 0 only turns west
  CHECK(cell(*env, 0, 1, 2, 0) == 1);
  CHECK(cell(*env, 0, 1, 2, 2 + W) == 1);
  CHECK(cell(*env, 0, 1, 2, 2 + N) == 0);
  env->step(acts(N, E));  // to (1, 1); cook 1 turns east at the onion dispenser (4, 1)
  CHECK(cell(*env, 0, 1, 1, 0) == 1);
  CHECK(cell(*env, 0, 3, 1, 6 + E) == 1);
  env->step(acts(Stay, Act));  // stay keeps the facing; interact takes an onion
  CHECK(cell(*env, 0, 1, 1, 2 + N) == 1);
  CHECK(cell(*env, 1, 3, 1, 23) == 1);  // carried onions show on the cook's cell
  CHECK(cell(*env, 0, 3, 1, 23) == 1);
  CHECK(reward(*env, 1) == 0.0f);  // picking up an onion is not shaped
}

TEST_CASE("overcooked_collisions_and_swaps_keep_both_cooks_in_place") {
  auto env = make("overcooked/cramped_room");
  env->set_state_json(0, cooks(1, 1, kUp) + "}");
  env->step(acts(E, W));  // both onto (2, 1)
  CHECK(cell(*env, 0, 1, 1, 0) == 1);
  CHECK(cell(*env, 0, 3, 1, 1) == 1);
  CHECK(cell(*env, 0, 1, 1, 2 + E) == 1);  // turned all the same
  CHECK(cell(*env, 0, 3, 1, 6 + W) == 1);
  env->set_state_json(0, R"({"players":[{"position":[1,1],"orientation":[0,-1]},{"position":[2,1],"orientation":[0,-1]}]})");
  env->step(acts(E, W));  // a swap
  CHECK(cell(*env, 0, 1, 1, 0) == 1);
  CHECK(cell(*env, 0, 2, 1, 1) == 1);
  env->step(acts(E, E));  // following is not a collision
  CHECK(cell(*env, 0, 2, 1, 0) == 1);
  CHECK(cell(*env, 0, 3, 1, 1) == 1);
  env->step(acts(S, Stay));  // onto (2, 2) while cook 1 stays
  env->step(acts(E, S));     // both onto (3, 2): blocked
  CHECK(cell(*env, 0, 2, 2, 0) == 1);
  CHECK(cell(*env, 0, 3, 1, 1) == 1);
}

TEST_CASE("overcooked_counters_take_and_give_back_one_item") {
  auto env = make("overcooked/cramped_room");
  env->set_state_json(0, cooks(1, 1, kUp, kOnion) + "}");
  env->step(acts(Act, Stay));  // onto the counter (1, 0)
  CHECK(cell(*env, 0, 1, 0, 23) == 1);
  CHECK(cell(*env, 0, 1, 1, 23) == 0);
  env->set_state_json(0, cooks(1, 1, kUp, kDish) + R"(,"objects":[{"name":"onion","position":[1,0]}]})");
  env->step(acts(Act, Stay));  // the counter is taken: nothing happens
  CHECK(cell(*env, 0, 1, 0, 23) == 1);
  CHECK(cell(*env, 0, 1, 1, 22) == 1);
  env->set_state_json(0, cooks(1, 1, kUp) + R"(,"objects":[{"name":"onion","position":[1,0]}]})");
  env->step(acts(Act, Stay));  // picked back up
  CHECK(cell(*env, 0, 1, 0, 23) == 0);
  CHECK(cell(*env, 0, 1, 1, 23) == 1);
  CHECK(reward(*env, 0) == 0.0f);
}

TEST_CASE("overcooked_three_onions_cook_for_twenty_steps_under_the_old_dynamics") {
  auto env = make("overcooked/cramped_room");
  env->set_state_json(0, cooks(2, 1, kUp, kOnion) + ",\"objects\":[" + pot(2, -1) + "]}");
  CHECK(cell(*env, 0, 2, 0, 16) == 2);  // onions in an idle pot
  env->step(acts(Act, Stay));
  CHECK(reward(*env, 0) == 3.0f);  // placement shaping, this cook's alone
  CHECK(reward(*env, 1) == 0.0f);
  // The third onion starts the cooking in the same step, and one tick passes.
  CHECK(cell(*env, 0, 2, 0, 16) == 0);
  CHECK(cell(*env, 0, 2, 0, 18) == 3);
  CHECK(cell(*env, 0, 2, 0, 20) == 19);
  CHECK(cell(*env, 0, 2, 0, 21) == 0);
  env->set_state_json(0, cooks(2, 1, kUp, kOnion) + ",\"objects\":[" + pot(3, 5) + "]}");
  env->step(acts(Act, Stay));  // a cooking pot takes no onion
  CHECK(reward(*env, 0) == 0.0f);
  CHECK(cell(*env, 0, 2, 1, 23) == 1);
  for (int t = 0; t < 13; ++t) env->step(acts(Stay, Stay));
  CHECK(cell(*env, 0, 2, 0, 20) == 1);  // tick 19
  CHECK(cell(*env, 0, 2, 0, 21) == 0);
  env->step(acts(Stay, Stay));
  CHECK(cell(*env, 0, 2, 0, 20) == 0);
  CHECK(cell(*env, 0, 2, 0, 21) == 1);
  env->step(acts(Stay, Stay));  // a ready soup stays ready
  CHECK(cell(*env, 0, 2, 0, 21) == 1);
  CHECK(cell(*env, 0, 2, 0, 18) == 3);
}

TEST_CASE("overcooked_new_dynamics_cook_on_interact_and_value_only_three_onions") {
  auto env = make("overcooked/cramped_room", "old_dynamics: false");
  env->set_state_json(0, cooks(2, 1, kUp, kOnion) + ",\"objects\":[" + pot(2, -1) + "]}");
  env->step(acts(Act, Stay));
  CHECK(cell(*env, 0, 2, 0, 16) == 3);  // full but idle
  env->step(acts(Act, Stay));           // empty hands start the cooking
  CHECK(cell(*env, 0, 2, 0, 16) == 0);
  CHECK(cell(*env, 0, 2, 0, 20) == 19);
  // A soup of one onion cooks too, and is worth nothing at the counter.
  env->set_state_json(0, cooks(3, 2, kDown, R"({"name":"soup","_ingredients":[{"name":"onion"}]})") + "}");
  CHECK(cell(*env, 0, 3, 2, 18) == 1);
  CHECK(cell(*env, 0, 3, 2, 21) == 1);
  env->step(acts(Act, Stay));
  CHECK(reward(*env, 0) == 0.0f);
  CHECK(cell(*env, 0, 3, 2, 18) == 0);  // delivered all the same
}

TEST_CASE("overcooked_dishes_take_ready_soups_which_deliver_twenty_to_both") {
  auto env = make("overcooked/cramped_room");
  env->set_state_json(0, cooks(2, 1, kUp, kDish) + ",\"objects\":[" + pot(3, 10) + "]}");
  env->step(acts(Act, Stay));  // not ready: nothing
  CHECK(cell(*env, 0, 2, 1, 22) == 1);
  env->set_state_json(0, cooks(2, 1, kUp, kDish) + ",\"objects\":[" + pot(3, 20) + "]}");
  env->step(acts(Act, Stay));
  CHECK(reward(*env, 0) == 5.0f);  // soup pickup shaping
  CHECK(cell(*env, 0, 2, 1, 18) == 3);  // carried soup: ready, three onions
  CHECK(cell(*env, 0, 2, 1, 21) == 1);
  CHECK(cell(*env, 0, 2, 1, 22) == 0);  // the dish is part of the soup
  CHECK(cell(*env, 0, 2, 0, 18) == 0);
  CHECK(cell(*env, 0, 2, 0, 21) == 0);
  env->set_state_json(0, cooks(3, 2, kDown, kSoup) + "}");
  env->step(acts(Act, Stay));
  CHECK(reward(*env, 0) == 20.0f);
  CHECK(reward(*env, 1) == 20.0f);  // the delivery is the team's
  CHECK(cell(*env, 0, 3, 2, 21) == 0);
  env->set_state_json(0, cooks(3, 2, kDown, kOnion) + "}");
  env->step(acts(Act, Stay));  // only soups are served
  CHECK(cell(*env, 0, 3, 2, 23) == 1);
}

TEST_CASE("overcooked_dish_pickups_are_shaped_only_while_useful") {
  auto env = make("overcooked/cramped_room");
  env->set_state_json(0, cooks(1, 2, kDown) + "}");
  env->step(acts(Act, Stay));  // no pot busy
  CHECK(cell(*env, 0, 1, 2, 22) == 1);
  CHECK(reward(*env, 0) == 0.0f);
  env->set_state_json(0, cooks(1, 2, kDown) + ",\"objects\":[" + pot(1, -1) + "]}");
  env->step(acts(Act, Stay));  // a partly filled pot
  CHECK(reward(*env, 0) == 3.0f);
  env->set_state_json(0, cooks(1, 2, kDown, "null", kDish) + ",\"objects\":[" + pot(3, 4) + "]}");
  env->step(acts(Act, Stay));  // cook 1 already carries the dish for the one pot
  CHECK(reward(*env, 0) == 0.0f);
  env->set_state_json(0, cooks(1, 2, kDown) + ",\"objects\":[" + pot(3, 4) + R"(,{"name":"dish","position":[0,2]}]})");
  env->step(acts(Act, Stay));  // a dish lies on a counter
  CHECK(reward(*env, 0) == 0.0f);
  CHECK(cell(*env, 0, 1, 2, 22) == 1);
  // A full pot not yet cooking (new dynamics) does not count: the original counts pots that are
  // cooking, ready, or hold one or two onions.
  auto fresh = make("overcooked/cramped_room", "old_dynamics: false");
  fresh->set_state_json(0, cooks(1, 2, kDown) + ",\"objects\":[" + pot(3, -1) + "]}");
  fresh->step(acts(Act, Stay));
  CHECK(reward(*fresh, 0) == 0.0f);
  CHECK(cell(*fresh, 0, 1, 2, 22) == 1);
}

TEST_CASE("overcooked_shaping_anneals_and_the_episode_return_counts_deliveries") {
  // One env, shaping from 1 to 0 over 4 env steps: the factor at the env's k-th step is 1 - k / 4.
  auto env = make("overcooked/cramped_room", "shaping_horizon: 4", 1, 1, 3);
  env->step(acts(Stay, Stay));
  env->step(acts(Stay, Stay));
  env->set_state_json(0, cooks(2, 1, kUp, kOnion) + "}");
  env->step(acts(Act, Stay));  // the third step, k = 2
  CHECK(reward(*env, 0) == doctest::Approx(1.5));
  CHECK(env->truncated()[0].item<bool>());
  CHECK(env->episode_return()[0][0].item<float>() == 0.0f);  // shaping is not in the return
  CHECK(env->final_obs()[0][0][(2 * kH + 0) * kLayers + 16].item<int>() == 1);
  // The urgency layer: fewer than 40 steps left (here all 3 of them).
  CHECK(cell(*env, 0, 0, 0, 25) == 1);
  env->set_state_json(0, cooks(3, 2, kDown, kSoup) + R"(,"timestep":0})");
  env->step(acts(Act, Stay));
  CHECK(reward(*env, 0) == 20.0f);
  env->step(acts(Stay, Stay));
  env->step(acts(Stay, Stay));
  CHECK(env->truncated()[0].item<bool>());
  CHECK(env->episode_return()[0][0].item<float>() == 20.0f);
  CHECK(env->episode_return()[0][1].item<float>() == 20.0f);
}

TEST_CASE("overcooked_urgency_starts_forty_steps_before_the_end") {
  auto env = make("overcooked/cramped_room");
  env->set_state_json(0, cooks(1, 2, kUp) + R"(,"timestep":359})");
  env->step(acts(Stay, Stay));  // 40 steps left
  CHECK(cell(*env, 0, 0, 0, 25) == 0);
  env->step(acts(Stay, Stay));  // 39
  CHECK(cell(*env, 0, 0, 0, 25) == 1);
  CHECK(cell(*env, 1, 4, 3, 25) == 1);
}

TEST_CASE("overcooked_replays_the_originals_episodes") {
  const auto path = std::filesystem::path(FLOTILLA_SOURCE_DIR) / "tests/data/overcooked_reference.json";
  const nlohmann::json ref = nlohmann::json::parse(core::read_file(path));
  REQUIRE(ref["cases"].size() == 6);
  for (const auto& c : ref["cases"]) {
    const std::string id = c["env"];
    CAPTURE(id);
    auto env = make(id, c["old_dynamics"].get<bool>() ? "{}" : "old_dynamics: false");
    const int64_t O = env->spec().obs_dim();
    auto dense = [&](const nlohmann::json& nz) {
      std::vector<uint8_t> v(O, 0);
      for (const auto& e : nz) v[e[0].get<int>()] = static_cast<uint8_t>(e[1].get<int>());
      return v;
    };
    auto ours = [&](int agent, bool terrain) {
      at::Tensor o = env->obs()[0][agent].clone().view({-1, kLayers});
      if (!terrain) o.narrow(1, 10, 6).zero_();
      std::vector<uint8_t> v(o.data_ptr<uint8_t>(), o.data_ptr<uint8_t>() + O);
      return v;
    };
    for (int a = 0; a < 2; ++a) CHECK(ours(a, true) == dense(c["start_obs"][a]));
    int t = 0, mismatches = 0;
    for (const auto& s : c["steps"]) {
      ++t;
      env->step(acts(s["actions"][0], s["actions"][1]));
      if (t == 400) break;  // the episode ends: the env has reset
      for (int a = 0; a < 2; ++a) {
        const float want = s["sparse"].get<float>() + s["shaped"][a].get<float>();
        if (ours(a, false) != dense(s["obs"][a]) || reward(*env, a) != want) {
          if (++mismatches <= 3) FAIL_CHECK("step " << t << ", agent " << a << " differs from the original");
        }
      }
    }
    CHECK(mismatches == 0);
    CHECK(env->truncated()[0].item<bool>());
    int sparse = 0;
    for (const auto& s : c["steps"]) sparse += s["sparse"].get<int>();
    CHECK(env->episode_return()[0][0].item<float>() == static_cast<float>(sparse));
  }
}

TEST_CASE("overcooked_layouts_read_from_text_grids_and_files") {
  // A grid of the user's own, and the original's .layout form.
  auto env = make("overcooked/custom", "grid: |\n  XXPXX\n  O1 2D\n  XSXXX\n");
  CHECK(env->spec().agents[0].observation.numel() == 5 * 3 * 26);
  CHECK(env->obs()[0][0][(1 * 3 + 1) * 26 + 0].item<int>() == 1);  // cook 0 at (1, 1)
  const auto dir = std::filesystem::temp_directory_path() / "flotilla_overcooked_test";
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir / "room.layout");
    f << "{\n    \"grid\":  \"\"\"XXPXX\n                O  2O\n                X1  X\n                XDXSX\"\"\",\n"
         "    \"start_bonus_orders\": [],\n    \"rew_shaping_params\": None\n}\n";
  }
  auto from_file = make("overcooked/custom", "layout_file: " + (dir / "room.layout").string());
  auto cramped = make("overcooked/cramped_room");
  CHECK(at::equal(from_file->obs(), cramped->obs()));
  std::filesystem::remove_all(dir);

  auto error_of = [](const std::string& params) {
    try {
      make("overcooked/custom", params);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of("grid: |\n  XXPXX\n  O1 2\n  XSXDX\n").find("row 1 has 4 cells") != std::string::npos);
  CHECK(error_of("grid: |\n  XXPXX\n  12  D\n  XSXOX\n").find("border") != std::string::npos);
  CHECK(error_of("grid: |\n  XXPXX\n  O1  D\n  XSXXX\n").find("both cooks") != std::string::npos);
  CHECK(error_of("grid: |\n  XXPXX\n  T1 2D\n  XSXOX\n").find("tomato") != std::string::npos);
  CHECK(error_of("grid: |\n  XXPXX\n  Q1 2D\n  XSXOX\n").find("'Q' at x=0, y=1") != std::string::npos);
  CHECK(error_of("grid: |\n  XXXXX\n  O1 2D\n  XSXXX\n").find("pot") != std::string::npos);
  CHECK(error_of("layout_file: /nonexistent.layout").find("does not exist") != std::string::npos);
  CHECK(error_of("{}").find("params.grid") != std::string::npos);
  CHECK_THROWS_WITH_AS(make("overcooked/cramped_room", "grid: 'XXX'"), doctest::Contains("overcooked/custom"), ConfigError);
  CHECK_THROWS_WITH_AS(make("overcooked/cramped_room", "cook_time: 0"), doctest::Contains("cook_time"), ConfigError);
  CHECK_THROWS_WITH_AS(make("overcooked/cramped_room", "cook_tim: 3"), doctest::Contains("cook_tim"), ConfigError);
}

TEST_CASE("overcooked_every_layout_is_registered_with_its_size") {
  const std::vector<std::tuple<std::string, int, int>> layouts = {{"cramped_room", 5, 4},
                                                                  {"asymmetric_advantages", 9, 5},
                                                                  {"coordination_ring", 5, 5},
                                                                  {"forced_coordination", 5, 5},
                                                                  {"counter_circuit", 8, 5}};
  for (const auto& [name, w, h] : layouts) {
    CAPTURE(name);
    const auto& spec = envs::multi_agent_spec("overcooked/" + name);
    CHECK(spec.obs_dim() == w * h * 26);
    CHECK(spec.state.numel() == w * h * 26);
  }
}

TEST_CASE("overcooked_bad_actions_and_states_are_rejected_with_what_is_wrong") {
  auto env = make("overcooked/cramped_room", "{}", 3);
  at::Tensor a = at::zeros({3, 2}, at::kLong);
  a[2][1] = 6;
  CHECK_THROWS_WITH(env->step(a), doctest::Contains("env 2, agent 'agent_1': action 6"));
  a[2][1] = -1;
  CHECK_THROWS_WITH(env->step(a), doctest::Contains("action -1"));
  CHECK_THROWS_WITH(env->set_state_json(0, R"({"players":[{"position":[0,0]},{"position":[3,1]}]})"),
                    doctest::Contains("not a floor cell"));
  CHECK_THROWS_WITH(env->set_state_json(0, R"({"objects":[{"name":"tomato","position":[0,0]}]})"),
                    doctest::Contains("onion, dish and soup"));
  CHECK_THROWS_WITH(env->set_state_json(0, R"({"objects":[{"name":"onion","position":[2,0]}]})"),
                    doctest::Contains("only soups lie in pots"));
  CHECK_THROWS_WITH(env->set_state_json(0, R"({"player":[]})"), doctest::Contains("unknown key 'player'"));
}

TEST_CASE("overcooked_batches_do_not_depend_on_threads") {
  auto a = make("overcooked/counter_circuit", "{}", 37, 1), b = make("overcooked/counter_circuit", "{}", 37, 3);
  at::Tensor actions;
  for (int t = 0; t < 500; ++t) {
    actions = at::randint(0, 6, {37, 2}, at::kLong);
    a->step(actions);
    b->step(actions);
  }
  CHECK(at::equal(a->obs(), b->obs()));
  CHECK(at::equal(a->reward(), b->reward()));
  CHECK(at::equal(a->episode_return(), b->episode_return()));
}
