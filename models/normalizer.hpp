#pragma once
// Running statistics for observation normalization and reward scaling, saved with checkpoints.
#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace flotilla::models {

// Mean and variance over everything seen so far (Chan et al.'s parallel update).
class RunningMeanStd {
 public:
  explicit RunningMeanStd(int64_t dim = 1);
  void update(const at::Tensor& batch);  // [B, dim] or [B]
  // (x - mean) / sqrt(var + eps), clipped to [-clip, clip].
  // Columns listed here are returned as they are (one-hot ids, action masks).
  at::Tensor normalize(const at::Tensor& x, double clip) const;
  void set_passthrough(int64_t first, int64_t count);
  const at::Tensor& mean() const { return mean_; }
  const at::Tensor& var() const { return var_; }
  double count() const { return count_; }

  std::vector<std::pair<std::string, at::Tensor>> state(const std::string& prefix) const;
  void load(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& prefix);

 private:
  at::Tensor mean_, var_;  // float64
  at::Tensor passthrough_;  // bool [dim], or undefined
  double count_ = 1e-4;
};

// Scales rewards by the running std of the discounted return, as Gymnasium's NormalizeReward.
class RewardScaler {
 public:
  RewardScaler(int64_t num_envs, double gamma);
  // rewards [N]; done [N] bool (the episode ended at this step).
  at::Tensor scale(const at::Tensor& rewards, const at::Tensor& done, double clip);
  std::vector<std::pair<std::string, at::Tensor>> state(const std::string& prefix) const;
  void load(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& prefix);

 private:
  double gamma_;
  at::Tensor returns_;  // float64 [N]
  RunningMeanStd stats_;
};

}  // namespace flotilla::models
