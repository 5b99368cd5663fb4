#include "envs/registry.hpp"

#include <map>
#include <mutex>

#include "core/error.hpp"

namespace flotilla::envs {

void register_classic_envs();  // envs/classic/classic.cpp
void register_mpe_envs();      // envs/mpe/mpe.cpp
void register_smax_envs();     // envs/smax/smax.cpp

namespace {

struct Entry {
  EnvSpec spec;
  EnvFactory factory;
};

std::map<std::string, Entry>& entries() {
  static std::map<std::string, Entry> map;
  return map;
}

// Built-in envs join on first use, so static libraries need no registration tricks.
std::map<std::string, Entry>& registry() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_classic_envs();
    register_mpe_envs();
    register_smax_envs();
  });
  return entries();
}

}  // namespace

void register_env(EnvSpec spec, EnvFactory factory) {
  std::string id = spec.id;
  entries()[id] = Entry{std::move(spec), std::move(factory)};
}

std::vector<EnvSpec> env_specs() {
  std::vector<EnvSpec> out;
  for (const auto& [id, e] : registry()) out.push_back(e.spec);
  return out;
}

const EnvSpec& env_spec(const std::string& id) {
  auto& map = registry();
  auto it = map.find(id);
  if (it != map.end()) return it->second.spec;
  std::vector<std::string> ids;
  std::string known;
  for (const auto& [k, e] : map) {
    ids.push_back(k);
    known += (known.empty() ? "" : ", ") + k;
  }
  std::string hint = core::closest_match(id, ids);
  throw ConfigError("unknown env id '" + id + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?") +
                    " (known: " + known + ")");
}

std::unique_ptr<VecEnv> make_env(const std::string& id, const EnvOptions& options, const core::ConfigView* params) {
  env_spec(id);  // a clear error for an unknown id
  return registry().at(id).factory(options, params);
}

std::unique_ptr<VecEnv> make_env(const core::ConfigView& env) {
  const std::string id = env.require<std::string>("id");
  try {
    env_spec(id);
  } catch (const ConfigError& e) {
    env.fail("id", e.what());
  }
  core::ConfigView params = env.section("params");
  return make_env(id, read_env_options(env), &params);
}

EnvSpec env_spec(const core::ConfigView& env) {
  const std::string id = env.require<std::string>("id");
  try {
    env_spec(id);
  } catch (const ConfigError& e) {
    env.fail("id", e.what());
  }
  EnvOptions one = read_env_options(env);
  one.num_envs = 1;
  one.threads = 1;
  core::ConfigView params = env.section("params");
  return make_env(id, one, &params)->spec();
}

EnvOptions read_env_options(const core::ConfigView& env) {
  EnvOptions o;
  o.num_envs = env.get<int64_t>("num_envs", 8, core::at_least<int64_t>(1));
  o.threads = env.get<int>("threads", 1, core::in_range(1, 256));
  o.backend = env.choice("backend", "cpu", {"cpu", "cuda"});
  o.max_episode_steps = env.get<int>("max_episode_steps", 0, core::at_least(0));
  return o;
}

}  // namespace flotilla::envs
