#pragma once
// The reward role's scoring of generated responses: a rule (exact or numeric match or edit-distance similarity, with format
// and length terms), an external command, or a reward model; and the task's own check for
// held-out accuracy. It reads the datasets itself, so a row needs only its example's index.
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>

#include "actors/lm/config.hpp"
#include "actors/lm/data.hpp"
#include "core/batch.hpp"
#include "models/tokenizer.hpp"

namespace flotilla::models {
class CausalLm;
}

namespace flotilla::actors::lm {

class Scorer {
 public:
  // `reward_model`: the reward head to score with when reward.kind is model (else null).
  Scorer(const RlhfConfig& c, models::CausalLm* reward_model);
  ~Scorer();

  struct Scores {
    at::Tensor scores;   // [B] float
    int64_t errors = 0;  // responses scored 0 because the reward command failed (reward.on_error: zero)
  };
  // Scores rows with `tokens`, `last`, `response_length` and `example` (an index into `split`:
  // "train" or "val"); `check` scores with the task's own check only.
  Scores score(const core::Batch& rows, const std::string& split, bool check);

 private:
  const Dataset& dataset(const std::string& split);
  const RlhfConfig& c_;
  models::CausalLm* reward_model_;
  std::unique_ptr<models::Tokenizer> tokenizer_;
  std::unique_ptr<Formatter> format_;
  std::map<std::string, Dataset> datasets_;
};

}  // namespace flotilla::actors::lm
