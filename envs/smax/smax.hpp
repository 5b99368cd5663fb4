#pragma once
// SMAX-style StarCraft micro-management (after JaxMARL's SMAX and SMAC): two armies on a 32 x 32
// continuous map; the learning side's units are agents, the other side follows a heuristic.
// An env step is 8 world steps of 1/16 s. Units move at their speed, fire when a target is in
// range (attack range plus both radii) and the weapon is cooled down, and die at zero health;
// Protoss shields take damage first and recharge at 2 per second after 10 s without damage.
//
// Agent actions: 0 stop, 1 north, 2 south, 3 east, 4 west, 5 + k attack enemy k (available when
// enemy k is alive and in range; a dead agent can only stop). The heuristic enemy attacks the
// nearest agent in range, else walks toward the nearest agent it sees, else toward the agents'
// side of the map.
//
// Rewards as SMAC's (shared by the team): damage dealt (health and shield), 10 per kill, 200 for a
// win, scaled so a perfect episode totals 20. The episode ends won (every enemy dead), lost
// (every agent dead; both at once is a draw, not a win) or at the time limit (100 steps).
//
// Unit statistics (speed, damage per shot, weapon cooldown in s, attack range, sight, radius,
// health + shield) are JaxMARL SMAX's, with the Protoss totals split into SC2's health and shields:
//   marine    3.15  9  0.61  5  9  0.375   45 + 0
//   marauder  2.25 10  1.07  6 10  0.5625 125 + 0
//   stalker   4.13 13  1.87  6 10  0.625   80 + 80
//   zealot    3.15  8  0.86  2  9  0.5    100 + 50
//   zergling  4.13  5  0.5   1  8  0.375   35 + 0
//   hydralisk 3.15 12  0.59  5  9  0.625   80 + 0
//
// One env's state, as doubles: for every unit u (agents first, then enemies) x, y, health,
// shield, weapon cooldown, and seconds since it last took damage, at 6u .. 6u + 5; then the
// env steps taken in the episode.
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/multi_agent_batch.hpp"

namespace flotilla::envs::smax {

enum UnitType : int32_t { Marine, Marauder, Stalker, Zealot, Zergling, Hydralisk, kUnitTypes };

struct UnitStats {
  double speed, damage, cooldown, range, sight, radius, health, shield;
};

FLOTILLA_HD UnitStats stats(int type) {
  switch (type) {
    case Marine: return {3.15, 9.0, 0.61, 5.0, 9.0, 0.375, 45.0, 0.0};
    case Marauder: return {2.25, 10.0, 1.07, 6.0, 10.0, 0.5625, 125.0, 0.0};
    case Stalker: return {4.13, 13.0, 1.87, 6.0, 10.0, 0.625, 80.0, 80.0};
    case Zealot: return {3.15, 8.0, 0.86, 2.0, 9.0, 0.5, 100.0, 50.0};
    case Zergling: return {4.13, 5.0, 0.5, 1.0, 8.0, 0.375, 35.0, 0.0};
    default: return {3.15, 12.0, 0.59, 5.0, 9.0, 0.625, 80.0, 0.0};
  }
}

constexpr int kMaxUnits = 32;
constexpr int kVars = 6;  // per unit: x, y, health, shield, cooldown, since_damage
constexpr int kMoves = 5;  // stop and four directions
constexpr double kMapSize = 32.0, kWorldDt = 1.0 / 16.0;
constexpr int kWorldSteps = 8;
constexpr double kShieldDelay = 10.0, kShieldRegen = 2.0;
constexpr double kKillBonus = 10.0, kWinBonus = 200.0, kRewardScale = 20.0;

struct Params {
  int32_t agents = 3;   // allied units (the learners) come first
  int32_t enemies = 3;
  int32_t type[kMaxUnits] = {};
  int32_t type_slot[kUnitTypes] = {};  // one-hot slot of each type present (-1: absent)
  int32_t type_count = 1;              // distinct types; one-hot features only when > 1
  double max_reward = 1.0;             // the best episode's unscaled reward
  int32_t episode_limit = 100;         // for the state's time feature
};

struct Smax {
  using Params = smax::Params;
  using StateRef = kernels::StateRef;

  FLOTILLA_HD static int64_t state_vars(const Params& p) { return kVars * (p.agents + p.enemies) + 1; }
  FLOTILLA_HD static double& steps(const Params& p, StateRef s) { return s[kVars * (p.agents + p.enemies)]; }
  FLOTILLA_HD static int units(const Params& p) { return p.agents + p.enemies; }
  FLOTILLA_HD static double& var(StateRef s, int u, int k) { return s[kVars * u + k]; }
  FLOTILLA_HD static bool alive(StateRef s, int u) { return s[kVars * u + 2] > 0.0; }
  FLOTILLA_HD static double dist(StateRef s, int a, int b) {
    const double dx = var(s, a, 0) - var(s, b, 0), dy = var(s, a, 1) - var(s, b, 1);
    return sqrt(dx * dx + dy * dy);
  }
  FLOTILLA_HD static bool in_range(const Params& p, StateRef s, int a, int b) {
    const UnitStats sa = stats(p.type[a]), sb = stats(p.type[b]);
    return dist(s, a, b) <= sa.range + sa.radius + sb.radius;
  }
  FLOTILLA_HD static bool sees(const Params& p, StateRef s, int a, int b) { return dist(s, a, b) <= stats(p.type[a]).sight; }

  // Per-agent feature widths.
  FLOTILLA_HD static int type_features(const Params& p) { return p.type_count > 1 ? p.type_count : 0; }
  FLOTILLA_HD static int unit_features(const Params& p) { return 6 + type_features(p); }
  FLOTILLA_HD static int obs_dim(const Params& p) {
    return 3 + (p.agents - 1 + p.enemies) * unit_features(p) + kMoves + type_features(p);
  }
  FLOTILLA_HD static int state_dim(const Params& p) { return units(p) * (5 + type_features(p)) + 1; }

  FLOTILLA_HD static void reset(const Params& p, StateRef s, kernels::EnvRng& rng) {
    // The two armies start as clusters 12 apart, out of each other's sight.
    for (int u = 0; u < units(p); ++u) {
      const bool ally = u < p.agents;
      const UnitStats st = stats(p.type[u]);
      var(s, u, 0) = (ally ? 10.0 : 22.0) + rng.uniform(-1.5, 1.5);
      var(s, u, 1) = 16.0 + rng.uniform(-3.0, 3.0);
      var(s, u, 2) = st.health;
      var(s, u, 3) = st.shield;
      var(s, u, 4) = 0.0;
      var(s, u, 5) = kShieldDelay;
    }
    steps(p, s) = 0.0;
  }

  // The heuristic enemy's choice for unit u: a target unit, or -1 and a direction to walk.
  FLOTILLA_HD static int enemy_target(const Params& p, StateRef s, int u, double& dx, double& dy) {
    int target = -1, seen = -1;
    double best_target = 1e300, best_seen = 1e300;
    for (int a = 0; a < p.agents; ++a) {
      if (!alive(s, a)) continue;
      const double d = dist(s, u, a);
      if (in_range(p, s, u, a) && d < best_target) best_target = d, target = a;
      if (sees(p, s, u, a) && d < best_seen) best_seen = d, seen = a;
    }
    if (target >= 0) return target;
    double tx = 10.0, ty = 16.0;  // the agents' side of the map
    if (seen >= 0) tx = var(s, seen, 0), ty = var(s, seen, 1);
    dx = tx - var(s, u, 0);
    dy = ty - var(s, u, 1);
    const double n = sqrt(dx * dx + dy * dy);
    dx = n > 1e-9 ? dx / n : 0.0;
    dy = n > 1e-9 ? dy / n : 0.0;
    return -1;
  }

  FLOTILLA_HD static void step(const Params& p, StateRef s, kernels::AgentActions actions, float* reward, bool* agent_done,
                               bool& terminated, float& won) {
    const int U = units(p);
    // Every unit's order for this env step: a target, or a direction (zero: stop).
    int target[kMaxUnits];
    double dir_x[kMaxUnits], dir_y[kMaxUnits];
    for (int u = 0; u < U; ++u) {
      target[u] = -1;
      dir_x[u] = dir_y[u] = 0.0;
      if (!alive(s, u)) continue;
      if (u >= p.agents) {
        target[u] = enemy_target(p, s, u, dir_x[u], dir_y[u]);
        continue;
      }
      const int64_t a = actions.discrete(u);
      if (a >= kMoves) {
        const int t = p.agents + static_cast<int>(a - kMoves);
        target[u] = alive(s, t) && in_range(p, s, u, t) ? t : -1;  // an unavailable attack holds position
      } else {
        dir_x[u] = a == 3 ? 1.0 : a == 4 ? -1.0 : 0.0;
        dir_y[u] = a == 1 ? 1.0 : a == 2 ? -1.0 : 0.0;
      }
    }
    double dealt = 0.0;  // damage to enemies, health and shield
    int kills = 0;
    for (int w = 0; w < kWorldSteps; ++w) {
      double damage[kMaxUnits];
      for (int u = 0; u < U; ++u) damage[u] = 0.0;
      for (int u = 0; u < U; ++u) {
        if (!alive(s, u)) continue;
        const UnitStats st = stats(p.type[u]);
        const int t = target[u];
        if (t >= 0) {
          if (alive(s, t) && in_range(p, s, u, t) && var(s, u, 4) <= 0.0) {
            damage[t] += st.damage;
            var(s, u, 4) = st.cooldown;
          }
        } else {
          var(s, u, 0) = fmin(kMapSize, fmax(0.0, var(s, u, 0) + dir_x[u] * st.speed * kWorldDt));
          var(s, u, 1) = fmin(kMapSize, fmax(0.0, var(s, u, 1) + dir_y[u] * st.speed * kWorldDt));
        }
        var(s, u, 4) = fmax(0.0, var(s, u, 4) - kWorldDt);
      }
      // Damage lands together, so the order of units does not matter; shields absorb it first.
      for (int u = 0; u < U; ++u) {
        if (!alive(s, u)) continue;
        if (damage[u] > 0.0) {
          const double before = var(s, u, 2) + var(s, u, 3);
          const double to_shield = fmin(var(s, u, 3), damage[u]);
          var(s, u, 3) -= to_shield;
          var(s, u, 2) = fmax(0.0, var(s, u, 2) - (damage[u] - to_shield));
          var(s, u, 5) = 0.0;
          if (u >= p.agents) {
            dealt += before - (var(s, u, 2) + var(s, u, 3));
            kills += var(s, u, 2) <= 0.0 ? 1 : 0;
          }
        } else {
          var(s, u, 5) += kWorldDt;
          if (var(s, u, 5) >= kShieldDelay)
            var(s, u, 3) = fmin(stats(p.type[u]).shield, var(s, u, 3) + kShieldRegen * kWorldDt);
        }
      }
    }
    steps(p, s) += 1.0;
    int allies_alive = 0, enemies_alive = 0;
    for (int u = 0; u < U; ++u) (u < p.agents ? allies_alive : enemies_alive) += alive(s, u) ? 1 : 0;
    const bool win = enemies_alive == 0 && allies_alive > 0;
    terminated = enemies_alive == 0 || allies_alive == 0;
    won = win ? 1.0f : 0.0f;
    const double r = (dealt + kKillBonus * kills + (win ? kWinBonus : 0.0)) * kRewardScale / p.max_reward;
    for (int a = 0; a < p.agents; ++a) {
      reward[a] = static_cast<float>(r);
      agent_done[a] = !alive(s, a);
    }
  }

  struct Out {
    float* p;
    int n = 0;
    FLOTILLA_HD void put(double v) { p[n++] = static_cast<float>(v); }
  };

  FLOTILLA_HD static void type_one_hot(const Params& p, int u, Out& o) {
    for (int k = 0; k < type_features(p); ++k) o.put(p.type_slot[p.type[u]] == k ? 1.0 : 0.0);
  }

  // SMAC-style features: own state, then each other agent and each enemy (zeros when not in
  // sight), then which moves are possible. A dead agent observes zeros.
  FLOTILLA_HD static void observe(const Params& p, StateRef s, int a, float* obs) {
    Out o{obs};
    const int width = obs_dim(p);
    if (!alive(s, a)) {
      for (int k = 0; k < width; ++k) o.put(0.0);
      return;
    }
    const UnitStats me = stats(p.type[a]);
    o.put(var(s, a, 2) / me.health);
    o.put(me.shield > 0 ? var(s, a, 3) / me.shield : 0.0);
    o.put(var(s, a, 4) / me.cooldown);
    for (int u = 0; u < units(p); ++u) {
      if (u == a) continue;
      const UnitStats st = stats(p.type[u]);
      const bool visible = alive(s, u) && sees(p, s, a, u);
      const double sight = me.sight;
      o.put(!visible ? 0.0 : u < p.agents ? 1.0 : (in_range(p, s, a, u) ? 1.0 : 0.5));
      o.put(visible ? dist(s, a, u) / sight : 0.0);
      o.put(visible ? (var(s, u, 0) - var(s, a, 0)) / sight : 0.0);
      o.put(visible ? (var(s, u, 1) - var(s, a, 1)) / sight : 0.0);
      o.put(visible ? var(s, u, 2) / st.health : 0.0);
      o.put(visible && st.shield > 0 ? var(s, u, 3) / st.shield : 0.0);
      if (visible) type_one_hot(p, u, o);
      else
        for (int k = 0; k < type_features(p); ++k) o.put(0.0);
    }
    const double x = var(s, a, 0), y = var(s, a, 1);
    o.put(1.0);  // stop
    o.put(y < kMapSize ? 1.0 : 0.0);
    o.put(y > 0.0 ? 1.0 : 0.0);
    o.put(x < kMapSize ? 1.0 : 0.0);
    o.put(x > 0.0 ? 1.0 : 0.0);
    type_one_hot(p, a, o);
  }

  // Every unit's health, shield, cooldown and position (relative to the map's centre) and type,
  // then the share of the episode's time limit used.
  FLOTILLA_HD static void global_state(const Params& p, StateRef s, const float*, int, float* out) {
    Out o{out};
    for (int u = 0; u < units(p); ++u) {
      const UnitStats st = stats(p.type[u]);
      const bool up = alive(s, u);
      o.put(var(s, u, 2) / st.health);
      o.put(st.shield > 0 ? var(s, u, 3) / st.shield : 0.0);
      o.put(up ? var(s, u, 4) / st.cooldown : 0.0);
      o.put(up ? (var(s, u, 0) - kMapSize / 2) / kMapSize : 0.0);
      o.put(up ? (var(s, u, 1) - kMapSize / 2) / kMapSize : 0.0);
      type_one_hot(p, u, o);
    }
    o.put(steps(p, s) / p.episode_limit);
  }

  FLOTILLA_HD static void available(const Params& p, StateRef s, int a, bool* avail) {
    const bool up = alive(s, a);
    avail[0] = true;
    for (int k = 1; k < kMoves; ++k) avail[k] = up;
    for (int e = 0; e < p.enemies; ++e) {
      const int u = p.agents + e;
      avail[kMoves + e] = up && alive(s, u) && in_range(p, s, a, u);
    }
  }

  // Host only (envs/smax/smax.cpp): unit positions, health and shields from JSON.
  static void set_state_json(const Params& p, StateRef s, const std::string& json);
};

}  // namespace flotilla::envs::smax
