// The generation engine: cached decoding against full recomputation, reported log-probabilities
// against a full forward pass, sampling controls, GRPO prompt sharing, continuous batching, stop
// tokens, abort and resume, and bad requests.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "models/generation.hpp"
#include "models/inference.hpp"
#include "models/transformer.hpp"
#include "support/tiny_lm.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using models::GenerationRequest;

namespace {

models::CausalLm spread_model(const std::string& arch = "qwen3") { return test::spread_model(arch, true, 8.0, 5); }

std::vector<int32_t> prompt_of(int n, int offset) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((offset + 37 * i) % 300);
  return p;
}

GenerationRequest request(int64_t id, std::vector<int32_t> prompt, int64_t max_new, double temperature = 1.0, int n = 1) {
  GenerationRequest r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.sampling.max_new_tokens = max_new;
  r.sampling.temperature = temperature;
  r.sampling.seed = static_cast<uint64_t>(100 + id);
  r.n = n;
  return r;
}

// log p of each generated token under a full forward pass of prompt + tokens.
std::vector<float> full_forward_logprobs(models::CausalLm& lm, const std::vector<int32_t>& prompt,
                                         const std::vector<int32_t>& tokens) {
  std::vector<int64_t> all(prompt.begin(), prompt.end());
  all.insert(all.end(), tokens.begin(), tokens.end());
  at::Tensor lp = lm.token_log_probs(at::tensor(all, at::kLong).unsqueeze(0))[0];
  lp = lp.narrow(0, lp.size(0) - static_cast<int64_t>(tokens.size()), static_cast<int64_t>(tokens.size())).contiguous();
  return std::vector<float>(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
}

}  // namespace

// Logits of every position of two sequences under the engine's forward pass: a chunk of each
// together (blocks in no particular order), then one token per step of each.
std::vector<at::Tensor> stepped_logits(models::InferenceModel& m, models::CausalLm& lm, const std::vector<std::vector<int32_t>>& seqs,
                                       int64_t chunk) {
  models::KvCache cache = lm.make_cache(64, 4);
  std::vector<std::vector<int64_t>> tables(seqs.size());
  int64_t next = 0;
  for (size_t i = 0; i < seqs.size(); ++i)
    for (size_t b = 0; b * 4 < seqs[i].size(); ++b) tables[i].push_back((7 * next++ + 3) % 64);  // distinct, scattered
  std::vector<std::vector<at::Tensor>> rows(seqs.size());
  for (int64_t p = chunk - 1; p < static_cast<int64_t>(seqs[0].size()); ++p) {
    models::StepRows s;
    std::vector<size_t> which;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (p >= static_cast<int64_t>(seqs[i].size())) continue;
      const int64_t first = p == chunk - 1 ? 0 : p;
      s.add(tables[i], 4, first, seqs[i].data() + first, p - first + 1, true);
      which.push_back(i);
    }
    const at::Tensor logits = m.forward(s, cache);
    REQUIRE(logits.size(0) == static_cast<int64_t>(which.size()));
    for (size_t k = 0; k < which.size(); ++k) rows[which[k]].push_back(logits[static_cast<int64_t>(k)]);
  }
  std::vector<at::Tensor> out;
  for (auto& r : rows) out.push_back(at::stack(r));
  return out;
}

at::Tensor full_logits(models::CausalLm& lm, const std::vector<int32_t>& seq, int64_t from) {
  at::NoGradGuard no_grad;
  const std::vector<int64_t> ids(seq.begin(), seq.end());
  const at::Tensor full = lm.forward(at::tensor(ids, at::kLong).unsqueeze(0))[0];
  return full.narrow(0, from, full.size(0) - from);
}

TEST_CASE("the_engines_forward_pass_gives_the_logits_of_full_recomputation") {
  for (const char* arch : {"qwen3", "qwen2", "llama"}) {
    CAPTURE(std::string(arch));
    models::CausalLm lm = spread_model(arch);
    const std::vector<std::vector<int32_t>> seqs = {prompt_of(72, 3), prompt_of(40, 5)};
    models::InferenceModel f32(lm, "float32"), bf16(lm, "bfloat16");
    // Float32 products of up to 64 rows run on the engine's packed panels, larger ones on sgemm:
    // first chunks of 7 and 38 put 14 and 76 rows in a step, and later steps have 1 or 2.
    auto check = [&](double f32_tol, double bf16_tol) {
     for (int64_t chunk : {7, 38}) {
      CAPTURE(chunk);
      const auto got = stepped_logits(f32, lm, seqs, chunk);
      const auto rounded = stepped_logits(bf16, lm, seqs, chunk);
      for (size_t i = 0; i < seqs.size(); ++i) {
        const at::Tensor want = full_logits(lm, seqs[i], chunk - 1);
        CHECK((got[i] - want).abs().max().item<double>() < f32_tol);
        // Bfloat16 weights: close, and not equal (the weights really are rounded).
        const double err = (rounded[i] - want).abs().max().item<double>() / want.abs().max().item<double>();
        CHECK(err < bf16_tol);
        CHECK(err > 1e-6);
      }
     }
    };
    check(1e-4, 0.05);
    // A weight update (as a rollout worker's) is seen by the next step, in both precisions.
    {
      at::NoGradGuard no_grad;
      for (auto& [name, t] : lm.named_parameters())
        if (name.find("up_proj.weight") != std::string::npos || name.find("q_proj.weight") != std::string::npos) t.mul_(1.5);
    }
    check(1e-4, 0.05);
  }
}

TEST_CASE("engine_greedy_tokens_equal_the_eager_loop") {
  models::CausalLm lm = spread_model();
  at::manual_seed(3);
  const at::Tensor prompts = at::randint(0, 300, {3, 10}, at::kLong);
  const models::EagerGreedy eager = models::eager_greedy(lm, prompts, 8);
  models::GenerationEngine engine(lm, {.block_size = 4, .num_blocks = 64, .max_batch = 3, .prefill_chunk = 12});
  for (int64_t r = 0; r < 3; ++r) {
    const at::Tensor row = prompts[r].contiguous();
    engine.submit(request(r, std::vector<int32_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + 10), 8, 0.0));
  }
  const auto out = engine.run();
  REQUIRE(out.size() == 3);
  for (const auto& g : out) {
    CAPTURE(g.request_id);
    const at::Tensor want = eager.tokens[g.request_id];
    REQUIRE(static_cast<int64_t>(g.tokens.size()) == want.size(0));
    for (size_t i = 0; i < g.tokens.size(); ++i) CHECK(g.tokens[i] == want[static_cast<int64_t>(i)].item<int64_t>());
  }
}

TEST_CASE("engine_logprobs_equal_a_full_forward_pass") {
  models::CausalLm lm = spread_model();
  const models::EngineConfig c{.block_size = 4, .num_blocks = 256, .max_batch = 8, .prefill_chunk = 5};
  models::GenerationEngine engine(lm, c);
  GenerationRequest a = request(1, prompt_of(13, 1), 12);
  a.sampling.top_k = 20;
  GenerationRequest b = request(2, prompt_of(3, 7), 9, 0.7);
  b.sampling.top_p = 0.9;
  GenerationRequest g = request(3, prompt_of(10, 11), 8, 1.0, 3);  // a group of 3 samples
  engine.set_policy_version(42);
  engine.submit(a);
  engine.submit(b);
  engine.submit(g);
  const auto out = engine.run();
  REQUIRE(out.size() == 5);
  for (const auto& gen : out) {
    CAPTURE(gen.request_id);
    CAPTURE(gen.sample);
    const auto& prompt = gen.request_id == 1 ? a.prompt : gen.request_id == 2 ? b.prompt : g.prompt;
    const std::vector<float> ref = full_forward_logprobs(lm, prompt, gen.tokens);
    REQUIRE(ref.size() == gen.logprobs.size());
    for (size_t t = 0; t < ref.size(); ++t) CHECK(std::fabs(ref[t] - gen.logprobs[t]) < 1e-4);
    for (int64_t v : gen.versions) CHECK(v == 42);
    CHECK(gen.finish_reason == "length");
  }
  CHECK(engine.free_blocks() == c.num_blocks);  // every block is back
}

TEST_CASE("greedy_decoding_follows_the_argmax_and_seeds_repeat_samples") {
  models::CausalLm lm = spread_model();
  models::GenerationEngine engine(lm, models::EngineConfig{});
  const std::vector<int32_t> prompt = prompt_of(6, 2);
  engine.submit(request(1, prompt, 10, 0.0));
  const auto greedy = engine.run();
  REQUIRE(greedy.size() == 1);
  std::vector<int64_t> seq(prompt.begin(), prompt.end());
  for (int32_t tok : greedy[0].tokens) {
    const int64_t best = lm.forward(at::tensor(seq, at::kLong).unsqueeze(0))[0][-1].argmax().item<int64_t>();
    CHECK(tok == best);
    seq.push_back(tok);
  }
  // The same seed gives the same samples; another seed gives others.
  auto sample = [&](uint64_t seed) {
    GenerationRequest r = request(7, prompt, 16);
    r.sampling.seed = seed;
    engine.submit(r);
    return engine.run()[0].tokens;
  };
  CHECK(sample(9) == sample(9));
  CHECK(sample(9) != sample(10));
}

TEST_CASE("a_group_prefills_its_prompt_once_and_shares_its_blocks") {
  models::CausalLm lm = spread_model();
  const models::EngineConfig c{.block_size = 4, .num_blocks = 64};
  models::GenerationEngine engine(lm, c);
  engine.submit(request(1, prompt_of(9, 4), 5, 1.0, 4));
  const auto out = engine.run();
  REQUIRE(out.size() == 4);
  // The first 8 prompt positions are cached once; each of 3 followers shares their 2 full blocks.
  CHECK(engine.stats().prefill_tokens == 8);
  CHECK(engine.stats().shared_blocks == 6);
  for (const auto& g : out) CHECK(g.tokens.size() == 5);
  CHECK(engine.free_blocks() == c.num_blocks);
}

TEST_CASE("groups_start_only_when_their_samples_and_blocks_fit") {
  models::CausalLm lm = spread_model();
  // Groups of 4 samples, 6 prompt tokens and up to 10 new: 4 blocks per sample, 13 per group (the
  // first prompt block shared). 20 blocks hold one group at a time, though after the first
  // group's leader took its 4 the free count alone (16) would let the second in.
  models::GenerationEngine tight(lm, {.block_size = 4, .num_blocks = 20, .max_batch = 16});
  for (int64_t id = 0; id < 3; ++id) tight.submit(request(id, prompt_of(6, static_cast<int>(id)), 10, 1.0, 4));
  const auto out = tight.run();  // the second group's followers would find no block left
  CHECK(out.size() == 12);
  CHECK(tight.free_blocks() == 20);
  // max_batch counts the samples a group will spread into.
  models::GenerationEngine narrow(lm, {.num_blocks = 256, .max_batch = 5});  // room for one group of 4, not two
  for (int64_t id = 0; id < 3; ++id) narrow.submit(request(id, prompt_of(5, static_cast<int>(id)), 6, 1.0, 4));
  int64_t most = 0, done = 0;
  while (narrow.step()) {
    most = std::max(most, narrow.active());
    done += static_cast<int64_t>(narrow.take_finished().size());
  }
  CHECK(done == 12);
  CHECK(most == 4);
}

TEST_CASE("continuous_batching_refills_finished_slots") {
  models::CausalLm lm = spread_model();
  models::GenerationEngine engine(lm, {.max_batch = 2});
  const std::vector<int64_t> lengths = {3, 12, 4, 5, 2};
  for (size_t i = 0; i < lengths.size(); ++i) engine.submit(request(static_cast<int64_t>(i), prompt_of(4, static_cast<int>(i)), lengths[i]));
  std::vector<models::Generation> done;
  int steps = 0;
  while (engine.step()) {
    ++steps;
    for (auto& g : engine.take_finished()) done.push_back(std::move(g));
  }
  REQUIRE(done.size() == 5);
  for (const auto& g : done) CHECK(static_cast<int64_t>(g.tokens.size()) == lengths[static_cast<size_t>(g.request_id)]);
  // Two sequences at a time over 26 tokens: about 13 steps; one at a time would take 26.
  CHECK(steps <= 15);
  // Request 2 waited for a free slot (0's), started in it and finished while 1 still ran.
  auto position = [&](int64_t id) {
    return std::find_if(done.begin(), done.end(), [&](const models::Generation& g) { return g.request_id == id; }) - done.begin();
  };
  CHECK(position(0) < position(2));
  CHECK(position(2) < position(1));
}

TEST_CASE("stop_tokens_end_generation_and_aborted_requests_resume") {
  models::CausalLm lm = spread_model();
  models::GenerationEngine engine(lm, models::EngineConfig{});
  const std::vector<int32_t> prompt = prompt_of(5, 9);
  engine.submit(request(1, prompt, 12, 0.0));
  const std::vector<int32_t> full = engine.run()[0].tokens;
  REQUIRE(full.size() == 12);
  GenerationRequest stop = request(2, prompt, 12, 0.0);
  stop.sampling.stop_tokens = {full[3]};
  engine.submit(stop);
  const auto stopped = engine.run()[0];
  CHECK(stopped.finish_reason == "stop");
  CHECK(stopped.tokens.size() <= 4);
  CHECK(stopped.tokens.back() == full[3]);
  // Abort after a few steps, then resume with the tokens so far: the greedy sequence is the same.
  engine.submit(request(3, prompt, 12, 0.0));
  for (int i = 0; i < 5; ++i) engine.step();
  engine.abort(3);
  engine.step();
  const auto aborted = engine.take_finished();
  REQUIRE(aborted.size() == 1);
  CHECK(aborted[0].finish_reason == "abort");
  const std::vector<int32_t> so_far = aborted[0].tokens;
  REQUIRE(so_far.size() < 12);
  GenerationRequest resume = request(3, prompt, 12, 0.0);
  resume.resume = {so_far};
  engine.submit(resume);
  const auto rest = engine.run();
  REQUIRE(rest.size() == 1);
  std::vector<int32_t> joined = so_far;
  joined.insert(joined.end(), rest[0].tokens.begin(), rest[0].tokens.end());
  CHECK(joined == full);
  CHECK(rest[0].finish_reason == "length");
}

TEST_CASE("bad_generation_requests_name_the_problem") {
  models::CausalLm lm = spread_model();
  models::GenerationEngine engine(lm, {.block_size = 4, .num_blocks = 4, .max_batch = 2});
  CHECK_THROWS_AS(engine.submit(request(1, {}, 4)), ConfigError);
  CHECK_THROWS_AS(engine.submit(request(2, {1, 300}, 4)), ConfigError);
  CHECK_THROWS_AS(engine.submit(request(3, {1, 2}, 4, 1.0, 3)), ConfigError);  // more samples than the batch
  CHECK_THROWS_AS(engine.submit(request(4, prompt_of(10, 0), 20)), ConfigError);  // more blocks than exist
  GenerationRequest p = request(5, {1, 2}, 4);
  p.sampling.top_p = 0;
  CHECK_THROWS_AS(engine.submit(p), ConfigError);
}
