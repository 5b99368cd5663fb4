#include "models/normalizer.hpp"

#include <ATen/ATen.h>

#include "core/error.hpp"

namespace flotilla::models {
namespace {
const at::Tensor& find(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw FormatError("checkpoint has no tensor '" + name + "'");
}
}  // namespace

RunningMeanStd::RunningMeanStd(int64_t dim)
    : mean_(at::zeros({dim}, at::kDouble)), var_(at::ones({dim}, at::kDouble)) {}

void RunningMeanStd::update(const at::Tensor& batch) {
  at::Tensor x = batch.to(at::kDouble).reshape({batch.size(0), -1});
  const double n = static_cast<double>(x.size(0));
  if (n == 0) return;
  at::Tensor bmean = x.mean(0), bvar = x.var(0, /*unbiased=*/false);
  at::Tensor delta = bmean - mean_;
  const double total = count_ + n;
  mean_ = mean_ + delta * (n / total);
  var_ = (var_ * count_ + bvar * n + delta * delta * (count_ * n / total)) / total;
  count_ = total;
}

at::Tensor RunningMeanStd::normalize(const at::Tensor& x, double clip) const {
  at::Tensor y = ((x.to(at::kDouble) - mean_) / (var_ + 1e-8).sqrt()).clamp(-clip, clip);
  if (passthrough_.defined()) y = at::where(passthrough_, x.to(at::kDouble), y);
  return y.to(x.scalar_type());
}

void RunningMeanStd::set_passthrough(int64_t first, int64_t count) {
  if (count <= 0) return;
  if (!passthrough_.defined()) passthrough_ = at::zeros({mean_.size(0)}, at::kBool);
  passthrough_.narrow(0, first, count).fill_(true);
}

std::vector<std::pair<std::string, at::Tensor>> RunningMeanStd::state(const std::string& prefix) const {
  return {{prefix + ".mean", mean_}, {prefix + ".var", var_}, {prefix + ".count", at::full({1}, count_, at::kDouble)}};
}

void RunningMeanStd::load(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& prefix) {
  mean_ = find(tensors, prefix + ".mean").clone();
  var_ = find(tensors, prefix + ".var").clone();
  count_ = find(tensors, prefix + ".count").item<double>();
}

RewardScaler::RewardScaler(int64_t num_envs, double gamma)
    : gamma_(gamma), returns_(at::zeros({num_envs}, at::kDouble)), stats_(1) {}

at::Tensor RewardScaler::scale(const at::Tensor& rewards, const at::Tensor& done, double clip) {
  returns_ = returns_ * gamma_ + rewards.to(at::kDouble);
  stats_.update(returns_);
  at::Tensor scaled = (rewards.to(at::kDouble) / (stats_.var() + 1e-8).sqrt()).clamp(-clip, clip);
  returns_.masked_fill_(done, 0.0);
  return scaled.to(at::kFloat);
}

std::vector<std::pair<std::string, at::Tensor>> RewardScaler::state(const std::string& prefix) const {
  auto out = stats_.state(prefix);
  out.emplace_back(prefix + ".returns", returns_);
  return out;
}

void RewardScaler::load(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& prefix) {
  stats_.load(tensors, prefix);
  returns_ = find(tensors, prefix + ".returns").clone();
}

}  // namespace flotilla::models
