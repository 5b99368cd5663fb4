#pragma once
// A tiny transformer whose weights are scaled up, so its next-token distributions are far from
// uniform and comparisons between implementations mean something.
#include <ATen/ATen.h>

#include <string>

#include "models/transformer.hpp"

namespace flotilla::test {

inline models::CausalLm spread_model(const std::string& arch, bool tied = true, double scale = 15.0, uint64_t seed = 3) {
  models::LmConfig c = models::LmConfig::preset(arch, "tiny", 300);
  c.tie_word_embeddings = tied;
  at::manual_seed(seed);
  models::CausalLm lm(c);
  at::NoGradGuard no_grad;
  for (auto& [name, t] : lm.named_parameters()) {
    if (name.find("norm") != std::string::npos) t.uniform_(0.5, 1.5);
    else t.mul_(scale);
  }
  return lm;
}

}  // namespace flotilla::test
