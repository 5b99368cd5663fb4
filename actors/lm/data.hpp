#pragma once
// RLHF data, read the same way by the controller (which samples prompts) and the reward workers
// (which check answers): JSONL examples with their prompts formatted (plain text or a chat
// template) and tokenized, prompts over the limit filtered or truncated, an epoch-shuffling
// sampler whose position goes into checkpoints, and the batches the workers take.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/batch.hpp"
#include "envs/text_tasks.hpp"
#include "models/tokenizer.hpp"

namespace flotilla::actors::lm {

struct DataConfig {
  std::string train, val, train_kind, val_kind;
  std::string format = "plain";  // plain or chat
  std::string chat_template, system, eos;
  int64_t max_prompt_tokens = 256, max_response_tokens = 256;
  std::string overlong_prompts = "filter";  // filter, truncate or error
};

struct Example {
  envs::TextExample text;
  std::vector<int32_t> prompt;                      // formatted and tokenized
  std::vector<int32_t> response, chosen, rejected;  // each ending with the end-of-sequence token
};

struct Dataset {
  std::vector<Example> examples;
  int64_t read = 0, filtered = 0, truncated = 0, responses_truncated = 0;
};

class Formatter {
 public:
  // Throws ConfigError when the end-of-sequence text is not one token.
  Formatter(const DataConfig& c, const models::Tokenizer& tok);
  int32_t eos() const { return eos_; }
  // The prompt as the model sees it: as is (plain), or inside the chat template.
  std::string prompt_text(const std::string& prompt) const;
  // A dataset file of `kind`, tokenized; over-long prompts handled as configured.
  Dataset load(const std::string& path, const std::string& kind) const;
  // A generated response as text, without its end-of-sequence token.
  std::string decode_response(const std::vector<int32_t>& ids) const;

 private:
  std::vector<int32_t> response(const std::string& text, Dataset& d) const;
  const DataConfig& c_;
  const models::Tokenizer& tok_;
  int32_t eos_ = 0;
};

// Examples in a new random order every epoch.
class Sampler {
 public:
  Sampler(int64_t size, uint64_t seed);
  std::vector<int64_t> next(int64_t n);
  nlohmann::json state() const;
  void restore(const nlohmann::json& s);

 private:
  void shuffle();
  int64_t size_, pos_ = 0, epoch_ = 0;
  uint64_t seed_;
  std::vector<int64_t> order_;
};

// The prompts of examples `indices` of `d` as the rollout takes them: `prompt_tokens` [P, L]
// right-padded, `prompt_len` [P], and `example` [P] (the indices, for the reward workers to find
// each answer).
core::Batch prompt_batch(const Dataset& d, const std::vector<int64_t>& indices);
// Prompt + response rows in the sequence layout of algorithms/lm_trainer.hpp, with `last` [B]
// (each row's last token).
using SequenceRow = std::pair<const std::vector<int32_t>*, const std::vector<int32_t>*>;
core::Batch sequence_batch(const std::vector<SequenceRow>& rows);

}  // namespace flotilla::actors::lm
