#include "models/generation.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <deque>
#include <limits>

#include "core/error.hpp"

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
    bool prefilling() const { return cached < static_cast<int64_t>(tokens.size()) - 1; }
    int64_t generated() const { return static_cast<int64_t>(tokens.size() - prompt_len) + resumed; }
  };

  CausalLm& model;
  EngineConfig config;
  KvCache cache;
  std::vector<int64_t> free;  // free block ids
  std::vector<int> refs;      // references per block
  std::deque<GenerationRequest> waiting;
  std::vector<std::unique_ptr<Seq>> active;
  std::vector<Generation> finished;
  int64_t version = 0;
  EngineStats stats;

  Impl(CausalLm& m, EngineConfig c) : model(m), config(c), cache(m.make_cache(c.num_blocks, c.block_size)) {
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

  // The cache slot of each position of each sequence: [B, L].
  at::Tensor slots_of(const std::vector<Seq*>& seqs, int64_t L) const {
    at::Tensor slots = at::zeros({static_cast<int64_t>(seqs.size()), L}, at::kLong);
    auto acc = slots.accessor<int64_t, 2>();
    for (size_t b = 0; b < seqs.size(); ++b) {
      const int64_t n = std::min<int64_t>(L, static_cast<int64_t>(seqs[b]->blocks.size()) * config.block_size);
      for (int64_t p = 0; p < n; ++p)
        acc[static_cast<int64_t>(b)][p] = seqs[b]->blocks[static_cast<size_t>(p / config.block_size)] * config.block_size +
                                          p % config.block_size;
    }
    return slots;
  }

  // The group's other samples start from the leader's cached prompt: full blocks shared, the
  // partial last block copied.
  void spawn_followers(Seq& leader) {
    const int64_t prefix = leader.cached;
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
    // Prefill up to prefill_chunk prompt tokens this step, sequence by sequence (the last one
    // may stop mid-prompt and continue next step).
    int64_t budget = config.prefill_chunk;
    for (size_t k = 0; k < active.size() && budget > 0; ++k) {
      auto& s = active[k];
      if (!s->prefilling()) continue;
      const int64_t n = std::min<int64_t>(budget, static_cast<int64_t>(s->tokens.size()) - 1 - s->cached);
      budget -= n;
      std::vector<int64_t> chunk(s->tokens.begin() + s->cached, s->tokens.begin() + s->cached + n);
      std::vector<Seq*> one = {s.get()};
      model.forward_cached(at::tensor(chunk, at::kLong).unsqueeze(0), at::full({1}, s->cached, at::kLong),
                           at::full({1}, n, at::kLong), slots_of(one, s->cached + n), cache);
      s->cached += n;
      stats.prefill_tokens += n;
      if (!s->prefilling() && s->followers > 0) spawn_followers(*s);  // appends to `active`
    }
    // One decode step for every sequence whose prompt is cached.
    std::vector<Seq*> ready;
    for (auto& s : active)
      if (!s->prefilling()) ready.push_back(s.get());
    if (!ready.empty()) {
      const int64_t B = static_cast<int64_t>(ready.size());
      int64_t L = 0;
      std::vector<int64_t> last(B), start(B);
      for (int64_t b = 0; b < B; ++b) {
        last[b] = ready[b]->tokens.back();
        start[b] = ready[b]->cached;
        L = std::max<int64_t>(L, start[b] + 1);
      }
      at::Tensor logits = model.forward_cached(at::tensor(last, at::kLong).unsqueeze(1), at::tensor(start, at::kLong),
                                               at::ones({B}, at::kLong), slots_of(ready, L), cache)
                              .select(1, 0);
      const at::Tensor logp = logits.log_softmax(-1);
      for (int64_t b = 0; b < B; ++b) {
        Seq& s = *ready[b];
        const int64_t tok = sample_token(logits[b], s.sampling, s.gen);
        s.tokens.push_back(static_cast<int32_t>(tok));
        s.logprobs.push_back(logp[b][tok].item<float>());
        s.versions.push_back(version);
        s.cached += 1;
        ++stats.decode_tokens;
        const auto& stops = s.sampling.stop_tokens;
        if (std::find(stops.begin(), stops.end(), static_cast<int32_t>(tok)) != stops.end()) finish(s, "stop");
        else if (s.generated() >= s.sampling.max_new_tokens) finish(s, "length");
      }
    }
    std::erase_if(active, [](const std::unique_ptr<Seq>& s) { return s->blocks.empty(); });
    return true;
  }
};

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
