#include "envs/registry.hpp"

#include "core/error.hpp"
#include "core/registry.hpp"

namespace flotilla::envs {

void register_classic_envs();  // envs/classic/classic.cpp
void register_mpe_envs();      // envs/mpe/mpe.cpp
void register_smax_envs();     // envs/smax/smax.cpp
void register_overcooked_envs();  // envs/overcooked/overcooked.cpp
void register_hanabi_envs();      // envs/hanabi/hanabi.cpp

namespace {

struct Entry {
  EnvSpec spec;
  EnvFactory factory;
};

core::Registry<Entry>& registry() {
  static core::Registry<Entry> r("env id", [](core::Registry<Entry>&) {
    register_classic_envs();
    register_mpe_envs();
    register_smax_envs();
    register_overcooked_envs();
    register_hanabi_envs();
  });
  return r;
}

}  // namespace

void register_env(EnvSpec spec, EnvFactory factory) {
  const std::string id = spec.id;
  registry().add(id, Entry{std::move(spec), std::move(factory)});
}

std::vector<EnvSpec> env_specs() {
  std::vector<EnvSpec> out;
  for (const auto& id : registry().names()) out.push_back(registry().at(id).spec);
  return out;
}

const EnvSpec& env_spec(const std::string& id) { return registry().at(id).spec; }

std::unique_ptr<VecEnv> make_env(const std::string& id, const EnvOptions& options, const core::ConfigView* params) {
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
