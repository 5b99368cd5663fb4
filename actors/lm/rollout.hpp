#pragma once
// The rollout's work: sampling continuations of prompts with the generation engine (its KV cache
// lives for one call), and moving a model's weights as one flat tensor.
#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <mutex>

#include "actors/lm/config.hpp"
#include "actors/lm/methods.hpp"
#include "core/batch.hpp"
#include "runtime/lifecycle.hpp"

namespace flotilla::models {
class CausalLm;
}

namespace flotilla::actors::lm {

// The rollout's model and the version of its weights; a weight sync replaces both between two
// engine steps of a generation in progress (its later tokens carry the new version).
struct RolloutWeights {
  models::CausalLm* model = nullptr;
  std::mutex mutex;  // held for each engine step, and by a sync
  std::atomic<int64_t> version{0};
};

// Samples `g.n` continuations of each prompt in `prompts` (the Generate method's input and output
// layout); between engine steps it parks while the worker is paused and lets weight syncs in.
// `tokens` counts generated tokens as they come.
core::Batch generate(RolloutWeights& weights, const RlhfConfig& c, const Generate& g, const core::Batch& prompts,
                     runtime::Lifecycle& life, std::atomic<int64_t>& tokens);

// All parameters as one flat float tensor, and back (checking the sizes agree).
at::Tensor flatten(const models::CausalLm& lm);
void unflatten(models::CausalLm& lm, const at::Tensor& flat);

}  // namespace flotilla::actors::lm
