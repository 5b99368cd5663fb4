#pragma once
// The environment registry: ids in Gymnasium's style ("CartPole-v1"), each with its spec and a
// factory. Built-in envs are registered on first use; a user's env registers itself from its own
// source file with FLOTILLA_REGISTER_ENV (envs/batched_env.hpp).
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "envs/vec_env.hpp"

namespace flotilla::envs {

struct EnvOptions {
  int64_t num_envs = 1;
  int threads = 1;
  std::string backend = "cpu";    // "cpu" or "cuda"
  int32_t max_episode_steps = 0;  // 0: the env's own limit
};

// `params` holds the env's own keys (env.params in an experiment), or is null for defaults.
using EnvFactory = std::function<std::unique_ptr<VecEnv>(const EnvOptions& options, const core::ConfigView* params)>;

void register_env(EnvSpec spec, EnvFactory factory);
// Every registered env, sorted by id.
std::vector<EnvSpec> env_specs();
// Throws ConfigError listing the known ids (with a suggestion) when `id` is unknown.
const EnvSpec& env_spec(const std::string& id);
std::unique_ptr<VecEnv> make_env(const std::string& id, const EnvOptions& options,
                                 const core::ConfigView* params = nullptr);
// From an experiment's `env:` section: id, num_envs, threads, backend, max_episode_steps, params.
std::unique_ptr<VecEnv> make_env(const core::ConfigView& env);
// The spec of the env an experiment's `env:` section describes, with its params (a multi-agent
// scenario's sizes depend on them).
EnvSpec env_spec(const core::ConfigView& env);
// num_envs, threads, backend and max_episode_steps from an experiment's `env:` section.
EnvOptions read_env_options(const core::ConfigView& env);

}  // namespace flotilla::envs
