#pragma once
// The rollout's work: sampling continuations of prompts with the generation engine (its KV cache
// lives for one call), and taking a model's weights from one flat tensor.
#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <mutex>

#include "actors/lm/config.hpp"
#include "actors/lm/methods.hpp"
#include "core/batch.hpp"
#include "runtime/lifecycle.hpp"

#include "models/generation.hpp"

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

// One generated sample: its prompt, what was generated with each token's log-probability and
// policy version, and where it came from.
struct Sample {
  const std::vector<int32_t>* prompt;
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<int64_t> versions;
  bool truncated = false;  // ended by the length limit
  int64_t example = 0, group = 0, admitted = 0;
  int64_t start_step = -1;  // the rollout's engine step the group started at (-1: not streamed)
};
// Samples as rows (the Generate method's output layout, with `group`, `admitted`,
// `oldest_version` and `start_step`).
core::Batch sample_rows(const std::vector<Sample>& samples, int64_t width = 0);

// The engine's sampling settings of a call (max_new_tokens 0: the config's).
models::SamplingParams sampling_of(const RlhfConfig& c, double temperature, double top_p, int64_t top_k,
                                   int64_t max_new_tokens, const std::vector<int32_t>& stop);

// A flat float tensor (every parameter in the model's order, this rank's slices under tensor
// parallelism) into the model's parameters, checking the sizes agree.
void unflatten(models::CausalLm& lm, const at::Tensor& flat);

}  // namespace flotilla::actors::lm
