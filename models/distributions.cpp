#include "models/distributions.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <functional>

#include "core/error.hpp"
#include "core/registry.hpp"

namespace flotilla::models {
namespace {

class Categorical final : public Distribution {
 public:
  int64_t head_size(int64_t n) const override { return n; }
  at::Tensor sample(const at::Tensor& logits, const at::Tensor&, at::Generator& gen) const override {
    // Inverse CDF: the first action whose cumulative probability exceeds a uniform draw.
    at::Tensor cdf = logits.softmax(-1).cumsum(-1);
    at::Tensor u = at::rand({logits.size(0), 1}, gen, logits.options());
    return (cdf < u).sum(-1).clamp_max(logits.size(-1) - 1);
  }
  at::Tensor mode(const at::Tensor& logits) const override { return logits.argmax(-1); }
  at::Tensor log_prob(const at::Tensor& logits, const at::Tensor&, const at::Tensor& action) const override {
    return logits.log_softmax(-1).gather(-1, action.to(at::kLong).unsqueeze(-1)).squeeze(-1);
  }
  at::Tensor entropy(const at::Tensor& logits, const at::Tensor&) const override {
    at::Tensor logp = logits.log_softmax(-1);
    return -(logp.exp() * logp).sum(-1);
  }
  bool continuous() const override { return false; }
};

class DiagGaussian final : public Distribution {
 public:
  int64_t head_size(int64_t dim) const override { return dim; }
  at::Tensor sample(const at::Tensor& mean, const at::Tensor& log_std, at::Generator& gen) const override {
    return mean + log_std.exp() * at::normal(0.0, 1.0, mean.sizes(), gen, mean.options());
  }
  at::Tensor mode(const at::Tensor& mean) const override { return mean; }
  at::Tensor log_prob(const at::Tensor& mean, const at::Tensor& log_std, const at::Tensor& action) const override {
    const double log_sqrt_2pi = 0.5 * std::log(2 * M_PI);
    at::Tensor z = (action - mean) * (-log_std).exp();
    return (-0.5 * z * z - log_std - log_sqrt_2pi).sum(-1);
  }
  at::Tensor entropy(const at::Tensor& mean, const at::Tensor& log_std) const override {
    const double c = 0.5 + 0.5 * std::log(2 * M_PI);
    return (log_std + c).sum(-1).expand({mean.size(0)});
  }
  bool continuous() const override { return true; }
};

using DistributionFactory = std::function<std::unique_ptr<Distribution>()>;

core::Registry<DistributionFactory>& registry() {
  static core::Registry<DistributionFactory> r("distribution", [](auto& r) {
    r.add("categorical", [] { return std::make_unique<Categorical>(); });
    r.add("diag_gaussian", [] { return std::make_unique<DiagGaussian>(); });
  });
  return r;
}

}  // namespace

std::vector<std::string> distribution_names() { return registry().names(); }

std::unique_ptr<Distribution> make_distribution(const std::string& name) { return registry().at(name)(); }

}  // namespace flotilla::models
