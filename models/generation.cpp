#include "models/generation.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <map>

#include "core/error.hpp"
#include "models/inference.hpp"

namespace flotilla::models {
namespace {

// The next token from a row of logits [V]: greedy at temperature 0, else sampled from the
// temperature-scaled distribution restricted by top-k and top-p.
int64_t sample_token(const at::Tensor& logits, const SamplingParams& s, at::Generator& gen) {
  if (s.temperature <= 0) return logits.argmax().item<int64_t>();
  at::Tensor l = logits / s.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (s.top_k > 0 && s.top_k < l.size(0)) {
    const at::Tensor kth = std::get<0>(l.topk(s.top_k)).select(0, s.top_k - 1);
    l = l.masked_fill(l < kth, neg_inf);
  }
  if (s.top_p < 1.0) {
    auto [sorted, order] = l.sort(/*dim=*/0, /*descending=*/true);
    const at::Tensor probs = sorted.softmax(0);
    // Drop a token when the tokens before it already cover top_p (the first always stays).
    const at::Tensor drop = (probs.cumsum(0) - probs) > s.top_p;
    l = l.scatter(0, order, sorted.masked_fill(drop, neg_inf));
  }
  return at::multinomial(l.softmax(0), 1, false, gen).item<int64_t>();
}

// The next token from a row of logits and its log-probability at temperature 1: greedy decoding
// reads the row once; sampling draws from the generator as sample_token always has, so a seed
// gives the same tokens whatever the batch around the sequence.
std::pair<int64_t, float> pick(const at::Tensor& row, const SamplingParams& s, at::Generator& gen) {
  const float* l = row.data_ptr<float>();
  const int64_t V = row.size(0);
  const int64_t best = std::max_element(l, l + V) - l;
  const float m = l[best];
  double total = 0;
  for (int64_t i = 0; i < V; ++i) total += std::exp(static_cast<double>(l[i] - m));
  const double log_z = m + std::log(total);
  const int64_t tok = s.temperature > 0 ? sample_token(row, s, gen) : best;
  return {tok, static_cast<float>(l[tok] - log_z)};
}

}  // namespace

struct GenerationEngine::Impl {
  struct Seq {
    int64_t request_id = 0;
    int sample = 0;
    std::vector<int32_t> tokens;  // prompt, then generated
    size_t prompt_len = 0;
    std::vector<float> logprobs;
    std::vector<int64_t> versions;
    std::vector<int64_t> blocks;  // block table
    int64_t cached = 0;           // positions whose keys and values are in the cache
    int64_t resumed = 0;          // tokens generated before a resume (part of the prompt here)
    SamplingParams sampling;
    at::Generator gen;
    bool aborted = false;
    int followers = 0;  // samples still to start from this sequence's prompt (a group's leader)
    int64_t generated() const { return static_cast<int64_t>(tokens.size() - prompt_len) + resumed; }
  };

  CausalLm& model;
  EngineConfig config;
  InferenceModel runner;
  KvCache cache;
  std::vector<int64_t> free;  // free block ids
  std::vector<int> refs;      // references per block
  std::deque<GenerationRequest> waiting;
  std::vector<std::unique_ptr<Seq>> active;
  std::vector<Generation> finished;
  int64_t version = 0;
  EngineStats stats;

  Impl(CausalLm& m, EngineConfig c) : model(m), config(c), runner(m, c.weights), cache(m.make_cache(c.num_blocks, c.block_size)) {
    if (c.max_batch < 1 || c.prefill_chunk < 1) throw ConfigError("the engine needs max_batch and prefill_chunk of at least 1");
    refs.assign(static_cast<size_t>(c.num_blocks), 0);
    for (int64_t b = c.num_blocks - 1; b >= 0; --b) free.push_back(b);
  }

  int64_t blocks_for(int64_t positions) const { return (positions + config.block_size - 1) / config.block_size; }

  int64_t take_block() {
    if (free.empty())
      throw Error("the KV cache has no free block left (" + std::to_string(config.num_blocks) + " blocks of " +
                  std::to_string(config.block_size) + " tokens, " + std::to_string(active.size()) + " sequences active)");
    const int64_t b = free.back();
    free.pop_back();
    refs[static_cast<size_t>(b)] = 1;
    return b;
  }
  void release(Seq& s) {
    for (int64_t b : s.blocks)
      if (--refs[static_cast<size_t>(b)] == 0) free.push_back(b);
    s.blocks.clear();
  }

  // Blocks a request takes when it starts: every sample's whole length, less the prompt blocks
  // the samples of a group share.
  int64_t blocks_needed(const GenerationRequest& r) const {
    const int64_t longest = static_cast<int64_t>(r.prompt.size()) + r.sampling.max_new_tokens;
    if (!r.resume.empty() || r.n == 1) return r.n * blocks_for(longest);
    const int64_t shared = (static_cast<int64_t>(r.prompt.size()) - 1) / config.block_size;
    return r.n * blocks_for(longest) - (r.n - 1) * shared;
  }

  std::unique_ptr<Seq> make_seq(const GenerationRequest& r, int sample) {
    auto s = std::make_unique<Seq>();
    s->request_id = r.id;
    s->sample = sample;
    s->tokens = r.prompt;
    s->prompt_len = r.prompt.size();
    s->sampling = r.sampling;
    s->gen = at::make_generator<at::CPUGeneratorImpl>(r.sampling.seed + static_cast<uint64_t>(sample));
    if (!r.resume.empty()) {  // the tokens so far continue the prompt
      const auto& done = r.resume[static_cast<size_t>(sample)];
      s->tokens.insert(s->tokens.end(), done.begin(), done.end());
      s->prompt_len = s->tokens.size();
      s->resumed = static_cast<int64_t>(done.size());
    }
    return s;
  }

  // What the groups started but not yet spread still claim: their followers, and the blocks those
  // will take (all but the shared prompt blocks).
  std::pair<int64_t, int64_t> promised() const {
    int64_t seqs = 0, blocks = 0;
    for (const auto& s : active) {
      if (s->followers == 0) continue;
      const int64_t longest = static_cast<int64_t>(s->prompt_len) + s->sampling.max_new_tokens;
      const int64_t shared = (static_cast<int64_t>(s->prompt_len) - 1) / config.block_size;
      seqs += s->followers;
      blocks += s->followers * (blocks_for(longest) - shared);
    }
    return {seqs, blocks};
  }

  void admit() {
    while (!waiting.empty()) {
      const GenerationRequest& r = waiting.front();
      const auto [seqs, blocks] = promised();
      if (static_cast<int64_t>(active.size()) + seqs + r.n > config.max_batch) return;
      if (blocks_needed(r) + blocks > static_cast<int64_t>(free.size())) return;
      const int64_t longest = static_cast<int64_t>(r.prompt.size()) + r.sampling.max_new_tokens;
      const bool group = r.n > 1 && r.resume.empty();
      for (int k = 0; k < (group ? 1 : r.n); ++k) {
        auto s = make_seq(r, k);
        for (int64_t b = 0; b < blocks_for(longest); ++b) s->blocks.push_back(take_block());
        if (group) s->followers = r.n - 1;
        active.push_back(std::move(s));
      }
      waiting.pop_front();
    }
  }

  // The group's other samples start from the leader's cached prompt: full blocks shared, the
  // partial last block copied.
  void spawn_followers(Seq& leader) {
    const int64_t prefix = static_cast<int64_t>(leader.prompt_len) - 1;  // the last prompt token is each sample's first input
    const int64_t shared = prefix / config.block_size;
    const int64_t longest = static_cast<int64_t>(leader.prompt_len) + leader.sampling.max_new_tokens;
    GenerationRequest r;
    r.id = leader.request_id;
    r.prompt = std::vector<int32_t>(leader.tokens.begin(), leader.tokens.begin() + static_cast<std::ptrdiff_t>(leader.prompt_len));
    r.sampling = leader.sampling;
    for (int k = 1; k <= leader.followers; ++k) {
      auto s = make_seq(r, k);
      for (int64_t b = 0; b < shared; ++b) {
        s->blocks.push_back(leader.blocks[static_cast<size_t>(b)]);
        ++refs[static_cast<size_t>(leader.blocks[static_cast<size_t>(b)])];
        ++stats.shared_blocks;
      }
      while (static_cast<int64_t>(s->blocks.size()) < blocks_for(longest)) s->blocks.push_back(take_block());
      const int64_t rest = prefix - shared * config.block_size;
      if (rest > 0) {
        const int64_t from = leader.blocks[static_cast<size_t>(shared)] * config.block_size;
        const int64_t to = s->blocks[static_cast<size_t>(shared)] * config.block_size;
        for (size_t l = 0; l < cache.k.size(); ++l) {
          cache.k[l].narrow(0, to, rest).copy_(cache.k[l].narrow(0, from, rest));
          cache.v[l].narrow(0, to, rest).copy_(cache.v[l].narrow(0, from, rest));
        }
      }
      s->cached = prefix;
      active.push_back(std::move(s));
    }
    leader.followers = 0;
  }

  void finish(Seq& s, const std::string& reason) {
    Generation g;
    g.request_id = s.request_id;
    g.sample = s.sample;
    g.tokens.assign(s.tokens.begin() + static_cast<std::ptrdiff_t>(s.prompt_len), s.tokens.end());
    g.logprobs = s.logprobs;
    g.versions = s.versions;
    g.finish_reason = reason;
    finished.push_back(std::move(g));
    release(s);
  }

  bool step() {
    admit();
    if (active.empty()) return false;
    ++stats.steps;
    // Aborted sequences end first, with what they have.
    for (auto& s : active)
      if (s->aborted) finish(*s, "abort");
    std::erase_if(active, [](const std::unique_ptr<Seq>& s) { return s->blocks.empty(); });
    // One forward pass over this step's rows: every decoding sequence's last token, and up to
    // prefill_chunk prompt tokens, sequence by sequence (the last one may stop mid-prompt and
    // continue next step). A prompt whose last token fits samples its first token in this pass.
    using clock = std::chrono::steady_clock;
    const auto t = clock::now();
    StepRows rows;
    std::vector<Seq*> sampling;
    int64_t budget = config.prefill_chunk, prefilled = 0;
    for (auto& s : active) {
      const int64_t left = static_cast<int64_t>(s->tokens.size()) - s->cached;
      const int64_t n = left == 1 ? 1 : std::min(budget, left);
      if (n == 0) continue;
      const bool samples = n == left;
      if (left > 1) budget -= n, prefilled += n - (samples ? 1 : 0);
      rows.add(s->blocks, config.block_size, s->cached, s->tokens.data() + s->cached, n, samples);
      s->cached += n;
      if (samples) sampling.push_back(s.get());
    }
    const at::Tensor logits = runner.forward(rows, cache);
    stats.prefill_tokens += prefilled;
    // A group's other samples start from its leader's cached prompt before the leader can finish.
    for (Seq* s : sampling)
      if (s->followers > 0) spawn_followers(*s);  // appends to `active`
    std::vector<std::pair<int64_t, float>> picked(sampling.size());
    at::parallel_for(0, static_cast<int64_t>(sampling.size()), 4, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) picked[static_cast<size_t>(b)] = pick(logits[b], sampling[static_cast<size_t>(b)]->sampling, sampling[static_cast<size_t>(b)]->gen);
    });
    for (size_t b = 0; b < sampling.size(); ++b) {
      Seq& s = *sampling[b];
      const auto [tok, logprob] = picked[b];
      s.tokens.push_back(static_cast<int32_t>(tok));
      s.logprobs.push_back(logprob);
      s.versions.push_back(version);
      ++stats.decode_tokens;
      const auto& stops = s.sampling.stop_tokens;
      if (std::find(stops.begin(), stops.end(), static_cast<int32_t>(tok)) != stops.end()) finish(s, "stop");
      else if (s.generated() >= s.sampling.max_new_tokens) finish(s, "length");
    }
    const double took = std::chrono::duration<double>(clock::now() - t).count();
    if (prefilled > 0) {
      stats.prefill_s += took;
    } else {
      stats.decode_s += took;
      ++stats.decode_steps, stats.decode_rows += static_cast<int64_t>(sampling.size());
    }
    std::erase_if(active, [](const std::unique_ptr<Seq>& s) { return s->blocks.empty(); });
    return true;
  }
};

EagerGreedy eager_greedy(const CausalLm& model, const at::Tensor& prompts, int64_t new_tokens) {
  const LmConfig& c = model.config();
  if (model.tensor_parallel().size > 1 || c.head != "lm") throw Error("eager_greedy takes a whole language model");
  if (prompts.dim() != 2 || prompts.scalar_type() != at::kLong) throw Error("eager_greedy takes int64 prompts [batch, length]");
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> w;
  for (auto& [name, t] : model.named_parameters()) w[name] = t;
  auto param = [&](const std::string& name) { return w.at(name); };
  auto has = [&](const std::string& name) { return w.count(name) > 0; };
  auto rms = [&](const at::Tensor& x, const at::Tensor& weight) {
    return weight * (x * at::rsqrt(x.pow(2).mean(-1, true) + c.rms_norm_eps));
  };
  auto linear = [&](const at::Tensor& x, const std::string& name) {
    return at::linear(x, param(name + ".weight"), has(name + ".bias") ? param(name + ".bias") : at::Tensor());
  };
  auto rotate_half = [](const at::Tensor& x) {
    const int64_t half = x.size(-1) / 2;
    return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  };
  const int64_t B = prompts.size(0), H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  const at::Tensor inv_freq = 1.0 / at::pow(c.rope_theta, at::arange(0, D, 2, at::kDouble) / static_cast<double>(D));
  const at::Tensor head_weight = has("lm_head.weight") ? param("lm_head.weight") : param("model.embed_tokens.weight");
  std::vector<at::Tensor> keys(static_cast<size_t>(c.num_hidden_layers)), values(keys.size());
  // Logits of the last position after `tokens` [B, T] at positions past .. past+T-1.
  auto forward = [&](const at::Tensor& tokens, int64_t past) {
    const int64_t T = tokens.size(1);
    const at::Tensor freqs = at::arange(past, past + T, at::kDouble).unsqueeze(1) * inv_freq;
    const at::Tensor emb = at::cat({freqs, freqs}, -1);
    const at::Tensor cos = emb.cos().to(at::kFloat), sin = emb.sin().to(at::kFloat);
    at::Tensor x = at::embedding(param("model.embed_tokens.weight"), tokens);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      const at::Tensor h = rms(x, param(p + "input_layernorm.weight"));
      at::Tensor q = linear(h, p + "self_attn.q_proj").view({B, T, H, D});
      at::Tensor k = linear(h, p + "self_attn.k_proj").view({B, T, KV, D});
      at::Tensor v = linear(h, p + "self_attn.v_proj").view({B, T, KV, D}).transpose(1, 2);
      if (c.qk_norm) q = rms(q, param(p + "self_attn.q_norm.weight")), k = rms(k, param(p + "self_attn.k_norm.weight"));
      q = q.transpose(1, 2), k = k.transpose(1, 2);
      q = q * cos + rotate_half(q) * sin;
      k = k * cos + rotate_half(k) * sin;
      auto& kc = keys[static_cast<size_t>(l)];
      auto& vc = values[static_cast<size_t>(l)];
      kc = kc.defined() ? at::cat({kc, k}, 2) : k;
      vc = vc.defined() ? at::cat({vc, v}, 2) : v;
      const at::Tensor kr = kc.repeat_interleave(H / KV, 1), vr = vc.repeat_interleave(H / KV, 1);
      at::Tensor scores = at::matmul(q, kr.transpose(-2, -1)) / std::sqrt(static_cast<double>(D));
      if (T > 1) scores = scores.masked_fill(at::ones({T, past + T}, at::kBool).triu(past + 1), -std::numeric_limits<float>::infinity());
      const at::Tensor out = at::matmul(scores.softmax(-1), vr).transpose(1, 2).reshape({B, T, H * D});
      x = x + linear(out, p + "self_attn.o_proj");
      const at::Tensor m = rms(x, param(p + "post_attention_layernorm.weight"));
      x = x + linear(at::silu(linear(m, p + "mlp.gate_proj")) * linear(m, p + "mlp.up_proj"), p + "mlp.down_proj");
    }
    return at::linear(rms(x.select(1, T - 1), param("model.norm.weight")), head_weight);
  };
  using clock = std::chrono::steady_clock;
  EagerGreedy out;
  auto t = clock::now();
  at::Tensor next = forward(prompts, 0).argmax(-1, true);
  out.prefill_s = std::chrono::duration<double>(clock::now() - t).count();
  std::vector<at::Tensor> tokens = {next};
  t = clock::now();
  for (int64_t i = 1; i < new_tokens; ++i) {
    next = forward(next, prompts.size(1) + i - 1).argmax(-1, true);
    tokens.push_back(next);
  }
  out.decode_s = std::chrono::duration<double>(clock::now() - t).count();
  out.tokens = at::cat(tokens, 1);
  return out;
}

GenerationEngine::GenerationEngine(CausalLm& model, EngineConfig config) : impl_(std::make_unique<Impl>(model, config)) {}
GenerationEngine::~GenerationEngine() = default;

void GenerationEngine::submit(GenerationRequest r) {
  Impl& m = *impl_;
  const std::string who = "generation request " + std::to_string(r.id);
  const int64_t vocab = m.model.config().vocab_size;
  if (r.prompt.empty()) throw ConfigError(who + ": the prompt is empty");
  for (int32_t t : r.prompt)
    if (t < 0 || t >= vocab)
      throw ConfigError(who + ": prompt token " + std::to_string(t) + " is outside the vocabulary (0 to " +
                        std::to_string(vocab - 1) + ")");
  if (r.n < 1 || r.n > m.config.max_batch)
    throw ConfigError(who + ": n = " + std::to_string(r.n) + " samples, but the engine decodes at most " +
                      std::to_string(m.config.max_batch) + " sequences together");
  const SamplingParams& s = r.sampling;
  if (s.max_new_tokens < 1) throw ConfigError(who + ": max_new_tokens must be at least 1");
  if (s.temperature < 0) throw ConfigError(who + ": temperature must be at least 0");
  if (!(s.top_p > 0 && s.top_p <= 1)) throw ConfigError(who + ": top_p must be in (0, 1]");
  if (s.top_k < 0) throw ConfigError(who + ": top_k must be at least 0");
  if (!r.resume.empty() && static_cast<int>(r.resume.size()) != r.n)
    throw ConfigError(who + ": resume has " + std::to_string(r.resume.size()) + " samples, n is " + std::to_string(r.n));
  for (const auto& done : r.resume)
    if (static_cast<int64_t>(done.size()) >= s.max_new_tokens)
      throw ConfigError(who + ": a resumed sample already has max_new_tokens tokens");
  const int64_t positions = static_cast<int64_t>(r.prompt.size()) + s.max_new_tokens;
  if (positions > m.model.config().max_position_embeddings)
    throw ConfigError(who + ": prompt plus max_new_tokens is " + std::to_string(positions) +
                      " positions, more than the model's max_position_embeddings " +
                      std::to_string(m.model.config().max_position_embeddings));
  if (m.blocks_needed(r) > m.config.num_blocks)
    throw ConfigError(who + ": needs " + std::to_string(m.blocks_needed(r)) + " cache blocks, the engine has " +
                      std::to_string(m.config.num_blocks));
  m.waiting.push_back(std::move(r));
}

void GenerationEngine::abort(int64_t request_id) {
  for (auto& s : impl_->active)
    if (s->request_id == request_id) s->aborted = true;
  std::erase_if(impl_->waiting, [&](const GenerationRequest& r) { return r.id == request_id; });
}

void GenerationEngine::set_policy_version(int64_t version) { impl_->version = version; }
bool GenerationEngine::step() { return impl_->step(); }

std::vector<Generation> GenerationEngine::run() {
  while (impl_->step()) {
  }
  return take_finished();
}

std::vector<Generation> GenerationEngine::take_finished() {
  std::vector<Generation> out;
  out.swap(impl_->finished);
  return out;
}

const EngineStats& GenerationEngine::stats() const { return impl_->stats; }
int64_t GenerationEngine::free_blocks() const { return static_cast<int64_t>(impl_->free.size()); }
int64_t GenerationEngine::active() const { return static_cast<int64_t>(impl_->active.size()) + impl_->promised().first; }

}  // namespace flotilla::models
