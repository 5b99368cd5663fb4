#pragma once
// Overcooked, two cooks sharing a kitchen, with the rules of HumanCompatibleAI's overcooked_ai
// (the benchmark of "On the Utility of Learning about Humans for Human-AI Coordination"): onion
// soups of three onions, a cooking time, dishes, delivery for 20, 400-step episodes.
//
// Actions (the original's order): 0 north, 1 south, 2 east, 3 west, 4 stay, 5 interact; every
// action is always available. A step resolves, in this order:
//   1. interacts, cook 0 then cook 1, with the cell each faces before moving:
//      counter: put down what is held on an empty counter, or pick up what lies there;
//      onion or dish dispenser: take one with empty hands (a dish taken while it is useful earns
//        the dish-pickup shaping: no dish on any counter and fewer dishes in hands than pots that
//        are cooking, ready or partly filled at the start of the step);
//      pot: an onion goes in while the pot is idle with fewer than three (placement shaping); a
//        dish takes a ready soup out (soup-pickup shaping); with empty hands, and only under the
//        new dynamics, an idle pot with onions starts cooking;
//      serving counter: a held soup is delivered, 20 for three onions (the layouts' only order),
//        0 for fewer;
//   2. movement: a move turns the cook and steps onto the cell ahead when it is floor; when both
//      cooks would end on one cell or swap cells, both stay where they were (still turned);
//   3. the kitchen: the step counter advances; under the old dynamics (the default, as the
//      benchmark ran) a pot with three onions starts cooking by itself; cooking pots advance one
//      tick, and a soup is ready after `cook_time` ticks.
// Rewards: each cook gets the team's delivery reward plus its own shaping times a factor that
// starts at `shaping` and falls linearly to zero over `shaping_horizon` env steps of the batch
// (0: no annealing), as the original's PPO wrapper anneals it. The episode return counts the
// delivery reward alone, so it reads 20 per soup.
//
// Observation, per cook, the original's lossless encoding as bytes: a [width, height, 26] grid
// (x major, then y, then layer), layers
//   0-1 own and other cook's position, 2-5 own facing N/S/E/W, 6-9 the other's, 10 pots,
//   11 counters, 12 onion dispensers, 13 tomato dispensers, 14 dish dispensers, 15 serving,
//   16 onions in an idle pot, 17 tomatoes in an idle pot, 18 onions in a soup (cooking, ready
//   or carried), 19 tomatoes in a soup, 20 cooking ticks left, 21 soup ready, 22 dishes,
//   23 onions (loose or carried), 24 tomatoes, 25 urgency (fewer than 40 steps left).
// The global state is cook 0's observation (the encoding is lossless).
//
// One env's state, as doubles kept together per env: per cook c, x, y, facing and held item at 4c .. 4c + 3; then the
// step counter, the step's delivery reward, the env's steps over all its episodes (for the
// annealing), per pot k its onions and cooking tick (-1 idle) at 11 + 2k, 12 + 2k, and per cell
// (y * width + x) the item lying on it.
#include <cstdint>
#include <string>

#include "kernels/multi_agent_batch.hpp"

namespace flotilla::envs::overcooked {

enum Terrain : uint8_t { Floor, Counter, Pot, OnionDispenser, TomatoDispenser, DishDispenser, Serving };
// Items: a soup of k onions is 2 + k.
enum Item : int32_t { Nothing = 0, Onion = 1, Dish = 2, SoupOf1 = 3, SoupOf3 = 5 };
enum Action : int32_t { North, South, East, West, Stay, Interact, kActions };

constexpr int kMaxCells = 400, kMaxPots = 16, kCooks = 2, kLayers = 26, kUrgentSteps = 40;
constexpr int kStepVar = 8, kRewardVar = 9, kLifetimeVar = 10, kPotVars = 11;

struct Params {
  int32_t agents = kCooks;
  int32_t width = 0, height = 0;
  uint8_t terrain[kMaxCells] = {};  // [y * width + x]
  int8_t pot_of[kMaxCells] = {};    // a pot cell's pot index, -1 elsewhere
  int32_t pots = 0;
  int32_t start_x[kCooks] = {}, start_y[kCooks] = {};
  int32_t cook_time = 20;
  float delivery_reward = 20.0f;
  float placement_reward = 3.0f, dish_pickup_reward = 3.0f, soup_pickup_reward = 5.0f;
  bool old_dynamics = true;
  float shaping = 1.0f;
  double shaping_horizon = 0.0;  // env steps of the whole batch; 0: no annealing
  int64_t num_envs = 1;
  int32_t horizon = 400;  // the episode's length, for the urgency layer
};

struct Overcooked {
  using Params = overcooked::Params;
  using StateRef = kernels::StateRef;
  using Obs = uint8_t;
  static constexpr bool kEnvMajorState = true;  // an env's variables together: fewer cache lines a step

  FLOTILLA_HD static int64_t state_vars(const Params& p) { return kPotVars + 2 * p.pots + p.width * p.height; }
  FLOTILLA_HD static int obs_dim(const Params& p) { return p.width * p.height * kLayers; }
  FLOTILLA_HD static double& cook(StateRef s, int c, int k) { return s[4 * c + k]; }
  FLOTILLA_HD static double& onions(StateRef s, int pot) { return s[kPotVars + 2 * pot]; }
  FLOTILLA_HD static double& tick(StateRef s, int pot) { return s[kPotVars + 2 * pot + 1]; }
  FLOTILLA_HD static double& item(const Params& p, StateRef s, int cell) { return s[kPotVars + 2 * p.pots + cell]; }
  FLOTILLA_HD static int dx(int dir) { return dir == East ? 1 : dir == West ? -1 : 0; }
  FLOTILLA_HD static int dy(int dir) { return dir == South ? 1 : dir == North ? -1 : 0; }
  FLOTILLA_HD static bool is_soup(int it) { return it >= SoupOf1; }

  FLOTILLA_HD static void reset(const Params& p, StateRef s, kernels::EnvRng&) {
    for (int c = 0; c < kCooks; ++c) {
      cook(s, c, 0) = p.start_x[c];
      cook(s, c, 1) = p.start_y[c];
      cook(s, c, 2) = North;
      cook(s, c, 3) = Nothing;
    }
    s[kStepVar] = 0.0;
    s[kRewardVar] = 0.0;
    // s[kLifetimeVar] runs on across episodes.
    for (int k = 0; k < p.pots; ++k) {
      onions(s, k) = 0.0;
      tick(s, k) = -1.0;
    }
    for (int cell = 0; cell < p.width * p.height; ++cell) item(p, s, cell) = Nothing;
  }

  // The delivery reward of the step just taken, shared by both cooks.
  FLOTILLA_HD static float episode_reward(const Params&, StateRef s, int) { return static_cast<float>(s[kRewardVar]); }

  // Whether a dish taken now earns the shaping: no dish on a counter, and fewer dishes in hands
  // than pots cooking, ready or partly filled (counted at the start of the step).
  FLOTILLA_HD static bool dish_useful(const Params& p, StateRef s, int busy_pots) {
    for (int cell = 0; cell < p.width * p.height; ++cell)
      if (p.terrain[cell] == Counter && static_cast<int>(item(p, s, cell)) == Dish) return false;
    int dishes = 0;
    for (int c = 0; c < kCooks; ++c) dishes += static_cast<int>(cook(s, c, 3)) == Dish;
    return dishes < busy_pots;
  }

  FLOTILLA_HD static void step(const Params& p, StateRef s, kernels::AgentActions actions, float* reward, bool* agent_done,
                               bool& terminated, float& won) {
    int busy_pots = 0;
    for (int k = 0; k < p.pots; ++k) {
      const int n = static_cast<int>(onions(s, k));
      busy_pots += tick(s, k) >= 0.0 || (n > 0 && n < 3);
    }
    float delivered = 0.0f, shaped[kCooks] = {0.0f, 0.0f};
    // 1. Interacts, cook 0 first.
    for (int c = 0; c < kCooks; ++c) {
      if (actions.discrete(c) != Interact) continue;
      const int dir = static_cast<int>(cook(s, c, 2));
      const int x = static_cast<int>(cook(s, c, 0)) + dx(dir), y = static_cast<int>(cook(s, c, 1)) + dy(dir);
      const int cell = y * p.width + x;
      double& held = cook(s, c, 3);
      const int h = static_cast<int>(held);
      switch (p.terrain[cell]) {
        case Counter: {
          double& lying = item(p, s, cell);
          if (h != Nothing && static_cast<int>(lying) == Nothing) {
            lying = h;
            held = Nothing;
          } else if (h == Nothing && static_cast<int>(lying) != Nothing) {
            held = lying;
            lying = Nothing;
          }
          break;
        }
        case OnionDispenser:
          if (h == Nothing) held = Onion;
          break;
        case DishDispenser:
          if (h == Nothing) {
            if (dish_useful(p, s, busy_pots)) shaped[c] += p.dish_pickup_reward;
            held = Dish;
          }
          break;
        case Pot: {
          const int k = p.pot_of[cell];
          const int n = static_cast<int>(onions(s, k));
          const double t = tick(s, k);
          if (h == Nothing) {
            if (!p.old_dynamics && n > 0 && t < 0.0) tick(s, k) = 0.0;
          } else if (h == Dish) {
            if (t >= p.cook_time) {
              held = 2 + n;
              onions(s, k) = 0.0;
              tick(s, k) = -1.0;
              shaped[c] += p.soup_pickup_reward;
            }
          } else if (h == Onion && t < 0.0 && n < 3) {
            onions(s, k) = n + 1;
            held = Nothing;
            shaped[c] += p.placement_reward;
          }
          break;
        }
        case Serving:
          if (is_soup(h)) {
            delivered += h == SoupOf3 ? p.delivery_reward : 0.0f;
            held = Nothing;
          }
          break;
        default: break;
      }
    }
    // 2. Movement; a collision or a swap keeps both cooks where they were.
    int old_x[kCooks], old_y[kCooks], new_x[kCooks], new_y[kCooks];
    for (int c = 0; c < kCooks; ++c) {
      old_x[c] = new_x[c] = static_cast<int>(cook(s, c, 0));
      old_y[c] = new_y[c] = static_cast<int>(cook(s, c, 1));
      const int a = static_cast<int>(actions.discrete(c));
      if (a > West) continue;
      cook(s, c, 2) = a;
      const int x = old_x[c] + dx(a), y = old_y[c] + dy(a);
      if (p.terrain[y * p.width + x] == Floor) {
        new_x[c] = x;
        new_y[c] = y;
      }
    }
    const bool same = new_x[0] == new_x[1] && new_y[0] == new_y[1];
    const bool swap = new_x[0] == old_x[1] && new_y[0] == old_y[1] && new_x[1] == old_x[0] && new_y[1] == old_y[0];
    if (!same && !swap)
      for (int c = 0; c < kCooks; ++c) {
        cook(s, c, 0) = new_x[c];
        cook(s, c, 1) = new_y[c];
      }
    // 3. The kitchen.
    s[kStepVar] += 1.0;
    for (int k = 0; k < p.pots; ++k) {
      if (p.old_dynamics && tick(s, k) < 0.0 && static_cast<int>(onions(s, k)) == 3) tick(s, k) = 0.0;
      if (tick(s, k) >= 0.0 && tick(s, k) < p.cook_time) tick(s, k) += 1.0;
    }
    double factor = p.shaping;
    if (p.shaping_horizon > 0.0) {
      const double left = 1.0 - s[kLifetimeVar] * static_cast<double>(p.num_envs) / p.shaping_horizon;
      factor *= left > 0.0 ? left : 0.0;
    }
    s[kLifetimeVar] += 1.0;
    s[kRewardVar] = delivered;
    for (int c = 0; c < kCooks; ++c) {
      reward[c] = delivered + static_cast<float>(factor) * shaped[c];
      agent_done[c] = false;
    }
    terminated = false;
    won = 0.0f;
  }

  // Adds an item's layers at grid offset `at` (held or lying; soups out of a pot are ready).
  FLOTILLA_HD static void put_item(uint8_t* at, int it) {
    if (it == Onion) at[23] += 1;
    else if (it == Dish) at[22] += 1;
    else if (is_soup(it)) {
      at[18] += static_cast<uint8_t>(it - 2);
      at[21] += 1;
    }
  }

  FLOTILLA_HD static void observe(const Params& p, StateRef s, int agent, uint8_t* obs) {
    const int W = p.width, H = p.height;
    kernels::zero_bytes(obs, W * H * kLayers);
    const bool urgent = p.horizon - s[kStepVar] < kUrgentSteps;
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const int cell = y * W + x;
        uint8_t* at = obs + (x * H + y) * kLayers;
        at[25] = urgent;
        switch (p.terrain[cell]) {
          case Pot: {
            at[10] = 1;
            const int k = p.pot_of[cell], n = static_cast<int>(onions(s, k));
            const double t = tick(s, k);
            if (t < 0.0) {
              at[16] = static_cast<uint8_t>(n);
            } else {
              at[18] = static_cast<uint8_t>(n);
              at[20] = static_cast<uint8_t>(p.cook_time - static_cast<int>(t));
              at[21] = t >= p.cook_time;
            }
            break;
          }
          case Counter:
            at[11] = 1;
            put_item(at, static_cast<int>(item(p, s, cell)));
            break;
          case OnionDispenser: at[12] = 1; break;
          case TomatoDispenser: at[13] = 1; break;
          case DishDispenser: at[14] = 1; break;
          case Serving: at[15] = 1; break;
          default: break;
        }
      }
    for (int slot = 0; slot < kCooks; ++slot) {
      const int c = slot == 0 ? agent : 1 - agent;
      uint8_t* at = obs + (static_cast<int>(cook(s, c, 0)) * H + static_cast<int>(cook(s, c, 1))) * kLayers;
      at[slot] = 1;
      at[2 + 4 * slot + static_cast<int>(cook(s, c, 2))] = 1;
      put_item(at, static_cast<int>(cook(s, c, 3)));
    }
  }

  FLOTILLA_HD static void global_state(const Params& p, StateRef, const uint8_t* obs, int, uint8_t* state) {
    kernels::copy_bytes(state, obs, obs_dim(p));
  }

  FLOTILLA_HD static void available(const Params&, StateRef, int, bool* avail) {
    for (int a = 0; a < kActions; ++a) avail[a] = true;
  }

  // The original's OvercookedState.to_dict() form: {"players": [{"position": [x, y],
  // "orientation": [dx, dy], "held_object": null | {"name": ...}}, ...], "objects": [{"name":
  // "onion" | "dish" | "soup", "position": [x, y], "_ingredients": [...], "cooking_tick": t}, ...],
  // "timestep": t}.
  static void set_state_json(const Params& p, StateRef s, const std::string& json);
};

}  // namespace flotilla::envs::overcooked
