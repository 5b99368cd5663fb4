// Registration of the MPE scenarios with MPE2's names, constructor arguments and defaults.
#include "envs/mpe/mpe.hpp"

#include <nlohmann/json.hpp>

#include <limits>

#include "core/error.hpp"
#include "envs/batched_multi_agent_env.hpp"
#include "envs/init_state.hpp"

namespace flotilla::envs {

#if FLOTILLA_WITH_CUDA
void install_mpe_cuda();  // envs/mpe/mpe_cuda.cu
#endif

namespace mpe {
namespace {

struct Built {
  Params params;
  MultiAgentSpec spec;
};

// Adds an agent or landmark with MPE2's properties; returns its entity index.
struct WorldBuilder {
  Params p;
  std::vector<std::string> names;
  int add_agent(std::string name, double size, bool collide, bool silent, double accel = 5.0, double max_speed = 0,
                bool movable = true) {
    const int a = p.agents++;
    p.size[a] = size;
    p.collide[a] = collide;
    p.silent[a] = silent;
    p.accel[a] = accel;
    p.max_speed[a] = max_speed;
    p.movable[a] = movable;
    names.push_back(std::move(name));
    return a;
  }
};

void check_count(const core::ConfigView* v, const char* key, int value, int low, int high) {
  if (value >= low && value <= high) return;
  const std::string msg = std::string(key) + " must be between " + std::to_string(low) + " and " +
                          std::to_string(high) + ", got " + std::to_string(value);
  if (v) v->fail(key, msg);
  throw ConfigError(msg);
}

int read_int(const core::ConfigView* v, const char* key, int fallback, int low, int high) {
  const int value = v ? v->get<int>(key, fallback) : fallback;
  check_count(v, key, value, low, high);
  return value;
}

// The agents of a scenario (with its constructor arguments from `v`); returns its landmark count.
int add_agents(Scenario scenario, const core::ConfigView* v, WorldBuilder& w) {
  Params& p = w.p;
  auto local_ratio = [&] {
    const double r = v ? v->get<double>("local_ratio", 0.5, core::in_range(0.0, 1.0)) : 0.5;
    p.local_ratio = static_cast<float>(r);
  };
  switch (scenario) {
    case Scenario::Simple:
      w.add_agent("agent_0", 0.05, false, true);
      return 1;
    case Scenario::Spread: {
      const int n = read_int(v, "N", 3, 1, kMaxAgents);
      local_ratio();
      for (int i = 0; i < n; ++i) w.add_agent("agent_" + std::to_string(i), 0.15, true, true);
      return n;
    }
    case Scenario::Tag: {
      const int good = read_int(v, "num_good", 1, 1, kMaxAgents), adv = read_int(v, "num_adversaries", 3, 1, kMaxAgents);
      check_count(v, "num_good", good + adv, 2, kMaxAgents);
      const int obstacles = read_int(v, "num_obstacles", 2, 0, 16);
      for (int i = 0; i < adv; ++i) w.add_agent("adversary_" + std::to_string(i), 0.075, true, true, 3.0, 1.0);
      for (int i = 0; i < good; ++i) w.add_agent("agent_" + std::to_string(i), 0.05, true, true, 4.0, 1.3);
      p.adversaries = adv;
      return obstacles;
    }
    case Scenario::Adversary: {
      const int n = read_int(v, "N", 2, 1, kMaxAgents - 1);
      w.add_agent("adversary_0", 0.15, false, true);
      for (int i = 0; i < n; ++i) w.add_agent("agent_" + std::to_string(i), 0.15, false, true);
      p.adversaries = 1;
      return n;
    }
    case Scenario::Push:
      w.add_agent("adversary_0", 0.05, true, true);
      w.add_agent("agent_0", 0.05, true, true);
      p.adversaries = 1;
      return 2;
    case Scenario::Reference:
      local_ratio();
      p.dim_c = 10;
      w.add_agent("agent_0", 0.05, false, false);
      w.add_agent("agent_1", 0.05, false, false);
      return 3;
    case Scenario::SpeakerListener:
      p.dim_c = 3;
      w.add_agent("speaker_0", 0.075, false, false, 5.0, 0, false);
      w.add_agent("listener_0", 0.075, false, true);
      return 3;
    case Scenario::Crypto:
      p.dim_c = 4;
      w.add_agent("eve_0", 0.05, false, false, 5.0, 0, false);
      w.add_agent("bob_0", 0.05, false, false, 5.0, 0, false);
      w.add_agent("alice_0", 0.05, false, false, 5.0, 0, false);
      p.adversaries = 1;
      return 2;
    case Scenario::WorldComm: {
      p.dim_c = 4;
      const int good = read_int(v, "num_good", 2, 1, kMaxAgents), adv = read_int(v, "num_adversaries", 4, 1, kMaxAgents);
      check_count(v, "num_good", good + adv, 2, kMaxAgents);
      p.obstacles = read_int(v, "num_obstacles", 1, 0, 8);
      p.food = read_int(v, "num_food", 2, 1, 8);
      p.forests = read_int(v, "num_forests", 2, 0, 8);
      for (int i = 0; i < adv; ++i)
        w.add_agent(i == 0 ? "leadadversary_0" : "adversary_" + std::to_string(i - 1), 0.075, true, i != 0, 3.0, 1.0);
      for (int i = 0; i < good; ++i) w.add_agent("agent_" + std::to_string(i), 0.045, true, true, 4.0, 1.3);
      p.adversaries = adv;
      return p.obstacles + p.food + p.forests;
    }
  }
  return 0;
}

// Landmarks follow the agents: fixed, of the scenario's sizes, some of them obstacles.
void add_landmarks(Scenario scenario, int landmarks, Params& p) {
  p.entities = p.agents + landmarks;
  if (p.entities > kMaxEntities)
    throw ConfigError("mpe: " + std::to_string(p.entities) + " entities is more than the " + std::to_string(kMaxEntities) +
                      " this build supports");
  for (int l = 0; l < landmarks; ++l) {
    const int e = p.agents + l;
    p.movable[e] = false;
    p.max_speed[e] = 0;
    switch (scenario) {
      case Scenario::Tag: p.size[e] = 0.2, p.collide[e] = true; break;
      case Scenario::Adversary: p.size[e] = 0.08; break;
      case Scenario::SpeakerListener: p.size[e] = 0.04; break;
      case Scenario::WorldComm:
        p.size[e] = l < p.obstacles ? 0.2 : l < p.obstacles + p.food ? 0.03 : 0.3;
        p.collide[e] = l < p.obstacles;
        break;
      default: p.size[e] = 0.05; break;
    }
  }
}

Built build(Scenario scenario, const core::ConfigView* v) {
  WorldBuilder w;
  Params& p = w.p;
  p.scenario = scenario;
  p.agents = 0;
  p.continuous = v ? v->get<bool>("continuous_actions", false) : false;
  const int max_cycles = read_int(v, "max_cycles", 25, 1, 1'000'000);
  add_landmarks(scenario, add_agents(scenario, v, w), p);

  // Observation widths: observe() once on a zero state counts what each agent writes.
  std::vector<double> zeros(Mpe::state_vars(p), 0.0);
  const double inf = std::numeric_limits<double>::infinity();
  MultiAgentSpec spec;
  spec.max_episode_steps = max_cycles;
  int64_t state_dim = 0;
  for (int a = 0; a < p.agents; ++a) {
    float probe[512] = {};
    // Writes past the agent's width stay at a sentinel, which finds the width.
    for (float& x : probe) x = std::numeric_limits<float>::quiet_NaN();
    Mpe::observe(p, kernels::StateRef{zeros.data(), 1}, a, probe);
    int n = 0;
    while (n < 512 && !std::isnan(probe[n])) ++n;
    p.obs_dim[a] = n;
    state_dim += n;
    const int moves = p.movable[a] ? 5 : (p.continuous ? 0 : 1);
    p.num_actions[a] = p.continuous ? moves + (p.silent[a] ? 0 : p.dim_c) : moves * (p.silent[a] ? 1 : p.dim_c);
    Space action = p.continuous ? Space::box(std::vector<double>(p.num_actions[a], 0.0), std::vector<double>(p.num_actions[a], 1.0))
                                : Space::discrete(p.num_actions[a]);
    spec.agents.push_back({w.names[a], Space::box(std::vector<double>(n, -inf), std::vector<double>(n, inf)), action});
  }
  spec.state = Space::box(std::vector<double>(state_dim, -inf), std::vector<double>(state_dim, inf));
  p.avail_dim = static_cast<int32_t>(spec.avail_dim());
  return {p, spec};
}

struct ScenarioInfo {
  const char* name;
  Scenario scenario;
  const char* summary;
};

constexpr ScenarioInfo kScenarios[] = {
    {"simple", Scenario::Simple, "one agent reaches a landmark; reward -squared distance"},
    {"simple_spread", Scenario::Spread, "N agents cover N landmarks without colliding (cooperative)"},
    {"simple_tag", Scenario::Tag, "slower adversaries chase faster good agents around obstacles"},
    {"simple_adversary", Scenario::Adversary, "good agents hide which landmark is the goal from an adversary"},
    {"simple_push", Scenario::Push, "an adversary pushes the good agent away from its goal landmark"},
    {"simple_reference", Scenario::Reference, "two agents each tell the other where to go (cooperative, talking)"},
    {"simple_speaker_listener", Scenario::SpeakerListener, "a speaker guides a listener to the goal landmark"},
    {"simple_crypto", Scenario::Crypto, "alice sends bob a message with a shared key; eve eavesdrops"},
    {"simple_world_comm", Scenario::WorldComm, "a leader coordinates predators; prey eat food and hide in forests"},
};

void read_pair(const nlohmann::json& j, const std::string& where, double& x, double& y) {
  if (!j.is_array() || j.size() != 2) throw ConfigError("--init-state: " + where + " must be [x, y], got " + j.dump());
  x = init_state::number(j[0], where + "[0]");
  y = init_state::number(j[1], where + "[1]");
}

}  // namespace

void Mpe::set_state_json(const Params& p, StateRef s, const std::string& text) {
  const nlohmann::json j = init_state::parse(text);
  const std::string shape =
      R"({"agents":[{"p_pos":[x,y],"p_vel":[x,y],"c":[...]},...],"landmarks":[{"p_pos":[x,y]},...],"goal":i,"goals":[i,j]})";
  if (!j.is_object()) throw ConfigError("--init-state must be a JSON object " + shape);
  for (const auto& [key, value] : j.items())
    if (key != "agents" && key != "landmarks" && key != "goal" && key != "goals")
      throw ConfigError("--init-state: unknown key '" + key + "' (expected " + shape + ")");
  const int L = p.entities - p.agents;
  auto entities = [&](const char* key, int count, int first, bool agents) {
    if (!j.contains(key)) return;
    const nlohmann::json& list = j[key];
    if (!list.is_array() || static_cast<int>(list.size()) != count)
      throw ConfigError(std::string("--init-state: '") + key + "' must list " + std::to_string(count) + " entries, got " +
                        list.dump());
    for (int i = 0; i < count; ++i) {
      const std::string where = std::string(key) + "[" + std::to_string(i) + "]";
      if (!list[i].is_object()) throw ConfigError("--init-state: " + where + " must be an object");
      const int e = first + i;
      vel(s, e, 0) = vel(s, e, 1) = 0.0;  // what an entry leaves out is as after a reset
      if (agents)
        for (int c = 0; c < p.dim_c; ++c) comm(p, s, e, c) = 0.0;
      for (const auto& [k, value] : list[i].items()) {
        if (k == "p_pos") read_pair(value, where + ".p_pos", pos(s, e, 0), pos(s, e, 1));
        else if (k == "p_vel" && agents) read_pair(value, where + ".p_vel", vel(s, e, 0), vel(s, e, 1));
        else if (k == "c" && agents) {
          if (!value.is_array() || static_cast<int>(value.size()) != p.dim_c)
            throw ConfigError("--init-state: " + where + ".c must hold " + std::to_string(p.dim_c) + " numbers");
          for (int c = 0; c < p.dim_c; ++c) comm(p, s, e, c) = init_state::number(value[c], where + ".c");
        } else {
          throw ConfigError("--init-state: unknown key '" + k + "' in " + where);
        }
      }
    }
  };
  entities("agents", p.agents, 0, true);
  entities("landmarks", L, p.agents, false);
  double* goals = &s[4 * p.entities + p.agents * p.dim_c];
  auto set_goal = [&](int slot, const nlohmann::json& g, const std::string& where) {
    if (!g.is_number_integer() || g.get<int>() < 0 || g.get<int>() >= L)
      throw ConfigError("--init-state: " + where + " must be a landmark index from 0 to " + std::to_string(L - 1) +
                        ", got " + g.dump());
    goals[slot] = g.get<int>();
  };
  if (j.contains("goal")) set_goal(0, j["goal"], "goal");
  if (j.contains("goals")) {
    if (!j["goals"].is_array() || j["goals"].size() != 2) throw ConfigError("--init-state: goals must be [i, j]");
    set_goal(0, j["goals"][0], "goals[0]");
    set_goal(1, j["goals"][1], "goals[1]");
  }
}

}  // namespace mpe

void register_mpe_envs() {
  for (const auto& info : mpe::kScenarios) {
    const mpe::Scenario scenario = info.scenario;
    MultiAgentSpec spec = mpe::build(scenario, nullptr).spec;
    spec.id = std::string("mpe/") + info.name;
    spec.summary = info.summary;
    const std::string id = spec.id, summary = spec.summary;
    register_multi_agent_env(spec, [scenario, id, summary](const EnvOptions& options, const core::ConfigView* params) {
      mpe::Built b = mpe::build(scenario, params);
      b.spec.id = id;
      b.spec.summary = summary;
      return std::unique_ptr<MultiAgentVecEnv>(
          std::make_unique<BatchedMultiAgentEnv<mpe::Mpe>>(b.spec, b.params, options));
    });
  }
#if FLOTILLA_WITH_CUDA
  install_mpe_cuda();
#endif
}

}  // namespace flotilla::envs
