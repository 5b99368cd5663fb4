#pragma once
// Action distributions over a policy head's output, chosen by name: "categorical" (logits) for
// Discrete spaces, "diag_gaussian" (mean, with a learned state-independent log std) for Box.
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace at {
class Generator;
}

namespace flotilla::models {

class Distribution {
 public:
  virtual ~Distribution() = default;
  // Head outputs per action: logits for categorical, means for Gaussian.
  virtual int64_t head_size(int64_t action_dim) const = 0;
  virtual at::Tensor sample(const at::Tensor& head, const at::Tensor& log_std, at::Generator& gen) const = 0;
  virtual at::Tensor mode(const at::Tensor& head) const = 0;
  virtual at::Tensor log_prob(const at::Tensor& head, const at::Tensor& log_std, const at::Tensor& action) const = 0;
  virtual at::Tensor entropy(const at::Tensor& head, const at::Tensor& log_std) const = 0;
  virtual bool continuous() const = 0;
};

// Throws ConfigError listing the known names.
std::unique_ptr<Distribution> make_distribution(const std::string& name);
std::vector<std::string> distribution_names();

}  // namespace flotilla::models
