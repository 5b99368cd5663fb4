#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "controller/cli/commands.hpp"
#include "controller/cli/json32.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/multi_agent.hpp"
#include "envs/registry.hpp"

namespace flotilla::controller {
namespace {

// Shortest decimal text that reads back as the same float32.
// A step's line: its number and the action(s) taken; the caller adds what the env returned.
Json32 step_line(size_t t, const char* action_key, const nlohmann::json& action) {
  Json32 line = {{"t", t}};
  line[action_key] = Json32::parse(action.dump());
  return line;
}

nlohmann::json parse_json(const std::string& text, const std::string& what) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(what + " is not valid JSON: " + e.what());
  }
}

// A JSON array of actions, or one JSON action per line.
std::vector<nlohmann::json> read_actions(const TraceArgs& args) {
  std::string text = args.actions;
  std::string what = "--actions";
  if (!args.actions_file.empty()) {
    text = core::read_file(args.actions_file);
    what = "--actions-file " + args.actions_file;
  }
  if (text.empty()) return {};
  try {
    nlohmann::json j = nlohmann::json::parse(text);
    if (!j.is_array()) throw ConfigError(what + ": expected a JSON array of actions");
    return std::vector<nlohmann::json>(j.begin(), j.end());
  } catch (const nlohmann::json::exception&) {
    std::vector<nlohmann::json> out;
    std::istringstream in(text);
    std::string line;
    for (int n = 1; std::getline(in, line); ++n)
      if (line.find_first_not_of(" \t\r") != std::string::npos) out.push_back(parse_json(line, what + " line " + std::to_string(n)));
    return out;
  }
}

// One step's action as a [1] or [1, k] tensor; `t` names the step in errors.
at::Tensor action_tensor(const envs::Space& space, const nlohmann::json& a, int64_t t) {
  const std::string where = "action for step " + std::to_string(t);
  if (space.kind == envs::Space::Kind::Discrete) {
    nlohmann::json v = a.is_array() && a.size() == 1 ? a[0] : a;
    if (!v.is_number_integer()) throw ConfigError(where + ": expected an integer for " + space.str() + ", got " + a.dump());
    return at::full({1}, v.get<int64_t>(), at::kLong);
  }
  nlohmann::json list = a.is_array() ? a : nlohmann::json::array({a});
  if (static_cast<int64_t>(list.size()) != space.numel())
    throw ConfigError(where + ": expected " + std::to_string(space.numel()) + " values for " + space.str() + ", got " + a.dump());
  if (space.kind == envs::Space::Kind::MultiDiscrete) {
    std::vector<int64_t> v;
    for (const auto& x : list) {
      if (!x.is_number_integer()) throw ConfigError(where + ": expected integers for " + space.str() + ", got " + a.dump());
      v.push_back(x.get<int64_t>());
    }
    return at::tensor(v, at::kLong).reshape({1, -1});
  }
  std::vector<float> v;
  for (const auto& x : list) {
    if (!x.is_number()) throw ConfigError(where + ": expected numbers for " + space.str() + ", got " + a.dump());
    v.push_back(x.get<float>());
  }
  return at::tensor(v, at::kFloat).reshape({1, -1});
}

// Steps 1 .. actions.size(): `step(t)` takes step t and prints its line, returning whether the
// episode ended. An invalid action is the user's input (a ConfigError), not a failure of the run.
void run_trace(const std::vector<nlohmann::json>& actions, const std::function<bool(size_t)>& step) {
  for (size_t t = 1; t <= actions.size(); ++t) {
    bool ended = false;
    try {
      ended = step(t);
    } catch (const ConfigError&) {
      throw;
    } catch (const Error& e) {
      throw ConfigError("step " + std::to_string(t) + ": " + e.what());
    }
    if (ended) {
      if (t < actions.size())
        std::cerr << "env trace: the episode ended at step " << t << "; " << actions.size() - t
                  << " remaining actions were not used\n";
      return;
    }
  }
}

// The experiment-style params section from --param key=value pairs.
core::Config params_config(const std::vector<std::string>& pairs) {
  std::string yaml;
  for (const auto& kv : pairs) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw ConfigError("--param takes key=value, got '" + kv + "'");
    yaml += kv.substr(0, eq) + ": " + kv.substr(eq + 1) + "\n";
  }
  return core::Config(core::ConfigTree::load_string(yaml.empty() ? "{}" : yaml, "--param"));
}

// One step's actions for every agent as a [1, A] or [1, A, k] tensor.
at::Tensor agent_actions(const envs::MultiAgentSpec& spec, const nlohmann::json& a, int64_t t) {
  const std::string where = "actions for step " + std::to_string(t);
  if (!a.is_array() || a.size() != spec.agents.size())
    throw ConfigError(where + ": expected a list of " + std::to_string(spec.agents.size()) + " per-agent actions, got " +
                      a.dump());
  if (spec.discrete()) {
    std::vector<int64_t> v;
    for (const auto& x : a) {
      if (!x.is_number_integer()) throw ConfigError(where + ": expected integers, got " + a.dump());
      v.push_back(x.get<int64_t>());
    }
    return at::tensor(v, at::kLong).reshape({1, -1});
  }
  const int64_t k = spec.action_dim();
  std::vector<float> v(spec.agents.size() * k, 0.0f);
  for (size_t i = 0; i < a.size(); ++i) {
    const int64_t width = spec.agents[i].action.numel();
    if (!a[i].is_array() || static_cast<int64_t>(a[i].size()) != width)
      throw ConfigError(where + ": agent '" + spec.agents[i].name + "' takes " + std::to_string(width) + " numbers (" +
                        spec.agents[i].action.str() + "), got " + a[i].dump());
    for (int64_t j = 0; j < width; ++j) {
      if (!a[i][j].is_number()) throw ConfigError(where + ": expected numbers, got " + a[i].dump());
      v[i * k + j] = a[i][j].get<float>();
    }
  }
  return at::tensor(v, at::kFloat).reshape({1, static_cast<int64_t>(spec.agents.size()), k});
}

int multi_agent_trace(const TraceArgs& args) {
  core::Config params = params_config(args.params);
  core::ConfigView view = params.root();
  auto env = envs::make_multi_agent_env(args.env, envs::EnvOptions{}, &view);
  params.check_unknown_keys();
  const envs::MultiAgentSpec& spec = env->spec();
  env->reset(args.seed);
  if (!args.init_state.empty()) env->set_state_json(0, args.init_state);
  auto agents_json = [&](const at::Tensor& obs, bool with_reward, const at::Tensor& avail) {
    Json32 out = Json32::object();
    for (int a = 0; a < env->num_agents(); ++a) {
      const at::Tensor row = obs[0][a].to(at::kFloat).contiguous();  // envs may store bytes
      Json32 agent = {{"obs", f32_list(row.data_ptr<float>(), spec.agents[a].observation.numel())}};
      if (with_reward) agent["reward"] = env->reward()[0][a].item<float>();
      if (spec.strict_masks) {  // turn-based: the moves legal now, as the original lists them
        std::vector<int64_t> legal;
        const at::Tensor mask = avail[0][a];
        for (int64_t k = 0; k < mask.size(0); ++k)
          if (mask[k].item<bool>()) legal.push_back(k);
        agent["legal"] = legal;
      }
      out[spec.agents[a].name] = agent;
    }
    return out;
  };
  std::vector<nlohmann::json> actions = read_actions(args);
  std::cout << Json32{{"t", 0}, {"agents", agents_json(env->obs(), false, env->avail_actions())}}.dump() << "\n";
  run_trace(actions, [&](size_t t) {
    env->step(agent_actions(spec, actions[t - 1], static_cast<int64_t>(t)));
    const bool terminated = env->terminated()[0].item<bool>(), truncated = env->truncated()[0].item<bool>();
    const bool ended = terminated || truncated;
    const at::Tensor& obs = ended ? env->final_obs() : env->obs();
    const at::Tensor& avail = ended ? env->final_avail_actions() : env->avail_actions();
    Json32 line = step_line(t, "actions", actions[t - 1]);
    line["agents"] = agents_json(obs, true, avail);
    line["terminated"] = terminated;
    line["truncated"] = truncated;
    std::cout << line.dump() << "\n";
    return terminated || truncated;
  });
  return 0;
}

}  // namespace

int env_list(bool json) {
  auto specs = envs::env_specs();
  if (json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const auto& s : specs) {
      nlohmann::ordered_json e = {{"id", s.id},
                                  {"observation_space", s.observation_space.str()},
                                  {"action_space", s.action_space.str()},
                                  {"max_episode_steps", s.max_episode_steps},
                                  {"state", s.state_layout},
                                  {"summary", s.summary}};
      if (envs::is_multi_agent(s.id)) {
        const envs::MultiAgentSpec& m = envs::multi_agent_spec(s.id);
        e["agents"] = nlohmann::ordered_json::array();
        for (const auto& a : m.agents)
          e["agents"].push_back({{"name", a.name}, {"observation_space", a.observation.str()}, {"action_space", a.action.str()}});
        e["global_state_space"] = m.state.str();
        e.erase("state");
      }
      out.push_back(e);
    }
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  size_t w = 2;
  for (const auto& s : specs) w = std::max(w, s.id.size());
  const std::string pad(w + 2, ' ');
  for (const auto& s : specs) {
    std::cout << std::left << std::setw(static_cast<int>(w) + 2) << s.id << s.summary << "\n";
    if (envs::is_multi_agent(s.id)) {
      const envs::MultiAgentSpec& m = envs::multi_agent_spec(s.id);
      for (const auto& a : m.agents)
        std::cout << pad << "agent " << a.name << ": observations " << a.observation.str() << ", actions " << a.action.str()
                  << "\n";
      std::cout << pad << "global state " << m.state.str() << "\n";
    } else {
      std::cout << pad << "observations " << s.observation_space.str() << "\n" << pad << "actions      " << s.action_space.str() << "\n";
    }
    std::cout << pad << "max steps    " << s.max_episode_steps << "\n";
  }
  return 0;
}

int env_trace(const TraceArgs& args) {
  const envs::EnvSpec& spec = envs::env_spec(args.env);
  if (envs::is_multi_agent(args.env)) return multi_agent_trace(args);
  if (!args.params.empty()) throw ConfigError("--param is for multi-agent envs; " + spec.id + " takes none");
  auto env = envs::make_env(args.env, envs::EnvOptions{});
  env->reset(args.seed);
  if (!args.init_state.empty()) {
    nlohmann::json s = parse_json(args.init_state, "--init-state");
    std::string layout;
    for (const auto& n : spec.state_layout) layout += (layout.empty() ? "" : ", ") + n;
    if (!s.is_array() || s.size() != spec.state_layout.size())
      throw ConfigError("--init-state for " + spec.id + " takes " + std::to_string(spec.state_layout.size()) +
                        " numbers [" + layout + "], got " + s.dump());
    std::vector<double> values;
    for (const auto& v : s) {
      if (!v.is_number()) throw ConfigError("--init-state: expected numbers [" + layout + "], got " + s.dump());
      values.push_back(v.get<double>());
    }
    env->set_state(0, values);
  }
  std::vector<nlohmann::json> actions = read_actions(args);
  const int64_t obs_dim = env->obs().size(1);
  std::cout << Json32{{"t", 0}, {"obs", f32_list(env->obs().data_ptr<float>(), obs_dim)}}.dump() << "\n";
  run_trace(actions, [&](size_t t) {
    env->step(action_tensor(spec.action_space, actions[t - 1], static_cast<int64_t>(t)));
    const bool terminated = env->terminated()[0].item<bool>(), truncated = env->truncated()[0].item<bool>();
    // On an episode's end the env has already reset; the step's own observation is final_obs.
    const at::Tensor& obs = terminated || truncated ? env->final_obs() : env->obs();
    Json32 line = step_line(t, "action", actions[t - 1]);
    line["obs"] = f32_list(obs.data_ptr<float>(), obs_dim);
    line["reward"] = env->reward()[0].item<float>();
    line["terminated"] = terminated;
    line["truncated"] = truncated;
    std::cout << line.dump() << "\n";
    return terminated || truncated;
  });
  return 0;
}

}  // namespace flotilla::controller
