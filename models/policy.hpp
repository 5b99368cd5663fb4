#pragma once
// Policy: an actor-critic network over flat observations, giving an action distribution and a
// state value. Networks ("mlp") and distributions are chosen by name in the experiment's
// `model:` section. libtorch's nn types stay inside policy.cpp.
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "envs/space.hpp"
#include "envs/vec_env.hpp"

namespace at {
class Generator;
}

namespace flotilla::models {

// What an algorithm asks of its policy unless the experiment says otherwise (MAPPO: a global
// critic with value normalization; IPPO: local critics only).
struct PolicyDefaults {
  std::string critic = "local";
  bool value_norm = false;
  bool local_critic_only = false;
  std::string algo = "ppo";  // for error messages
};

struct PolicyConfig {
  std::string network = "mlp";
  std::vector<int64_t> hidden = {64, 64};
  std::string activation = "tanh";  // tanh or relu
  bool shared_trunk = false;        // one trunk for actor and critic, or one each
  std::string distribution = "auto";  // auto: categorical for Discrete, diag_gaussian for Box
  double init_log_std = 0.0;
  // Multi-agent envs (agent rows): the critic reads the agent's own observation ("local", IPPO),
  // the global state ("global", MAPPO's centralized critic), or both ("agent_specific", MAPPO's
  // agent-specific global state, for envs whose state holds what observations lack). All read
  // the agent's id.
  std::string critic = "local";
  // Value normalization (MAPPO): the critic predicts returns normalized by running statistics.
  bool value_norm = false;

  using Defaults = PolicyDefaults;
  static PolicyConfig read(const core::ConfigView& model, const Defaults& defaults = {});
};

struct ActOutput {
  at::Tensor action;    // [N] int64 (Discrete) or [N, k] float32 (Box), unclipped
  at::Tensor log_prob;  // [N]
  at::Tensor value;     // [N]
};

struct EvalOutput {
  at::Tensor log_prob;  // [N]
  at::Tensor entropy;   // [N]
  at::Tensor value;     // [N]
};

class Policy {
 public:
  // Weights are initialized orthogonally from libtorch's default generator (seed it first).
  // `layout` splits the observation rows of a multi-agent env (actor, critic, action mask).
  Policy(const PolicyConfig& config, const envs::Space& observation, const envs::Space& action,
         const envs::ObsLayout& layout = {});
  ~Policy();
  Policy(Policy&&) noexcept;
  Policy& operator=(Policy&&) noexcept;

  // Samples (or, deterministic, takes the mode of) an action for each row, without gradients.
  ActOutput act(const at::Tensor& obs, bool deterministic, at::Generator& gen);
  at::Tensor value(const at::Tensor& obs);  // without gradients
  // Log-probability and entropy of given actions and the value, with gradients. With value
  // normalization the value is the critic's normalized prediction (see normalize_value()).
  EvalOutput evaluate(const at::Tensor& obs, const at::Tensor& action);

  bool value_norm() const;
  // Updates the value normalizer's statistics with a batch of returns.
  void update_value_norm(const at::Tensor& returns);
  // Returns in the critic's normalized units (the identity without value normalization).
  at::Tensor normalize_value(const at::Tensor& values) const;

  std::vector<at::Tensor> parameters() const;
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const;
  // Copies values into the parameters of the same names; throws naming a missing or mis-shaped one.
  void load(const std::vector<std::pair<std::string, at::Tensor>>& values);
  // All parameters in one flat float32 buffer (named_parameters order), for sending; and back.
  at::Tensor flat() const;
  void load_flat(const at::Tensor& flat);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::vector<std::string> network_names();

// The policy `config` describes for an env with `spec` (algorithms::make_policy reads it from an
// experiment with the algorithm's defaults).
std::unique_ptr<Policy> make_policy(const PolicyConfig& config, const envs::EnvSpec& spec);

}  // namespace flotilla::models
