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

namespace at {
class Generator;
}

namespace flotilla::models {

struct PolicyConfig {
  std::string network = "mlp";
  std::vector<int64_t> hidden = {64, 64};
  std::string activation = "tanh";  // tanh or relu
  bool shared_trunk = false;        // one trunk for actor and critic, or one each
  std::string distribution = "auto";  // auto: categorical for Discrete, diag_gaussian for Box
  double init_log_std = 0.0;

  static PolicyConfig read(const core::ConfigView& model);
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
  Policy(const PolicyConfig& config, const envs::Space& observation, const envs::Space& action);
  ~Policy();
  Policy(Policy&&) noexcept;
  Policy& operator=(Policy&&) noexcept;

  // Samples (or, deterministic, takes the mode of) an action for each row, without gradients.
  ActOutput act(const at::Tensor& obs, bool deterministic, at::Generator& gen);
  at::Tensor value(const at::Tensor& obs);  // without gradients
  // Log-probability and entropy of given actions and the value, with gradients.
  EvalOutput evaluate(const at::Tensor& obs, const at::Tensor& action);

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

}  // namespace flotilla::models
