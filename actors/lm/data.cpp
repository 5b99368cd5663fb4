#include "actors/lm/data.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "core/error.hpp"

namespace flotilla::actors::lm {

Formatter::Formatter(const DataConfig& c, const models::Tokenizer& tok) : c_(c), tok_(tok) {
  auto id = tok.token_id(c.eos);
  if (!id) throw ConfigError("data.eos: '" + c.eos + "' is not a single token of the tokenizer");
  eos_ = *id;
}

std::string Formatter::prompt_text(const std::string& prompt) const {
  if (c_.format == "plain") return prompt;
  std::string out = c_.system.empty() ? "" : "<|im_start|>system\n" + c_.system + "<|im_end|>\n";
  std::string t = c_.chat_template;
  return out + t.replace(t.find("{prompt}"), 8, prompt);
}

std::vector<int32_t> Formatter::response(const std::string& text, Dataset& d) const {
  std::vector<int32_t> r = tok_.encode(text);
  if (static_cast<int64_t>(r.size()) >= c_.max_response_tokens) {
    r.resize(static_cast<size_t>(c_.max_response_tokens - 1));
    ++d.responses_truncated;
  }
  r.push_back(eos_);
  return r;
}

Dataset Formatter::load(const std::string& path, const std::string& kind) const {
  Dataset d;
  for (auto& e : envs::read_text_dataset(path, kind)) {
    ++d.read;
    Example x;
    x.prompt = tok_.encode(prompt_text(e.prompt));
    if (x.prompt.empty()) throw FormatError(path + ": example " + std::to_string(d.read) + " has an empty prompt");
    if (static_cast<int64_t>(x.prompt.size()) > c_.max_prompt_tokens) {
      if (c_.overlong_prompts == "error")
        throw ConfigError(path + ": example " + std::to_string(d.read) + " has a prompt of " + std::to_string(x.prompt.size()) +
                          " tokens, over data.max_prompt_tokens " + std::to_string(c_.max_prompt_tokens));
      if (c_.overlong_prompts == "filter") {
        ++d.filtered;
        continue;
      }
      // Keep the prompt's end, where the question and the assistant's turn are.
      x.prompt.erase(x.prompt.begin(), x.prompt.end() - c_.max_prompt_tokens);
      ++d.truncated;
    }
    if (kind == "sft") x.response = response(e.response, d);
    if (kind == "preference") x.chosen = response(e.chosen, d), x.rejected = response(e.rejected, d);
    x.text = std::move(e);
    d.examples.push_back(std::move(x));
  }
  if (d.examples.empty()) throw ConfigError(path + ": no examples left (" + std::to_string(d.filtered) + " of " +
                                            std::to_string(d.read) + " prompts were over data.max_prompt_tokens)");
  return d;
}

std::string Formatter::decode_response(const std::vector<int32_t>& ids) const {
  std::vector<int32_t> r = ids;
  if (!r.empty() && r.back() == eos_) r.pop_back();
  return tok_.decode(r);
}

Sampler::Sampler(int64_t size, uint64_t seed) : size_(size), seed_(seed) { shuffle(); }

std::vector<int64_t> Sampler::next(int64_t n) {
  std::vector<int64_t> out;
  while (static_cast<int64_t>(out.size()) < n) {
    if (pos_ == size_) ++epoch_, pos_ = 0, shuffle();
    out.push_back(order_[static_cast<size_t>(pos_++)]);
  }
  return out;
}

nlohmann::json Sampler::state() const { return {{"epoch", epoch_}, {"pos", pos_}}; }

void Sampler::restore(const nlohmann::json& s) {
  epoch_ = s.at("epoch").get<int64_t>(), pos_ = s.at("pos").get<int64_t>();
  shuffle();
}

void Sampler::shuffle() {
  order_.resize(static_cast<size_t>(size_));
  std::iota(order_.begin(), order_.end(), 0);
  std::mt19937_64 rng(seed_ + 7919 * static_cast<uint64_t>(epoch_));
  std::shuffle(order_.begin(), order_.end(), rng);
}

core::Batch prompt_batch(const Dataset& d, const std::vector<int64_t>& indices) {
  int64_t L = 1;
  for (int64_t i : indices) L = std::max<int64_t>(L, static_cast<int64_t>(d.examples.at(static_cast<size_t>(i)).prompt.size()));
  const int64_t P = static_cast<int64_t>(indices.size());
  at::Tensor t = at::zeros({P, L}, at::kLong), len = at::zeros({P}, at::kLong);
  for (size_t i = 0; i < indices.size(); ++i) {
    const auto& p = d.examples[static_cast<size_t>(indices[i])].prompt;
    t[static_cast<int64_t>(i)].slice(0, 0, static_cast<int64_t>(p.size())).copy_(at::tensor(std::vector<int64_t>(p.begin(), p.end())));
    len[static_cast<int64_t>(i)] = static_cast<int64_t>(p.size());
  }
  core::Batch b;
  b.set("prompt_tokens", t);
  b.set("prompt_len", len);
  b.set("example", at::tensor(indices, at::kLong));
  return b;
}

core::Batch sequence_batch(const std::vector<SequenceRow>& rows) {
  int64_t T = 2;
  for (auto& [p, r] : rows) T = std::max<int64_t>(T, static_cast<int64_t>(p->size() + r->size()));
  const int64_t B = static_cast<int64_t>(rows.size());
  at::Tensor tokens = at::zeros({B, T}, at::kLong), mask = at::zeros({B, T - 1}), last = at::zeros({B}, at::kLong);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> ids(rows[static_cast<size_t>(b)].first->begin(), rows[static_cast<size_t>(b)].first->end());
    const int64_t P = static_cast<int64_t>(ids.size());
    ids.insert(ids.end(), rows[static_cast<size_t>(b)].second->begin(), rows[static_cast<size_t>(b)].second->end());
    const int64_t n = static_cast<int64_t>(ids.size());
    tokens[b].slice(0, 0, n).copy_(at::tensor(ids));
    if (n > P) mask[b].slice(0, P - 1, n - 1).fill_(1.0);
    last[b] = n - 1;
  }
  core::Batch out;
  out.set("tokens", tokens);
  out.set("response_mask", mask);
  out.set("last", last);
  return out;
}

}  // namespace flotilla::actors::lm
