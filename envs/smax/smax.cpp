// Registration of the SMAX-style scenarios, named as SMAC's maps.
#include "envs/smax/smax.hpp"

#include <nlohmann/json.hpp>

#include <limits>
#include <vector>

#include "core/error.hpp"
#include "envs/batched_multi_agent_env.hpp"
#include "envs/init_state.hpp"

namespace flotilla::envs {

#if FLOTILLA_WITH_CUDA
void install_smax_cuda();  // envs/smax/smax_cuda.cu
#endif

namespace smax {
namespace {

struct ScenarioInfo {
  const char* name;
  std::vector<std::pair<int, UnitType>> agents, enemies;  // (count, type)
  const char* summary;
};

const std::vector<ScenarioInfo>& scenarios() {
  static const std::vector<ScenarioInfo> list = {
      {"3m", {{3, Marine}}, {{3, Marine}}, "3 marines against 3 marines"},
      {"8m", {{8, Marine}}, {{8, Marine}}, "8 marines against 8 marines"},
      {"2s3z", {{2, Stalker}, {3, Zealot}}, {{2, Stalker}, {3, Zealot}}, "2 stalkers and 3 zealots on each side"},
      {"3s5z", {{3, Stalker}, {5, Zealot}}, {{3, Stalker}, {5, Zealot}}, "3 stalkers and 5 zealots on each side"},
      {"5m_vs_6m", {{5, Marine}}, {{6, Marine}}, "5 marines against 6 marines"},
      {"10m_vs_11m", {{10, Marine}}, {{11, Marine}}, "10 marines against 11 marines"},
      {"3s_vs_5z", {{3, Stalker}}, {{5, Zealot}}, "3 stalkers kite 5 zealots"},
  };
  return list;
}

const char* type_name(int t) {
  static const char* names[] = {"marine", "marauder", "stalker", "zealot", "zergling", "hydralisk"};
  return names[t];
}

Params build(const ScenarioInfo& info, int32_t episode_limit) {
  Params p;
  p.agents = p.enemies = 0;
  int u = 0;
  for (const auto& [count, type] : info.agents)
    for (int k = 0; k < count; ++k, ++p.agents) p.type[u++] = type;
  for (const auto& [count, type] : info.enemies)
    for (int k = 0; k < count; ++k, ++p.enemies) p.type[u++] = type;
  for (int& slot : p.type_slot) slot = -1;
  p.type_count = 0;
  for (int k = 0; k < u; ++k)
    if (p.type_slot[p.type[k]] < 0) p.type_slot[p.type[k]] = p.type_count++;
  p.max_reward = kWinBonus;
  for (int e = p.agents; e < u; ++e) {
    const UnitStats st = stats(p.type[e]);
    p.max_reward += st.health + st.shield + kKillBonus;
  }
  p.episode_limit = episode_limit;
  return p;
}

MultiAgentSpec spec_of(const ScenarioInfo& info, const Params& p) {
  const double inf = std::numeric_limits<double>::infinity();
  auto box = [&](int n) { return Space::box(std::vector<double>(n, -inf), std::vector<double>(n, inf)); };
  MultiAgentSpec spec;
  spec.id = std::string("smax/") + info.name;
  spec.summary = info.summary;
  spec.max_episode_steps = p.episode_limit;
  spec.has_outcome = true;
  for (int a = 0; a < p.agents; ++a)
    spec.agents.push_back({std::string(type_name(p.type[a])) + "_" + std::to_string(a), box(Smax::obs_dim(p)),
                           Space::discrete(kMoves + p.enemies)});
  spec.state = box(Smax::state_dim(p));
  return spec;
}

}  // namespace

void Smax::set_state_json(const Params& p, StateRef s, const std::string& text) {
  const nlohmann::json j = init_state::parse(text);
  const std::string shape = R"({"units":[{"pos":[x,y],"health":h,"shield":s,"cooldown":c},...]} (agents, then enemies))";
  if (!j.is_object() || j.size() != 1 || !j.contains("units") || !j["units"].is_array() ||
      static_cast<int>(j["units"].size()) != units(p))
    throw ConfigError("--init-state for " + std::to_string(p.agents) + " agents and " + std::to_string(p.enemies) +
                      " enemies takes " + shape + " with " + std::to_string(units(p)) + " units");
  for (int u = 0; u < units(p); ++u) {
    const nlohmann::json& unit = j["units"][u];
    const std::string where = "units[" + std::to_string(u) + "]";
    if (!unit.is_object()) throw ConfigError("--init-state: " + where + " must be an object");
    const UnitStats st = stats(p.type[u]);
    for (const auto& [key, value] : unit.items()) {
      if (key == "pos") {
        if (!value.is_array() || value.size() != 2) throw ConfigError("--init-state: " + where + ".pos must be [x, y]");
        var(s, u, 0) = init_state::number(value[0], where + ".pos[0]");
        var(s, u, 1) = init_state::number(value[1], where + ".pos[1]");
      } else if (key == "health") {
        var(s, u, 2) = std::min(st.health, init_state::number(value, where + ".health"));
      } else if (key == "shield") {
        var(s, u, 3) = std::min(st.shield, init_state::number(value, where + ".shield"));
      } else if (key == "cooldown") {
        var(s, u, 4) = init_state::number(value, where + ".cooldown");
      } else {
        throw ConfigError("--init-state: unknown key '" + key + "' in " + where + " (expected " + shape + ")");
      }
    }
  }
}

}  // namespace smax

void register_smax_envs() {
  for (const auto& info : smax::scenarios()) {
    const smax::Params defaults = smax::build(info, 100);
    register_multi_agent_env(smax::spec_of(info, defaults), [&info](const EnvOptions& options, const core::ConfigView*) {
      const smax::Params p = smax::build(info, options.max_episode_steps > 0 ? options.max_episode_steps : 100);
      return std::unique_ptr<MultiAgentVecEnv>(
          std::make_unique<BatchedMultiAgentEnv<smax::Smax>>(smax::spec_of(info, p), p, options));
    });
  }
#if FLOTILLA_WITH_CUDA
  install_smax_cuda();
#endif
}

}  // namespace flotilla::envs
