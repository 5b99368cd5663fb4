#pragma once
// The generation engine: batched decoding over a paged KV cache (fixed-size blocks), continuous
// batching (a finished sequence's slot goes to the next waiting one at once), chunked prefill
// in the same forward pass as the decoding rows (models/inference.hpp), and prompts shared by n samples (GRPO groups) prefilled once with
// their full cache blocks shared. Every generated token carries its log-probability under the
// model at temperature 1 and the policy version that produced it.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/transformer.hpp"

namespace flotilla::models {

struct SamplingParams {
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;
  uint64_t seed = 0;         // sample k of a request draws from seed + k
  int64_t max_new_tokens = 64;
  std::vector<int32_t> stop_tokens;  // generation ends after one of these (it is kept)
};

struct GenerationRequest {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int n = 1;  // samples of this prompt (a GRPO group), sharing the prompt's cache
  // Tokens already generated per sample (continuing an aborted request; they count toward
  // max_new_tokens); empty for a new one.
  std::vector<std::vector<int32_t>> resume;
};

struct Generation {
  int64_t request_id = 0;
  int sample = 0;
  std::vector<int32_t> tokens;   // generated in this run (after the prompt and any resumed tokens)
  std::vector<float> logprobs;   // one per generated token
  std::vector<int64_t> versions; // the policy version that produced each token
  std::string finish_reason;     // "stop", "length" or "abort"
};

struct EngineConfig {
  int64_t block_size = 16;
  int64_t num_blocks = 2048;
  int64_t max_batch = 32;       // sequences decoded together
  int64_t prefill_chunk = 256;  // prompt tokens prefilled per step (over one or more sequences)
  std::string weights = "float32";  // or "bfloat16": matrix weights rounded, float32 accumulation (models/inference.hpp)
};

struct EngineStats {
  int64_t steps = 0, prefill_tokens = 0, decode_tokens = 0, shared_blocks = 0;
  // Steps with prompt tokens take prefill_s (decode rows ride along in them); steps of decode rows
  // only take decode_s, with their count and rows.
  int64_t decode_steps = 0, decode_rows = 0;
  double prefill_s = 0, decode_s = 0;
};

class GenerationEngine {
 public:
  GenerationEngine(CausalLm& model, EngineConfig config);
  ~GenerationEngine();

  // Queues a request; errors (an empty prompt, a token outside the vocabulary, more cache than
  // exists) are thrown here, naming the request.
  void submit(GenerationRequest request);
  // Ends a request's sequences at the next step with finish_reason "abort" and their tokens so far
  // (submit them again with `resume` to continue).
  void abort(int64_t request_id);
  void set_policy_version(int64_t version);
  // One scheduling step (a prefill chunk and/or a batched decode step); false when idle.
  bool step();
  // Runs until every request has finished.
  std::vector<Generation> run();
  // Generations finished since the last call.
  std::vector<Generation> take_finished();
  const EngineStats& stats() const;
  int64_t free_blocks() const;
  // Sequences being decoded, with the samples of started groups that have not spread yet.
  int64_t active() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Greedy decoding the plain way, as a PyTorch user writes it in an afternoon: the batch's prompts
// (all one length) prefilled together, then one token per step for every row, each layer's keys
// and values appended with cat and attention over key/value heads repeated for their query heads.
// It reads the model's parameters by name and shares no code with the engine: the benchmark's
// baseline (`flotilla bench generate --reference`), and the check that the engine's greedy tokens
// are the model's.
struct EagerGreedy {
  at::Tensor tokens;  // [B, new_tokens] int64
  double prefill_s = 0, decode_s = 0;
};
EagerGreedy eager_greedy(const CausalLm& model, const at::Tensor& prompts, int64_t new_tokens);

}  // namespace flotilla::models
