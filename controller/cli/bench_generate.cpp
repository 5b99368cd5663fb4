// `flotilla bench generate`: the generation engine's prefill and decode rates at several batch
// sizes, each as a share of what this machine can do (a measured sgemm rate for the FLOPs, a
// measured memory bandwidth for the bytes a decode step reads), with and without prefix sharing,
// and next to an eager libtorch loop (models::eager_greedy) in the same process. `flotilla bench
// update`: a policy update over whole sequences against one with shared prompts.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <limits>
#include <map>
#include <optional>

#include "controller/cli/commands.hpp"
#include "algorithms/lm_trainer.hpp"
#include "core/error.hpp"
#include "models/generation.hpp"
#include "models/inference.hpp"
#include "models/transformer.hpp"

namespace flotilla::controller {
namespace {

using clock = std::chrono::steady_clock;
double since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }

// The best of `tries` timings of f (after one warm-up call).
template <class F>
double best_seconds(F f, int tries) {
  f();
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < tries; ++i) {
    const auto t = clock::now();
    f();
    best = std::min(best, since(t));
  }
  return best;
}

// GFLOP/s of a linear layer, x [rows, k] times w [n, k] transposed, run the engine's way
// (models::split_mm) on `threads` threads.
double sgemm_gflops(int64_t rows, int64_t k, int64_t n, int threads) {
  const int before = at::get_num_threads();
  at::set_num_threads(threads);
  const at::Tensor x = at::randn({rows, k}), w = at::randn({n, k}), out = at::empty({rows, n});
  const double flops = 2.0 * static_cast<double>(rows * k * n);
  const int reps = static_cast<int>(std::clamp(2e9 / flops, 1.0, 1000.0));
  const double s = best_seconds([&] {
    for (int i = 0; i < reps; ++i) models::split_mm(out, x, w);
  }, 3);
  at::set_num_threads(before);
  return flops * reps / s / 1e9;
}

// GB/s of reading 256 MiB (a sum over it).
double read_bandwidth_gbs() {
  const at::Tensor a = at::ones({int64_t{64} << 20});
  const double s = best_seconds([&] { (void)a.sum().item<float>(); }, 5);
  return static_cast<double>(a.numel() * 4) / s / 1e9;
}

// What one token costs the model: multiply-adds of its weight matrices, and of attention per
// position of context.
struct Costs {
  double body_params = 0, head_params = 0, kv_bytes_per_position = 0, attention_flops_per_position = 0;
  explicit Costs(const models::CausalLm& lm) {
    const models::LmConfig& c = lm.config();
    for (const auto& [name, t] : lm.named_parameters())
      if (t.dim() == 2 && name.find("layers.") != std::string::npos) body_params += static_cast<double>(t.numel());
    head_params = static_cast<double>(c.vocab_size * c.hidden_size);
    kv_bytes_per_position = 2.0 * static_cast<double>(c.num_hidden_layers * c.num_key_value_heads * c.head_dim) * 4;
    attention_flops_per_position = 4.0 * static_cast<double>(c.num_hidden_layers * c.num_attention_heads * c.head_dim);
  }
  // Bytes of the weight matrices a decode step reads.
  double weight_bytes(const std::string& weights) const { return (body_params + head_params) * (weights == "bfloat16" ? 2 : 4); }
  // FLOPs of prefilling `seqs` prompts of P tokens (the head only at their last position).
  double prefill(int64_t seqs, int64_t P) const {
    return static_cast<double>(seqs) * (2 * body_params * static_cast<double>(P) + 2 * head_params +
                                        attention_flops_per_position * static_cast<double>(P * (P + 1) / 2));
  }
  // FLOPs of `rows` decode tokens at an average context of `context` positions.
  double decode(int64_t rows, double context) const {
    return static_cast<double>(rows) * (2 * (body_params + head_params) + attention_flops_per_position * context);
  }
};

struct EngineRun {
  double wall_s = 0;
  models::EngineStats stats;
  std::vector<std::vector<int32_t>> tokens;  // by row: prompt p's samples at rows p*n .. p*n+n-1
  std::vector<std::vector<float>> logprobs;
  std::vector<double> step_s;  // each engine step's time
};

// Greedy decoding of every prompt's n samples (sharing the prompt's prefill when n > 1); prompt p
// generates lengths[p] tokens.
EngineRun run_engine(models::CausalLm& lm, const at::Tensor& prompts, int n, const std::vector<int64_t>& lengths,
                     models::EngineConfig c) {
  const int64_t R = prompts.size(0), P = prompts.size(1);
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  c.max_batch = std::max<int64_t>(c.max_batch, n);
  c.num_blocks = c.max_batch * ((P + longest) / c.block_size + 2);
  models::GenerationEngine engine(lm, c);
  for (int64_t p = 0; p < R; ++p) {
    models::GenerationRequest r;
    r.id = p;
    r.n = n;
    const at::Tensor row = prompts[p].contiguous();
    r.prompt.assign(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + P);
    r.sampling.temperature = 0;
    r.sampling.max_new_tokens = lengths[static_cast<size_t>(p)];
    engine.submit(r);
  }
  EngineRun out;
  out.tokens.resize(static_cast<size_t>(R * n));
  out.logprobs.resize(out.tokens.size());
  const auto t = clock::now();
  for (auto s = clock::now(); engine.step(); s = clock::now()) {
    out.step_s.push_back(since(s));
    for (auto& g : engine.take_finished()) {
      out.tokens[static_cast<size_t>(g.request_id * n + g.sample)] = std::move(g.tokens);
      out.logprobs[static_cast<size_t>(g.request_id * n + g.sample)] = std::move(g.logprobs);
    }
  }
  out.wall_s = since(t);
  out.stats = engine.stats();
  return out;
}

int64_t generated(const EngineRun& r) {
  int64_t n = 0;
  for (const auto& t : r.tokens) n += static_cast<int64_t>(t.size());
  return n;
}

// How far another run's greedy tokens and log-probs are from a baseline's: the share of tokens
// that agree, and the log-prob differences over each row's tokens up to its first disagreement.
nlohmann::ordered_json compare(const EngineRun& base, const EngineRun& other) {
  int64_t same = 0, total = 0, compared = 0;
  double sum = 0, worst = 0;
  for (size_t r = 0; r < base.tokens.size(); ++r) {
    bool agree = true;
    for (size_t i = 0; i < base.tokens[r].size(); ++i) {
      ++total;
      agree = agree && i < other.tokens[r].size() && other.tokens[r][i] == base.tokens[r][i];
      if (!agree) continue;
      ++same, ++compared;
      const double d = std::abs(static_cast<double>(other.logprobs[r][i]) - base.logprobs[r][i]);
      sum += d, worst = std::max(worst, d);
    }
  }
  return {{"same_tokens", static_cast<double>(same) / static_cast<double>(std::max<int64_t>(total, 1))},
          {"mean_abs_logprob_diff", sum / static_cast<double>(std::max<int64_t>(compared, 1))},
          {"max_abs_logprob_diff", worst}};
}

double percentile(std::vector<double> xs, double q) {
  std::sort(xs.begin(), xs.end());
  return xs.empty() ? 0 : xs[static_cast<size_t>(q * static_cast<double>(xs.size() - 1))];
}

}  // namespace

int bench_generate(const GenerateBenchArgs& args) {
  if (args.threads > 0) at::set_num_threads(args.threads);
  const int threads = at::get_num_threads();
  models::CausalLm lm = models::CausalLm::load(args.model);
  const models::LmConfig& c = lm.config();
  const int64_t P = args.prompt_len, G = args.gen_len;
  if (c.head != "lm") throw ConfigError(args.model + " has a " + c.head + " head; generation needs a language-model head");
  if (P + 2 * G > c.max_position_embeddings)
    throw ConfigError(fmt::format("--prompt-len plus twice --gen-len is {}, more than the model's max_position_embeddings {}", P + 2 * G,
                                  c.max_position_embeddings));
  const Costs costs(lm);
  const bool bf16 = args.weights == "bfloat16";

  // The machine's limits: sgemm on all threads split the engine's way (and on one core), memory
  // read bandwidth.
  std::map<int64_t, double> sgemm, sgemm_one;  // GFLOP/s by rows
  for (int64_t rows : args.batches) {
    sgemm[rows] = sgemm_gflops(rows, c.hidden_size, c.intermediate_size, threads);
    sgemm_one[rows] = sgemm_gflops(rows, c.hidden_size, c.intermediate_size, 1);
  }
  const double sgemm_prefill = sgemm_gflops(256, c.hidden_size, c.intermediate_size, threads);
  const double bandwidth = read_bandwidth_gbs();

  nlohmann::ordered_json j = {{"model", args.model},
                              {"parameters", static_cast<int64_t>((costs.body_params + costs.head_params) + 0.5)},
                              {"weights", args.weights},
                              {"weight_bytes", costs.weight_bytes(args.weights)},
                              {"threads", threads},
                              {"prompt_len", P},
                              {"gen_len", G},
                              {"group", args.group},
                              {"sgemm_gflops_256_rows", sgemm_prefill},
                              {"read_bandwidth_gbs", bandwidth},
                              {"rows", nlohmann::json::array()}};
  if (!args.json) {
    std::cout << fmt::format("model {}: {}, {} layers, hidden {}, {:.1f}M parameters, {} weights, {} thread(s) for every loop; "
                             "prompt {}, generate {}, greedy\n",
                             args.model, c.model_type, c.num_hidden_layers, c.hidden_size,
                             (costs.body_params + costs.head_params) / 1e6, args.weights, threads, P, G);
    std::cout << fmt::format("this machine: sgemm on {} thread(s) {:.1f} GFLOP/s at 256 rows (", threads, sgemm_prefill);
    for (int64_t B : args.batches)
      std::cout << fmt::format("{}{:.1f} at {}, one core {:.1f}", B == args.batches.front() ? "" : "; ", sgemm[B], B, sgemm_one[B]);
    std::cout << fmt::format("), memory read {:.1f} GB/s\n", bandwidth);
  }
  models::EngineConfig config;
  config.weights = args.weights;
  for (int64_t B : args.batches) {
    at::manual_seed(static_cast<int64_t>(args.seed) + B);
    // A batch the group does not divide (batch 1, say) runs without groups.
    const int group = B % args.group == 0 ? args.group : 1;
    const int64_t R = B / group;
    const at::Tensor prompts = at::randint(0, c.vocab_size, {R, P}, at::kLong);
    const at::Tensor rows = prompts.repeat_interleave(group, 0);  // every sample's prompt, [B, P]
    // Every prompt prefilled in the first step, then decode steps only: the two phases apart.
    config.max_batch = B;
    config.prefill_chunk = B * P;
    const EngineRun e = run_engine(lm, rows, 1, std::vector<int64_t>(static_cast<size_t>(B), G), config);
    const models::EngineStats& s = e.stats;
    const double prefill_gflops = costs.prefill(B, P) / s.prefill_s / 1e9;
    const double context = static_cast<double>(P) + static_cast<double>(G) / 2;
    const double decode_gflops = costs.decode(s.decode_rows, context) / s.decode_s / 1e9;
    const double decode_gbs = static_cast<double>(s.decode_steps) *
                              (costs.weight_bytes(args.weights) + costs.kv_bytes_per_position * context * static_cast<double>(B)) /
                              s.decode_s / 1e9;
    nlohmann::ordered_json row = {{"batch", B},
                                  {"tokens_per_second", static_cast<double>(generated(e)) / e.wall_s},
                                  {"prefill_tokens_per_second", static_cast<double>(B * P) / s.prefill_s},
                                  {"prefill_gflops", prefill_gflops},
                                  {"prefill_sgemm_share", prefill_gflops / sgemm_prefill},
                                  {"decode_tokens_per_second", static_cast<double>(s.decode_rows) / s.decode_s},
                                  {"decode_gflops", decode_gflops},
                                  {"sgemm_gflops", sgemm[B]},
                                  {"sgemm_gflops_one_core", sgemm_one[B]},
                                  {"decode_sgemm_share", decode_gflops / sgemm[B]},
                                  {"decode_gbs", decode_gbs},
                                  {"decode_bandwidth_share", decode_gbs / bandwidth}};
    std::string extra;
    if (bf16) {  // the same run with float32 weights: what rounding the weights costs
      models::EngineConfig f32 = config;
      f32.weights = "float32";
      const EngineRun f = run_engine(lm, rows, 1, std::vector<int64_t>(static_cast<size_t>(B), G), f32);
      row["float32"] = compare(f, e);
      row["float32"]["tokens_per_second"] = static_cast<double>(generated(f)) / f.wall_s;
      extra += fmt::format("  against float32 weights ({:.1f} tok/s): same tokens {:.1f}%, log-prob difference mean {:.4f}, max {:.4f}\n",
                           row["float32"]["tokens_per_second"].get<double>(), 100 * row["float32"]["same_tokens"].get<double>(),
                           row["float32"]["mean_abs_logprob_diff"].get<double>(), row["float32"]["max_abs_logprob_diff"].get<double>());
    }
    if (group > 1) {
      const EngineRun g = run_engine(lm, prompts, group, std::vector<int64_t>(static_cast<size_t>(R), G), config);
      const double tps = static_cast<double>(generated(g)) / g.wall_s;
      row["shared"] = {{"tokens_per_second", tps},
                       {"prefill_tokens", g.stats.prefill_tokens},
                       {"unshared_prefill_tokens", s.prefill_tokens},
                       {"prefill_s", g.stats.prefill_s},
                       {"unshared_prefill_s", s.prefill_s},
                       {"gain", tps / row["tokens_per_second"].get<double>()},
                       {"same_tokens", g.tokens == e.tokens}};
      extra += fmt::format("  shared prefixes (groups of {}): {:.1f} tok/s, {:.2f}x; prefill {} tokens in {:.3f} s against {} in {:.3f} s\n",
                           group, tps, tps / row["tokens_per_second"].get<double>(), g.stats.prefill_tokens, g.stats.prefill_s,
                           s.prefill_tokens, s.prefill_s);
    }
    if (args.reference) {
      // The eager loop's matrix products are OpenBLAS's own calls. On several threads it runs
      // twice, OpenBLAS on one thread and on as many as libtorch, and the faster run counts (one
      // avoids oversubscribing the cores, the other splits the products).
      const int blas_before = set_openblas_threads(1);
      struct Eager {
        models::EagerGreedy r;
        double wall = 0;
        int blas_threads = 1;
      };
      std::optional<Eager> best;
      for (int blas : {1, threads}) {
        if (blas > 1 && (blas_before == 0 || threads == 1)) break;
        set_openblas_threads(blas);
        const auto t = clock::now();
        Eager run{models::eager_greedy(lm, rows, G), 0, blas};
        run.wall = since(t);
        if (!best || run.wall < best->wall) best = std::move(run);
      }
      if (blas_before > 0) set_openblas_threads(blas_before);
      const models::EagerGreedy& r = best->r;
      const double tps = static_cast<double>(B * G) / best->wall;
      // The share of the engine's greedy tokens the eager loop also chose (float sums in another
      // order can turn a near tie).
      const at::Tensor mine = at::zeros({B, G}, at::kLong);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < std::min<int64_t>(G, static_cast<int64_t>(e.tokens[static_cast<size_t>(b)].size())); ++i)
          mine[b][i] = e.tokens[static_cast<size_t>(b)][static_cast<size_t>(i)];
      const double same = (mine == r.tokens).to(at::kDouble).mean().item<double>();
      row["reference"] = {{"tokens_per_second", tps},
                          {"prefill_tokens_per_second", static_cast<double>(B * P) / r.prefill_s},
                          {"decode_tokens_per_second", static_cast<double>(B * (G - 1)) / std::max(r.decode_s, 1e-12)},
                          {"openblas_threads", best->blas_threads},
                          {"same_tokens", same}};
      row["ratio"] = row["tokens_per_second"].get<double>() / tps;
      extra += fmt::format("  eager libtorch loop (OpenBLAS on {} thread(s)): {:.1f} tok/s (prefill {:.0f} tok/s, decode {:.1f} tok/s); "
                           "engine/eager {:.2f}; same tokens {:.1f}%\n",
                           best->blas_threads, tps, static_cast<double>(B * P) / r.prefill_s,
                           static_cast<double>(B * (G - 1)) / std::max(r.decode_s, 1e-12), row["ratio"].get<double>(), 100 * same);
    }
    // A batch-1 decode step is bound by reading the weights: its share is of the memory bandwidth.
    const std::string decode_share =
        B == 1 ? fmt::format("{:.1f} GB/s, {:.0f}% of memory", decode_gbs, 100 * decode_gbs / bandwidth)
               : fmt::format("{:.1f} GFLOP/s, {:.0f}% of sgemm at {} rows", decode_gflops, 100 * decode_gflops / sgemm[B], B);
    if (!args.json)
      std::cout << fmt::format("batch {}: {:.1f} tok/s; prefill {:.0f} tok/s ({:.1f} GFLOP/s, {:.0f}% of sgemm); decode {:.1f} tok/s ({})\n",
                               B, row["tokens_per_second"].get<double>(), row["prefill_tokens_per_second"].get<double>(), prefill_gflops,
                               100 * prefill_gflops / sgemm_prefill, row["decode_tokens_per_second"].get<double>(), decode_share)
                << extra << std::flush;
    j["rows"].push_back(row);
  }
  if (args.stream) {
    // Continuous batching: 4x the largest batch of requests of varied lengths through that many
    // slots, so prompts arrive while others decode. Chunked prefill bounds a step's work; whole
    // prompts make the decoding sequences wait for them.
    const int64_t B = *std::max_element(args.batches.begin(), args.batches.end()), R = 4 * B;
    at::manual_seed(static_cast<int64_t>(args.seed));
    const at::Tensor prompts = at::randint(0, c.vocab_size, {R, P}, at::kLong);
    const at::Tensor lens = at::randint(std::max<int64_t>(1, G / 2), G + G / 2 + 1, {R}, at::kLong);
    const std::vector<int64_t> lengths(lens.data_ptr<int64_t>(), lens.data_ptr<int64_t>() + R);
    config.max_batch = B;
    nlohmann::ordered_json stream = {{"requests", R}, {"slots", B}};
    for (const int64_t chunk : {args.prefill_chunk, R * P}) {
      config.prefill_chunk = chunk;
      const EngineRun e = run_engine(lm, prompts, 1, lengths, config);
      const double tps = static_cast<double>(generated(e)) / e.wall_s;
      const std::string key = chunk == args.prefill_chunk ? "chunked" : "whole_prompts";
      stream[key] = {{"prefill_chunk", chunk},
                     {"tokens_per_second", tps},
                     {"steps", e.stats.steps},
                     {"median_step_s", percentile(e.step_s, 0.5)},
                     {"p99_step_s", percentile(e.step_s, 0.99)},
                     {"longest_step_s", percentile(e.step_s, 1.0)}};
      if (!args.json)
        std::cout << fmt::format("stream of {} requests through {} slots, prefill chunk {}: {:.1f} tok/s; step median {:.3f} s, "
                                 "p99 {:.3f} s, longest {:.3f} s\n",
                                 R, B, key == "chunked" ? std::to_string(chunk) : "unbounded (whole prompts)", tps,
                                 percentile(e.step_s, 0.5), percentile(e.step_s, 0.99), percentile(e.step_s, 1.0));
    }
    j["stream"] = stream;
  }
  if (args.json) std::cout << j.dump() << "\n";
  return 0;
}


// `flotilla bench update`: one policy update (GRPO's PPO-clip loss) on a batch of groups, rows
// that share their prompt, through the model's whole sequences and with shared prompts.
int bench_update(const UpdateBenchArgs& args) {
  at::set_num_threads(args.threads);
  const int before_blas = set_openblas_threads(1);  // libtorch's threads run the rest; no oversubscription
  models::CausalLm whole = models::CausalLm::load(args.model), shared = models::CausalLm::load(args.model);
  const models::LmConfig& c = whole.config();
  if (c.head != "lm") throw ConfigError(args.model + " has a " + c.head + " head; a policy update needs a language-model head");
  const int64_t P = args.prompt_len, G = args.gen_len, n = args.group, rows = args.prompts * n, T = P + G;
  if (T > c.max_position_embeddings)
    throw ConfigError(fmt::format("--prompt-len plus --gen-len is {}, more than the model's max_position_embeddings {}", T,
                                  c.max_position_embeddings));
  // Prompts of P/2 .. P tokens, each sampled n times with 1 .. G response tokens, right-padded.
  at::manual_seed(static_cast<int64_t>(args.seed));
  core::Batch b;
  at::Tensor tokens = at::zeros({rows, T}, at::kLong), mask = at::zeros({rows, T - 1}), last = at::zeros({rows}, at::kLong);
  int64_t response_tokens = 0, prompt_tokens = 0;
  for (int64_t p = 0; p < args.prompts; ++p) {
    const int64_t len = at::randint(std::max<int64_t>(1, P / 2), P + 1, {1}).item<int64_t>();
    const at::Tensor prompt = at::randint(0, c.vocab_size, {len}, at::kLong);
    prompt_tokens += len;
    for (int64_t i = p * n; i < (p + 1) * n; ++i) {
      const int64_t r = at::randint(1, G + 1, {1}).item<int64_t>();
      tokens[i].slice(0, 0, len).copy_(prompt);
      tokens[i].slice(0, len, len + r).copy_(at::randint(0, c.vocab_size, {r}, at::kLong));
      mask[i].slice(0, len - 1, len - 1 + r).fill_(1.0);
      last[i] = len + r - 1;
      response_tokens += r;
    }
  }
  b.set("tokens", tokens);
  b.set("response_mask", mask);
  b.set("last", last);
  b.set("advantages", at::randn({rows, 1}) * mask);
  algorithms::PolicyLossConfig loss;
  algorithms::LmOptimConfig o;
  o.lr = 1e-6, o.micro_batch = args.micro_batch, o.shared_prompts = false;
  algorithms::LmTrainer on_whole(whole, o);
  o.shared_prompts = true;
  algorithms::LmTrainer on_shared(shared, o);
  // The first update of each, from the same weights, must agree: the loss they computed.
  auto pg_loss = [](const core::Scalars& s) {
    for (const auto& [k, v] : s)
      if (k == "actor/pg_loss") return v;
    return 0.0;
  };
  const double loss_whole = pg_loss(on_whole.update_policy(b, loss, 1)), loss_shared = pg_loss(on_shared.update_policy(b, loss, 1));
  std::vector<double> t_whole, t_shared;
  for (int i = 0; i < args.repeats; ++i) {  // interleaved, so that the machine's drift hits both
    auto t = clock::now();
    on_whole.update_policy(b, loss, 2 + i);
    t_whole.push_back(since(t));
    t = clock::now();
    on_shared.update_policy(b, loss, 2 + i);
    t_shared.push_back(since(t));
  }
  set_openblas_threads(before_blas);
  const double w = percentile(t_whole, 0.5), s = percentile(t_shared, 0.5);
  // Positions through the body: every row's whole sequence, or each prompt once and every row's response.
  const int64_t whole_positions = rows * T;
  nlohmann::ordered_json j = {{"model", args.model},
                              {"threads", args.threads},
                              {"prompts", args.prompts},
                              {"group", n},
                              {"rows", rows},
                              {"micro_batch", args.micro_batch},
                              {"prompt_tokens", prompt_tokens},
                              {"response_tokens", response_tokens},
                              {"whole_s", w},
                              {"shared_s", s},
                              {"speedup", w / s},
                              {"whole_response_tokens_per_second", static_cast<double>(response_tokens) / w},
                              {"shared_response_tokens_per_second", static_cast<double>(response_tokens) / s},
                              {"pg_loss_whole", loss_whole},
                              {"pg_loss_shared", loss_shared}};
  if (args.json) {
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::cout << fmt::format("model {}: {}, {} layers, hidden {}; {} thread(s), OpenBLAS on one\n", args.model, c.model_type,
                           c.num_hidden_layers, c.hidden_size, args.threads);
  std::cout << fmt::format("batch: {} prompts of {}..{} tokens x {} samples of 1..{} tokens = {} rows ({} positions padded), "
                           "micro-batches of {}\n",
                           args.prompts, std::max<int64_t>(1, P / 2), P, n, G, rows, whole_positions, args.micro_batch);
  std::cout << fmt::format("{:<16} {:>12} {:>22}\n", "update", "median s", "response tokens/s");
  std::cout << fmt::format("{:<16} {:>12.4f} {:>22.0f}\n", "whole sequences", w, static_cast<double>(response_tokens) / w);
  std::cout << fmt::format("{:<16} {:>12.4f} {:>22.0f}\n", "shared prompts", s, static_cast<double>(response_tokens) / s);
  std::cout << fmt::format("speedup {:.2f}x over {} updates each; first update's pg_loss {:.6f} (whole) and {:.6f} (shared)\n", w / s,
                           args.repeats, loss_whole, loss_shared);
  return 0;
}

}  // namespace flotilla::controller
