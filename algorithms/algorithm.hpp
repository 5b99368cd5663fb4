#pragma once
// Algorithms: update rules that consume a Batch of experience and update a Policy, registered by
// name (`algo.name` in an experiment).
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/batch.hpp"
#include "core/config.hpp"
#include "core/metrics.hpp"
#include "models/policy.hpp"

namespace at {
class Generator;
}

namespace flotilla::algorithms {

class Algorithm {
 public:
  virtual ~Algorithm() = default;
  // One update from `batch` (fields obs, action, log_prob, value, advantage, return); `progress`
  // in [0, 1] is the share of training done (for annealing). Returns the losses/... metrics.
  virtual core::Scalars update(const core::Batch& batch, double progress, at::Generator& gen) = 0;
  // Discount settings the rollout side needs (GAE's gamma and lambda).
  virtual double gamma() const = 0;
  virtual double gae_lambda() const = 0;
  // Turns one rollout fragment into what update() takes (several prepared fragments are
  // concatenated along dim 0). A fragment is env-major: obs, action, log_prob, value, reward,
  // terminated, truncated, final_obs as [N, T, ...] and bootstrap_obs as [N, ...]. The default
  // computes values with `policy` and GAE, giving a flat training batch.
  virtual core::Batch prepare(const core::Batch& fragment, models::Policy& policy) const;
  // Whether update() takes the flat GAE batch of the single-process loop (false: fragments only,
  // for distributed runs).
  virtual bool takes_gae_batches() const { return true; }
  // Called with the gradients after each backward pass and before they are clipped and applied:
  // data-parallel trainers average them over ranks here.
  void set_gradient_hook(std::function<void(const std::vector<at::Tensor>&)> hook) { gradient_hook_ = std::move(hook); }
  // Optimizer state, for checkpoints.
  virtual std::vector<std::pair<std::string, at::Tensor>> state() const = 0;
  virtual void load(const std::vector<std::pair<std::string, at::Tensor>>& tensors) = 0;

 protected:
  // Runs the gradient hook, if any, over the gradients of `params`.
  void sync_gradients(const std::vector<at::Tensor>& params) const;

 private:
  std::function<void(const std::vector<at::Tensor>&)> gradient_hook_;
};

using AlgorithmFactory = std::function<std::unique_ptr<Algorithm>(const core::ConfigView& algo, models::Policy& policy)>;

// A registered algorithm: how to build it, and what it asks of its policy by default.
struct AlgorithmEntry {
  AlgorithmFactory make;
  models::PolicyConfig::Defaults policy;
};

void register_algorithm(const std::string& name, AlgorithmEntry entry);
std::vector<std::string> algorithm_names();
// Reads `algo.name` and builds it; an unknown name is a ConfigError with a suggestion.
std::unique_ptr<Algorithm> make_algorithm(const core::ConfigView& algo, models::Policy& policy);
// The policy an experiment describes (model:, with the defaults of algo.name) for an env with
// `spec`; weights from libtorch's default generator.
std::unique_ptr<models::Policy> make_policy(const core::ConfigView& root, const envs::EnvSpec& spec);

}  // namespace flotilla::algorithms
