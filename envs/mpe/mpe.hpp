#pragma once
// The Multi-Particle Environments (Lowe et al. 2017) as PettingZoo's MPE2 defines them: the same
// world physics (damping 0.25, dt 0.1, soft contact forces of stiffness 100 and margin 1e-3,
// sensitivity 5 unless an agent has its own acceleration, speed caps), the same action decoding
// (discrete: no-op, left, right, down, up, times a message index for speaking agents; continuous:
// [no-op, left, right, down, up] in [0, 1] then the message), and each scenario's observation
// layout and rewards. Physics in double, observations in float32, as MPE2 computes them.
//
// One env's state, as doubles (struct of arrays, see kernels::StateRef): for every entity e
// (agents first, then landmarks in MPE2's order) p_pos at 4e, 4e+1 and p_vel at 4e+2, 4e+3; then
// each agent's message (dim_c values); then two goal slots holding landmark indices (the
// scenario's random goal, second goal or crypto key).
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/multi_agent_batch.hpp"

namespace flotilla::envs::mpe {

enum class Scenario : int32_t { Simple, Spread, Tag, Adversary, Push, Reference, SpeakerListener, Crypto, WorldComm };

constexpr int kMaxAgents = 16;
constexpr int kMaxEntities = 48;
constexpr int kMaxComm = 10;
constexpr double kDt = 0.1, kDamping = 0.25, kContactForce = 100.0, kContactMargin = 1e-3;
// Past this gap the soft contact force, 100 * log(1 + exp(-gap / 1e-3)) * 1e-3, is under 1e-18.
constexpr double kContactReach = 0.04;

struct Params {
  Scenario scenario = Scenario::Simple;
  int32_t agents = 1;       // agents come first among the entities
  int32_t entities = 2;     // agents + landmarks
  int32_t adversaries = 0;  // the first `adversaries` agents
  int32_t dim_c = 2;        // message width
  int32_t obstacles = 0, food = 0, forests = 0;  // simple_world_comm's landmarks, in this order
  bool continuous = false;
  float local_ratio = -1.0f;  // < 0: no global reward
  // In double, as MPE2 holds them: a float32 0.15 would shift contact forces by ~1e-6.
  double size[kMaxEntities] = {};
  double max_speed[kMaxEntities] = {};  // <= 0: none
  double accel[kMaxAgents] = {};        // action sensitivity
  bool movable[kMaxEntities] = {};
  bool collide[kMaxEntities] = {};
  bool silent[kMaxAgents] = {};
  int32_t obs_dim[kMaxAgents] = {};
  int32_t num_actions[kMaxAgents] = {};  // discrete: moves x messages; continuous: the Box width
  int32_t avail_dim = 1;                 // the action mask's width: the most discrete actions of any agent
};

struct Mpe {
  using Params = mpe::Params;
  using StateRef = kernels::StateRef;

  FLOTILLA_HD static int64_t state_vars(const Params& p) { return 4 * p.entities + p.agents * p.dim_c + 2; }

  FLOTILLA_HD static double& pos(StateRef s, int e, int d) { return s[4 * e + d]; }
  FLOTILLA_HD static double& vel(StateRef s, int e, int d) { return s[4 * e + 2 + d]; }
  FLOTILLA_HD static double& comm(const Params& p, StateRef s, int a, int k) { return s[4 * p.entities + a * p.dim_c + k]; }
  FLOTILLA_HD static int goal(const Params& p, StateRef s, int k) {
    return static_cast<int>(s[4 * p.entities + p.agents * p.dim_c + k]);
  }
  FLOTILLA_HD static int landmark(const Params& p, int k) { return p.agents + k; }

  FLOTILLA_HD static double dist(StateRef s, int a, int b) {
    const double dx = pos(s, a, 0) - pos(s, b, 0), dy = pos(s, a, 1) - pos(s, b, 1);
    return sqrt(dx * dx + dy * dy);
  }
  FLOTILLA_HD static double dist2(StateRef s, int a, int b) {
    const double dx = pos(s, a, 0) - pos(s, b, 0), dy = pos(s, a, 1) - pos(s, b, 1);
    return dx * dx + dy * dy;
  }
  FLOTILLA_HD static bool touching(const Params& p, StateRef s, int a, int b) {
    const double r = p.size[a] + p.size[b];
    return dist2(s, a, b) < r * r;
  }
  FLOTILLA_HD static bool adversary(const Params& p, int a) { return a < p.adversaries; }

  // ---- Reset ----

  FLOTILLA_HD static void reset(const Params& p, StateRef s, kernels::EnvRng& rng) {
    for (int k = 0; k < state_vars(p); ++k) s[k] = 0.0;
    for (int a = 0; a < p.agents; ++a)
      for (int d = 0; d < 2; ++d) pos(s, a, d) = rng.uniform(-1.0, 1.0);
    // Landmarks that agents can bump into start inside the walls, as MPE2 places them.
    const double spread = p.scenario == Scenario::Tag || p.scenario == Scenario::WorldComm ? 0.9 : 1.0;
    for (int e = p.agents; e < p.entities; ++e)
      for (int d = 0; d < 2; ++d) pos(s, e, d) = rng.uniform(-spread, spread);
    const int landmarks = p.entities - p.agents;
    double* goals = &s[4 * p.entities + p.agents * p.dim_c];
    goals[0] = static_cast<double>(pick(rng, landmarks));
    goals[1] = static_cast<double>(pick(rng, landmarks));
  }

  FLOTILLA_HD static int pick(kernels::EnvRng& rng, int n) {
    const int k = static_cast<int>(rng.uniform() * n);
    return k < n ? k : n - 1;
  }

  // ---- Step ----

  FLOTILLA_HD static void step(const Params& p, StateRef s, kernels::AgentActions actions, float* reward, bool* agent_done,
                               bool& terminated, float& won) {
    double force[kMaxEntities][2];
    double message[kMaxAgents][kMaxComm];
    for (int e = 0; e < p.entities; ++e) force[e][0] = force[e][1] = 0.0;
    for (int a = 0; a < p.agents; ++a) decode_action(p, actions, a, force[a], message[a]);
    // Contact forces between every pair that collides.
    for (int a = 0; a < p.entities; ++a) {
      if (!p.collide[a]) continue;
      for (int b = a + 1; b < p.entities; ++b) {
        if (!p.collide[b] || !(p.movable[a] || p.movable[b])) continue;
        const double dx = pos(s, a, 0) - pos(s, b, 0), dy = pos(s, a, 1) - pos(s, b, 1);
        const double d2 = dx * dx + dy * dy, reach = p.size[a] + p.size[b] + kContactReach;
        // Farther apart than kContactReach past touching, the force is below 1e-18: skipped, and
        // with it the square root, exp and log1p of most pairs.
        if (d2 >= reach * reach || d2 <= 0.0) continue;  // d2 0: coincident centres, no direction
        const double d = sqrt(d2);
        const double x = -(d - (p.size[a] + p.size[b])) / kContactMargin;
        const double softplus = x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));  // logaddexp(0, x)
        const double scale = kContactForce * softplus * kContactMargin / d;
        if (p.movable[a]) force[a][0] += scale * dx, force[a][1] += scale * dy;
        if (p.movable[b]) force[b][0] -= scale * dx, force[b][1] -= scale * dy;
      }
    }
    // MPE2's order (since PettingZoo's 2023 dynamics fix): the position moves with the velocity the
    // entity had before this step; then the velocity is damped, pushed by force / mass * dt
    // (mass 1) and capped.
    for (int e = 0; e < p.entities; ++e) {
      if (!p.movable[e]) continue;
      pos(s, e, 0) += vel(s, e, 0) * kDt;
      pos(s, e, 1) += vel(s, e, 1) * kDt;
      double vx = vel(s, e, 0) * (1 - kDamping) + force[e][0] * kDt;
      double vy = vel(s, e, 1) * (1 - kDamping) + force[e][1] * kDt;
      if (p.max_speed[e] > 0) {
        const double speed = sqrt(vx * vx + vy * vy);
        if (speed > p.max_speed[e]) {
          vx = vx / speed * p.max_speed[e];
          vy = vy / speed * p.max_speed[e];
        }
      }
      vel(s, e, 0) = vx;
      vel(s, e, 1) = vy;
    }
    for (int a = 0; a < p.agents; ++a)
      for (int k = 0; k < p.dim_c; ++k) comm(p, s, a, k) = p.silent[a] ? 0.0 : message[a][k];
    rewards(p, s, reward);
    for (int a = 0; a < p.agents; ++a) agent_done[a] = false;
    terminated = false;  // MPE episodes end at max_cycles only
    won = 0.0f;
  }

  // The agent's movement force (sensitivity included) and message, as MPE2's _set_action.
  FLOTILLA_HD static void decode_action(const Params& p, kernels::AgentActions actions, int a, double* u, double* c) {
    for (int k = 0; k < p.dim_c; ++k) c[k] = 0.0;
    u[0] = u[1] = 0.0;
    const bool moves = p.movable[a];
    if (p.continuous) {
      int offset = 0;
      if (moves) {
        // The differences in float32, as MPE2 takes them from a float32 action.
        u[0] = actions.continuous(a, 2) - actions.continuous(a, 1);
        u[1] = actions.continuous(a, 4) - actions.continuous(a, 3);
        offset = 5;
      }
      if (!p.silent[a])
        for (int k = 0; k < p.dim_c; ++k) c[k] = actions.continuous(a, offset + k);
    } else {
      int64_t act = actions.discrete(a);
      if (moves) {
        const int64_t m = act % 5;
        act /= 5;
        u[0] = m == 1 ? -1.0 : m == 2 ? 1.0 : 0.0;
        u[1] = m == 3 ? -1.0 : m == 4 ? 1.0 : 0.0;
      }
      if (!p.silent[a]) c[act] = 1.0;
    }
    u[0] *= p.accel[a];
    u[1] *= p.accel[a];
  }

  // ---- Rewards ----

  FLOTILLA_HD static double boundary_penalty(double x) {
    if (x < 0.9) return 0.0;
    if (x < 1.0) return (x - 0.9) * 10;
    const double e = exp(2 * x - 2);
    return e < 10.0 ? e : 10.0;
  }

  FLOTILLA_HD static double dist_to_point(StateRef s, int a, double x, double y) {
    const double dx = pos(s, a, 0) - x, dy = pos(s, a, 1) - y;
    return sqrt(dx * dx + dy * dy);
  }

  // Sum of squares of (message of agent a - one-hot landmark color g), crypto's guess error.
  FLOTILLA_HD static double guess_error(const Params& p, StateRef s, int a, int g) {
    double e = 0;
    for (int k = 0; k < p.dim_c; ++k) {
      const double d = comm(p, s, a, k) - (k == g ? 1.0 : 0.0);
      e += d * d;
    }
    return e;
  }
  FLOTILLA_HD static bool silent_message(const Params& p, StateRef s, int a) {
    for (int k = 0; k < p.dim_c; ++k)
      if (comm(p, s, a, k) != 0.0) return false;
    return true;
  }

  // simple_tag and simple_world_comm: adversaries are rewarded for each touch of a good agent,
  // good agents penalized for it and for leaving the arena (world_comm: shaped by distances, and
  // food to reach).
  FLOTILLA_HD static void tag_rewards(const Params& p, StateRef s, float* reward) {
    const int A = p.agents;
    const bool wc = p.scenario == Scenario::WorldComm;
    const double hit = wc ? 5.0 : 10.0;
    for (int a = 0; a < A; ++a) {
      double r = 0;
      if (adversary(p, a)) {
        if (wc) {  // shaped: distance to the nearest good agent
          double best = 1e300;
          for (int g = p.adversaries; g < A; ++g) best = fmin(best, dist(s, g, a));
          r -= 0.1 * best;
        }
        for (int g = p.adversaries; g < A; ++g)
          for (int b = 0; b < p.adversaries; ++b) r += touching(p, s, g, b) ? hit : 0.0;
      } else {
        for (int b = 0; b < p.adversaries; ++b) r -= touching(p, s, b, a) ? hit : 0.0;
        for (int d = 0; d < 2; ++d) r -= (wc ? 2.0 : 1.0) * boundary_penalty(fabs(pos(s, a, d)));
        if (wc) {
          const int first_food = A + p.obstacles;
          double best = 1e300;
          for (int f = first_food; f < first_food + p.food; ++f) {
            r += touching(p, s, a, f) ? 2.0 : 0.0;
            best = fmin(best, dist(s, f, a));
          }
          r -= 0.05 * best;
        }
      }
      reward[a] = static_cast<float>(r);
    }
  }

  FLOTILLA_HD static void rewards(const Params& p, StateRef s, float* reward) {
    const int A = p.agents, L = p.entities - p.agents;
    switch (p.scenario) {
      case Scenario::Simple:
        reward[0] = static_cast<float>(-dist2(s, 0, landmark(p, 0)));
        return;
      case Scenario::Spread: {
        double global = 0;
        for (int l = 0; l < L; ++l) {
          double best = 1e300;  // squared: one square root per landmark
          for (int a = 0; a < A; ++a) {
            const double d2 = dist2(s, a, landmark(p, l));
            best = d2 < best ? d2 : best;
          }
          global -= sqrt(best);
        }
        for (int a = 0; a < A; ++a) {
          double local = 0;
          for (int b = 0; b < A; ++b) local -= (b != a && touching(p, s, a, b)) ? 1.0 : 0.0;
          reward[a] = static_cast<float>(global * (1 - p.local_ratio) + local * p.local_ratio);
        }
        return;
      }
      case Scenario::Tag:
      case Scenario::WorldComm:
        tag_rewards(p, s, reward);
        return;
      case Scenario::Adversary: {
        const int g = landmark(p, goal(p, s, 0));
        double adv = 0, good = 1e300;
        for (int a = 0; a < p.adversaries; ++a) adv += dist(s, a, g);
        for (int a = p.adversaries; a < A; ++a) good = fmin(good, dist(s, a, g));
        for (int a = 0; a < A; ++a) reward[a] = static_cast<float>(adversary(p, a) ? -dist(s, a, g) : adv - good);
        return;
      }
      case Scenario::Push: {
        const int g = landmark(p, goal(p, s, 0));
        double nearest = 1e300;
        for (int a = p.adversaries; a < A; ++a) nearest = fmin(nearest, dist(s, a, g));
        for (int a = 0; a < A; ++a) reward[a] = static_cast<float>(adversary(p, a) ? nearest - dist(s, a, g) : -dist(s, a, g));
        return;
      }
      case Scenario::Reference: {
        // Agent a wants the other agent on landmark goal(a).
        double own[2], mean = 0;
        for (int a = 0; a < 2; ++a) {
          own[a] = -dist(s, 1 - a, landmark(p, goal(p, s, a)));
          mean += own[a] / 2;
        }
        for (int a = 0; a < 2; ++a) reward[a] = static_cast<float>(mean * (1 - p.local_ratio) + own[a] * p.local_ratio);
        return;
      }
      case Scenario::SpeakerListener: {
        const float r = static_cast<float>(-dist2(s, 1, landmark(p, goal(p, s, 0))));
        reward[0] = reward[1] = r;
        return;
      }
      case Scenario::Crypto: {
        // Agents: eve (adversary), bob, alice (the speaker). Bob and eve guess alice's goal.
        const int g = goal(p, s, 0);
        const double eve = silent_message(p, s, 0) ? 0.0 : -guess_error(p, s, 0, g);
        const double bob = silent_message(p, s, 1) ? 0.0 : -guess_error(p, s, 1, g);
        reward[0] = static_cast<float>(eve);
        reward[1] = reward[2] = static_cast<float>(bob - eve);
        return;
      }
    }
  }

  // ---- Observations ----

  struct Out {
    float* p;
    int n = 0;
    FLOTILLA_HD void put(double v) { p[n++] = static_cast<float>(v); }
    FLOTILLA_HD void rel(StateRef s, int e, int from) {
      put(pos(s, e, 0) - pos(s, from, 0));
      put(pos(s, e, 1) - pos(s, from, 1));
    }
    FLOTILLA_HD void vel_of(StateRef s, int e) {
      put(vel(s, e, 0));
      put(vel(s, e, 1));
    }
    FLOTILLA_HD void pos_of(StateRef s, int e) {
      put(pos(s, e, 0));
      put(pos(s, e, 1));
    }
  };

  // The landmark colors MPE2 puts in observations (simple_push and simple_reference).
  FLOTILLA_HD static void push_landmark_color(int l, double* c) {
    c[0] = c[1] = c[2] = 0.1;
    c[l + 1] += 0.8;
  }
  FLOTILLA_HD static void reference_landmark_color(int l, double* c) {
    c[0] = c[1] = c[2] = 0.25;
    c[l] = 0.75;
  }

  // simple_push: an adversary sees every landmark and agent; a good agent also its goal, in color.
  FLOTILLA_HD static void observe_push(const Params& p, StateRef s, int a, Out& o) {
    const int A = p.agents, E = p.entities;
    o.vel_of(s, a);
    if (adversary(p, a)) {
      for (int e = A; e < E; ++e) o.rel(s, e, a);
      for (int b = 0; b < A; ++b)
        if (b != a) o.rel(s, b, a);
      return;
    }
    const int g = goal(p, s, 0);
    o.rel(s, landmark(p, g), a);
    double color[3] = {0.25, 0.25, 0.25};  // a good agent wears its goal's color
    color[g + 1] += 0.5;
    for (double c : color) o.put(c);
    for (int e = A; e < E; ++e) o.rel(s, e, a);
    for (int l = 0; l < E - A; ++l) {
      double c[3];
      push_landmark_color(l, c);
      for (double v : c) o.put(v);
    }
    for (int b = 0; b < A; ++b)
      if (b != a) o.rel(s, b, a);
  }

  FLOTILLA_HD static void observe(const Params& p, StateRef s, int a, float* obs) {
    const int A = p.agents, E = p.entities;
    Out o{obs};
    switch (p.scenario) {
      case Scenario::Simple:
        o.vel_of(s, a);
        for (int e = A; e < E; ++e) o.rel(s, e, a);
        return;
      case Scenario::Spread:
        o.vel_of(s, a);
        o.pos_of(s, a);
        for (int e = A; e < E; ++e) o.rel(s, e, a);
        for (int b = 0; b < A; ++b)
          if (b != a) o.rel(s, b, a);
        for (int b = 0; b < A; ++b)
          if (b != a)
            for (int k = 0; k < p.dim_c; ++k) o.put(comm(p, s, b, k));
        return;
      case Scenario::Tag:
        o.vel_of(s, a);
        o.pos_of(s, a);
        for (int e = A; e < E; ++e) o.rel(s, e, a);
        for (int b = 0; b < A; ++b)
          if (b != a) o.rel(s, b, a);
        for (int b = p.adversaries; b < A; ++b)
          if (b != a) o.vel_of(s, b);
        return;
      case Scenario::Adversary:
        if (!adversary(p, a)) o.rel(s, landmark(p, goal(p, s, 0)), a);
        for (int e = A; e < E; ++e) o.rel(s, e, a);
        for (int b = 0; b < A; ++b)
          if (b != a) o.rel(s, b, a);
        return;
      case Scenario::Push:
        observe_push(p, s, a, o);
        return;
      case Scenario::Reference: {
        o.vel_of(s, a);
        for (int e = A; e < E; ++e) o.rel(s, e, a);
        double c[3];
        reference_landmark_color(goal(p, s, a), c);
        for (double v : c) o.put(v);
        for (int b = 0; b < A; ++b)
          if (b != a)
            for (int k = 0; k < p.dim_c; ++k) o.put(comm(p, s, b, k));
        return;
      }
      case Scenario::SpeakerListener: {
        if (a == 0) {  // the speaker sees the goal's color only
          double c[3] = {0.15, 0.15, 0.15};
          c[goal(p, s, 0)] = 0.65;
          for (double v : c) o.put(v);
          return;
        }
        o.vel_of(s, a);
        for (int e = A; e < E; ++e) o.rel(s, e, a);
        for (int k = 0; k < p.dim_c; ++k) o.put(comm(p, s, 0, k));
        return;
      }
      case Scenario::Crypto: {
        const int g = goal(p, s, 0), key = goal(p, s, 1);
        if (a == 2) {  // alice: goal color and key
          for (int k = 0; k < p.dim_c; ++k) o.put(k == g ? 1.0 : 0.0);
          for (int k = 0; k < p.dim_c; ++k) o.put(k == key ? 1.0 : 0.0);
          return;
        }
        if (a == 1)  // bob also knows the key
          for (int k = 0; k < p.dim_c; ++k) o.put(k == key ? 1.0 : 0.0);
        for (int k = 0; k < p.dim_c; ++k) o.put(comm(p, s, 2, k));
        return;
      }
      case Scenario::WorldComm:
        observe_world_comm(p, s, a, o);
        return;
    }
  }

  FLOTILLA_HD static bool in_any_forest(const Params& p, StateRef s, int a) {
    const int first = p.agents + p.obstacles + p.food;
    for (int f = first; f < first + p.forests; ++f)
      if (touching(p, s, a, f)) return true;
    return false;
  }

  // simple_world_comm: forests hide agents from those outside them; the leader (agent 0) sees all.
  FLOTILLA_HD static void observe_world_comm(const Params& p, StateRef s, int a, Out& o) {
    const int A = p.agents, E = p.entities, first_forest = A + p.obstacles + p.food;
    o.vel_of(s, a);
    o.pos_of(s, a);
    for (int e = A; e < E; ++e) o.rel(s, e, a);
    const bool self_hidden = in_any_forest(p, s, a);
    float vel_out[2 * kMaxAgents];
    int nv = 0;
    for (int b = 0; b < A; ++b) {
      if (b == a) continue;
      bool same_forest = false;
      for (int f = first_forest; f < first_forest + p.forests; ++f)
        same_forest |= touching(p, s, a, f) && touching(p, s, b, f);
      const bool visible = same_forest || (!self_hidden && !in_any_forest(p, s, b)) || a == 0;
      o.put(visible ? pos(s, b, 0) - pos(s, a, 0) : 0.0);
      o.put(visible ? pos(s, b, 1) - pos(s, a, 1) : 0.0);
      if (!adversary(p, b)) {
        vel_out[nv++] = static_cast<float>(visible ? vel(s, b, 0) : 0.0);
        vel_out[nv++] = static_cast<float>(visible ? vel(s, b, 1) : 0.0);
      }
    }
    const bool good = !adversary(p, a);
    if (good) {  // good agents: forests, then the other good agents' velocities
      for (int f = first_forest; f < first_forest + p.forests; ++f) o.put(touching(p, s, a, f) ? 1.0 : -1.0);
      for (int k = 0; k < nv; ++k) o.put(vel_out[k]);
      return;
    }
    for (int k = 0; k < nv; ++k) o.put(vel_out[k]);
    for (int f = first_forest; f < first_forest + p.forests; ++f) o.put(touching(p, s, a, f) ? 1.0 : -1.0);
    for (int k = 0; k < p.dim_c; ++k) o.put(comm(p, s, 0, k));
  }

  // PettingZoo's state(): every agent's observation, in agent order.
  FLOTILLA_HD static void global_state(const Params& p, StateRef, const float* obs, int obs_stride, float* out) {
    int offset = 0;
    for (int a = 0; a < p.agents; ++a)
      for (int k = 0; k < p.obs_dim[a]; ++k) out[offset++] = obs[a * obs_stride + k];
  }

  FLOTILLA_HD static void available(const Params& p, StateRef, int a, bool* avail) {
    // Agents with fewer actions than the widest one cannot take the padding actions.
    for (int k = 0; k < p.avail_dim; ++k) avail[k] = p.continuous || k < p.num_actions[a];
  }

  // Host only (envs/mpe/mpe.cpp): positions, velocities, messages and goals from JSON; an entity
  // listed without p_vel or c gets zeros, as after a reset; entities not listed keep their state.
  static void set_state_json(const Params& p, StateRef s, const std::string& json);
};

}  // namespace flotilla::envs::mpe
