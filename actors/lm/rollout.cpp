#include "actors/lm/rollout.hpp"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.hpp"
#include "models/generation.hpp"
#include "models/transformer.hpp"

namespace flotilla::actors::lm {

core::Batch sample_rows(const std::vector<Sample>& samples, int64_t width) {
  const int64_t B = static_cast<int64_t>(samples.size());
  if (B == 0) return {};
  int64_t T = std::max<int64_t>(1, width);
  for (const auto& s : samples) T = std::max<int64_t>(T, static_cast<int64_t>(s.prompt->size() + s.tokens.size()));
  at::Tensor ids = at::zeros({B, T}, at::kLong), mask = at::zeros({B, T - 1}), lp = at::zeros({B, T - 1});
  at::Tensor versions = at::full({B, T - 1}, -1, at::kLong);
  at::Tensor resp_len = at::zeros({B}, at::kLong), last = at::zeros({B}, at::kLong), truncated = at::zeros({B});
  at::Tensor example = at::zeros({B}, at::kLong), group = at::zeros({B}, at::kLong), admitted = at::zeros({B}, at::kLong);
  at::Tensor oldest = at::zeros({B}, at::kLong), start = at::zeros({B}, at::kLong);
  auto tok = ids.accessor<int64_t, 2>(), ver = versions.accessor<int64_t, 2>();
  auto m = mask.accessor<float, 2>(), l = lp.accessor<float, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const Sample& s = samples[static_cast<size_t>(b)];
    const int64_t len = static_cast<int64_t>(s.prompt->size()), R = static_cast<int64_t>(s.tokens.size());
    for (int64_t t = 0; t < len; ++t) tok[b][t] = (*s.prompt)[static_cast<size_t>(t)];
    for (int64_t i = 0; i < R; ++i) {
      tok[b][len + i] = s.tokens[static_cast<size_t>(i)];
      m[b][len - 1 + i] = 1.0f;
      l[b][len - 1 + i] = s.logprobs[static_cast<size_t>(i)];
      ver[b][len - 1 + i] = s.versions[static_cast<size_t>(i)];
    }
    resp_len[b] = R;
    last[b] = len + R - 1;
    truncated[b] = s.truncated ? 1.0 : 0.0;
    example[b] = s.example;
    group[b] = s.group;
    admitted[b] = s.admitted;
    start[b] = s.start_step;
    oldest[b] = s.versions.empty() ? s.admitted : *std::min_element(s.versions.begin(), s.versions.end());
  }
  core::Batch out;
  out.set("tokens", ids);
  out.set("response_mask", mask);
  out.set("last", last);
  out.set("rollout_log_prob", lp);
  out.set("token_version", versions);
  out.set("response_length", resp_len);
  out.set("truncated", truncated);
  out.set("example", example);
  out.set("group", group);
  out.set("admitted", admitted);
  out.set("oldest_version", oldest);
  out.set("start_step", start);
  return out;
}

core::Batch generate(RolloutWeights& weights, const RlhfConfig& c, const Generate& g, const core::Batch& prompts,
                     runtime::Lifecycle& life, std::atomic<int64_t>& tokens) {
  if (prompts.size() == 0) return {};  // a data-parallel rank's empty chunk
  models::GenerationEngine engine(*weights.model, c.engine());
  const at::Tensor pt = prompts["prompt_tokens"].contiguous(), pl = prompts["prompt_len"].contiguous();
  const auto prompt = pt.accessor<int64_t, 2>();
  const auto prompt_len = pl.accessor<int64_t, 1>();
  const int64_t P = pt.size(0), n = g.n;
  models::SamplingParams sampling = sampling_of(c, g.temperature, g.top_p, g.top_k, g.max_new_tokens, g.stop);
  std::vector<std::vector<int32_t>> texts(static_cast<size_t>(P));
  for (int64_t p = 0; p < P; ++p) {
    models::GenerationRequest r;
    r.id = p;
    for (int64_t t = 0; t < prompt_len[p]; ++t) r.prompt.push_back(static_cast<int32_t>(prompt[p][t]));
    texts[static_cast<size_t>(p)] = r.prompt;
    r.n = static_cast<int>(n);
    r.sampling = sampling;
    r.sampling.seed = g.seed + static_cast<uint64_t>(p) * static_cast<uint64_t>(n);
    engine.submit(std::move(r));
  }
  // Step by step: a pause parks the generation between two engine steps, and a weight sync lands
  // there.
  int64_t counted = 0;
  while (true) {
    {
      std::lock_guard lock(weights.mutex);
      engine.set_policy_version(weights.version);
      if (!engine.step()) break;
    }
    tokens += engine.stats().decode_tokens - counted;
    counted = engine.stats().decode_tokens;
    if (!life.checkpoint()) throw Error("the worker is stopping");
  }
  std::vector<models::Generation> gens = engine.take_finished();
  std::sort(gens.begin(), gens.end(), [](const auto& x, const auto& y) {
    return std::tie(x.request_id, x.sample) < std::tie(y.request_id, y.sample);
  });
  if (static_cast<int64_t>(gens.size()) != P * n)
    throw Error("the engine returned " + std::to_string(gens.size()) + " of " + std::to_string(P * n) + " samples");
  const at::Tensor examples = prompts.contains("example") ? prompts["example"].contiguous() : at::zeros({P}, at::kLong);
  std::vector<Sample> samples;
  for (auto& s : gens)
    samples.push_back({&texts[static_cast<size_t>(s.request_id)], std::move(s.tokens), std::move(s.logprobs), std::move(s.versions),
                       s.finish_reason == "length", examples[s.request_id].item<int64_t>(), s.request_id, weights.version});
  return sample_rows(samples, g.width);
}

models::SamplingParams sampling_of(const RlhfConfig& c, double temperature, double top_p, int64_t top_k,
                                   int64_t max_new_tokens, const std::vector<int32_t>& stop) {
  models::SamplingParams s;
  s.temperature = temperature;
  s.top_p = top_p;
  s.top_k = top_k;
  s.max_new_tokens = max_new_tokens > 0 ? max_new_tokens : c.max_new_tokens;
  s.stop_tokens = stop;
  return s;
}

void unflatten(models::CausalLm& lm, const at::Tensor& flat) {
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& [name, p] : lm.named_parameters()) {
    if (offset + p.numel() > flat.numel()) throw FormatError("the weights received are smaller than the model");
    p.copy_(flat.slice(0, offset, offset + p.numel()).view(p.sizes()));
    offset += p.numel();
  }
  if (offset != flat.numel())
    throw FormatError("the weights received have " + std::to_string(flat.numel()) + " values, the model " + std::to_string(offset));
}

}  // namespace flotilla::actors::lm
