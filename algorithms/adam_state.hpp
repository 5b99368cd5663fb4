#pragma once
// Adam's per-parameter state as named tensors ("optimizer.<i>.exp_avg", ".exp_avg_sq", ".step"),
// for checkpoints. Internal to algorithms/ (it includes libtorch).
#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::algorithms {

inline std::vector<std::pair<std::string, at::Tensor>> adam_state(const torch::optim::Adam& optimizer,
                                                                  const std::vector<torch::Tensor>& params) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto& states = const_cast<torch::optim::Adam&>(optimizer).state();
  for (size_t i = 0; i < params.size(); ++i) {
    auto it = states.find(c10::guts::to_string(params[i].unsafeGetTensorImpl()));
    if (it == states.end()) continue;  // no step taken yet
    auto& s = static_cast<torch::optim::AdamParamState&>(*it->second);
    const std::string p = "optimizer." + std::to_string(i);
    out.emplace_back(p + ".exp_avg", s.exp_avg());
    out.emplace_back(p + ".exp_avg_sq", s.exp_avg_sq());
    out.emplace_back(p + ".step", torch::full({1}, s.step(), torch::kLong));
  }
  return out;
}

inline void load_adam_state(torch::optim::Adam& optimizer, const std::vector<torch::Tensor>& params,
                            const std::map<std::string, at::Tensor>& by_name) {
  auto& states = optimizer.state();
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string p = "optimizer." + std::to_string(i);
    if (!by_name.count(p + ".step")) continue;
    auto s = std::make_unique<torch::optim::AdamParamState>();
    s->step(by_name.at(p + ".step").item<int64_t>());
    s->exp_avg(by_name.at(p + ".exp_avg").clone());
    s->exp_avg_sq(by_name.at(p + ".exp_avg_sq").clone());
    states[c10::guts::to_string(params[i].unsafeGetTensorImpl())] = std::move(s);
  }
}

}  // namespace flotilla::algorithms
