#include "models/transformer.hpp"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <optional>
#include <sstream>
#include <map>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"

namespace flotilla::models {
namespace fs = std::filesystem;

// ---- Config ----

LmConfig LmConfig::from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(source + ": not valid JSON: " + e.what());
  }
  auto fail = [&](const std::string& msg) { throw FormatError(source + ": " + msg); };
  auto integer = [&](const char* key, std::optional<int64_t> fallback = std::nullopt) -> int64_t {
    if (!j.contains(key) || j[key].is_null()) {
      if (fallback) return *fallback;
      fail(std::string("missing key '") + key + "'");
    }
    if (!j[key].is_number_integer() || j[key].get<int64_t>() < 1)
      fail(std::string("'") + key + "' must be a positive integer, got " + j[key].dump());
    return j[key].get<int64_t>();
  };
  auto number = [&](const char* key, double fallback) -> double {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number()) fail(std::string("'") + key + "' must be a number, got " + j[key].dump());
    return j[key].get<double>();
  };
  LmConfig c;
  if (!j.contains("model_type") || !j["model_type"].is_string()) fail("missing key 'model_type'");
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type != "llama" && c.model_type != "qwen2" && c.model_type != "qwen3")
    fail("model_type '" + c.model_type + "' is not supported (supported: llama, qwen2, qwen3)");
  c.vocab_size = integer("vocab_size");
  c.hidden_size = integer("hidden_size");
  c.intermediate_size = integer("intermediate_size");
  c.num_hidden_layers = integer("num_hidden_layers");
  c.num_attention_heads = integer("num_attention_heads");
  c.num_key_value_heads = integer("num_key_value_heads", c.num_attention_heads);
  if (!j.contains("head_dim") && c.hidden_size % c.num_attention_heads != 0)
    fail("hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
         std::to_string(c.num_attention_heads) + " (and there is no head_dim)");
  c.head_dim = integer("head_dim", c.hidden_size / c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail("num_attention_heads " + std::to_string(c.num_attention_heads) + " is not a multiple of num_key_value_heads " +
         std::to_string(c.num_key_value_heads));
  c.max_position_embeddings = integer("max_position_embeddings", 2048);
  c.rms_norm_eps = number("rms_norm_eps", 1e-6);
  c.rope_theta = number("rope_theta", 10000.0);
  if (c.rms_norm_eps <= 0) fail("'rms_norm_eps' must be positive");
  if (c.rope_theta <= 0) fail("'rope_theta' must be positive");
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.attention_bias = c.model_type == "qwen2" ? true : j.value("attention_bias", false);
  c.qk_norm = c.model_type == "qwen3";
  c.torch_dtype = j.value("torch_dtype", std::string("float32"));
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    arch = j["architectures"][0].get<std::string>();
  auto ends_with = [&](const std::string& suffix) {
    return arch.size() >= suffix.size() && arch.compare(arch.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with("ForSequenceClassification")) c.head = "reward";
  else if (ends_with("ForTokenClassification")) c.head = "value";
  else if (!arch.empty() && !ends_with("ForCausalLM"))
    fail("architecture '" + arch + "' is not supported (*ForCausalLM, *ForTokenClassification or *ForSequenceClassification)");
  if (c.head != "lm" && j.value("num_labels", 1) != 1) fail("a value or reward head has one label, not " + j["num_labels"].dump());
  return c;
}

std::string LmConfig::to_json() const {
  const std::string family = model_type == "llama" ? "Llama" : model_type == "qwen2" ? "Qwen2" : "Qwen3";
  const std::string arch = family + (head == "reward" ? "ForSequenceClassification"
                                     : head == "value" ? "ForTokenClassification"
                                                       : "ForCausalLM");
  nlohmann::ordered_json j = {{"architectures", {arch}},
                              {"model_type", model_type},
                              {"vocab_size", vocab_size},
                              {"hidden_size", hidden_size},
                              {"intermediate_size", intermediate_size},
                              {"num_hidden_layers", num_hidden_layers},
                              {"num_attention_heads", num_attention_heads},
                              {"num_key_value_heads", num_key_value_heads},
                              {"head_dim", head_dim},
                              {"max_position_embeddings", max_position_embeddings},
                              {"rms_norm_eps", rms_norm_eps},
                              {"rope_theta", rope_theta},
                              {"tie_word_embeddings", tie_word_embeddings},
                              {"attention_bias", attention_bias},
                              {"hidden_act", "silu"},
                              {"torch_dtype", torch_dtype}};
  if (head != "lm") j["num_labels"] = 1;
  return j.dump(2) + "\n";
}

LmConfig LmConfig::preset(const std::string& arch, const std::string& size, int64_t vocab) {
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3")
    throw ConfigError("--arch '" + arch + "' is not one of llama, qwen2, qwen3");
  if (vocab < 1) throw ConfigError("--vocab must be positive");
  LmConfig c;
  c.model_type = arch;
  c.vocab_size = vocab;
  if (size == "tiny") {
    c.hidden_size = 64, c.intermediate_size = 192, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 16;
  } else if (size == "small") {
    c.hidden_size = 256, c.intermediate_size = 768, c.num_hidden_layers = 4;
    c.num_attention_heads = 8, c.num_key_value_heads = 4, c.head_dim = 32;
  } else if (size == "base") {  // 133M parameters with a 32k vocabulary: Qwen3-shaped, for benchmarks
    c.hidden_size = 1024, c.intermediate_size = 3072, c.num_hidden_layers = 8;
    c.num_attention_heads = 16, c.num_key_value_heads = 8, c.head_dim = 64;
  } else {
    throw ConfigError("--preset '" + size + "' is not one of tiny, small, base");
  }
  c.max_position_embeddings = 4096;
  c.rope_theta = arch == "llama" ? 500000.0 : 1000000.0;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = true;
  c.attention_bias = arch == "qwen2";
  c.qk_norm = arch == "qwen3";
  return c;
}

int tensor_parallel_dim(const std::string& name, bool vocab_parallel) {
  auto ends = [&](const std::string& s) { return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
  for (const char* column : {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"})
    if (ends(std::string(column) + ".weight") || ends(std::string(column) + ".bias")) return 0;
  if (ends("o_proj.weight") || ends("down_proj.weight")) return 1;
  if (vocab_parallel && (ends("embed_tokens.weight") || ends("lm_head.weight"))) return 0;
  return -1;
}

// ---- Modules (parameter names follow Hugging Face's) ----

namespace {

struct RmsNormImpl : torch::nn::Module {
  torch::Tensor weight;
  double eps;
  RmsNormImpl(int64_t dim, double e) : eps(e) { weight = register_parameter("weight", torch::ones({dim})); }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor f = x.to(torch::kFloat);
    return weight * (f * torch::rsqrt(f.pow(2).mean(-1, true) + eps));
  }
};
TORCH_MODULE(RmsNorm);

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

struct AttentionImpl : torch::nn::Module {
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RmsNorm q_norm{nullptr}, k_norm{nullptr};
  int64_t heads, kv_heads, head_dim;
  explicit AttentionImpl(const LmConfig& c) : heads(c.num_attention_heads), kv_heads(c.num_key_value_heads), head_dim(c.head_dim) {
    q_proj = register_module("q_proj", linear(c.hidden_size, heads * head_dim, c.attention_bias));
    k_proj = register_module("k_proj", linear(c.hidden_size, kv_heads * head_dim, c.attention_bias));
    v_proj = register_module("v_proj", linear(c.hidden_size, kv_heads * head_dim, c.attention_bias));
    o_proj = register_module("o_proj", linear(heads * head_dim, c.hidden_size, false));
    if (c.qk_norm) {
      q_norm = register_module("q_norm", RmsNorm(head_dim, c.rms_norm_eps));
      k_norm = register_module("k_norm", RmsNorm(head_dim, c.rms_norm_eps));
    }
  }

  static torch::Tensor rotate_half(const torch::Tensor& x) {
    const int64_t half = x.size(-1) / 2;
    return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  }

  // x [B, T, H]; cos, sin [T, head_dim]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
    const int64_t B = x.size(0), T = x.size(1);
    torch::Tensor q = q_proj->forward(x).view({B, T, heads, head_dim});
    torch::Tensor k = k_proj->forward(x).view({B, T, kv_heads, head_dim});
    torch::Tensor v = v_proj->forward(x).view({B, T, kv_heads, head_dim}).transpose(1, 2);
    if (q_norm) {  // Qwen3: each head's queries and keys normalized before the rotation
      q = q_norm->forward(q);
      k = k_norm->forward(k);
    }
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    if (kv_heads != heads) {  // grouped-query attention: each key/value head serves heads/kv_heads queries
      k = k.repeat_interleave(heads / kv_heads, 1);
      v = v.repeat_interleave(heads / kv_heads, 1);
    }
    torch::Tensor scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim));
    torch::Tensor mask = torch::ones({T, T}, torch::kBool).triu(1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    torch::Tensor out = torch::matmul(torch::softmax(scores, -1), v);  // [B, heads, T, head_dim]
    return o_proj->forward(out.transpose(1, 2).reshape({B, T, heads * head_dim}));
  }

  // The cached twin of forward(): x [B, S, H]; cos, sin [B, S, head_dim] at each token's position;
  // new tokens' keys and values go to `write_slots` (where `valid`); keys come from `read_slots`
  // [B, L] with `mask` [B, 1, S, L] saying which a query may see.
  torch::Tensor forward_cached(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                               const torch::Tensor& write_slots, const torch::Tensor& valid, const torch::Tensor& read_slots,
                               const torch::Tensor& mask, torch::Tensor& k_pool, torch::Tensor& v_pool) {
    const int64_t B = x.size(0), S = x.size(1), L = read_slots.size(1);
    torch::Tensor q = q_proj->forward(x).view({B, S, heads, head_dim});
    torch::Tensor k = k_proj->forward(x).view({B, S, kv_heads, head_dim});
    torch::Tensor v = v_proj->forward(x).view({B, S, kv_heads, head_dim});
    if (q_norm) {
      q = q_norm->forward(q);
      k = k_norm->forward(k);
    }
    const torch::Tensor c = cos.unsqueeze(2), s = sin.unsqueeze(2);  // broadcast over heads
    q = q * c + rotate_half(q) * s;
    k = k * c + rotate_half(k) * s;
    const torch::Tensor rows = valid.reshape({-1}).nonzero().squeeze(1);
    const torch::Tensor dest = write_slots.reshape({-1}).index_select(0, rows);
    k_pool.index_copy_(0, dest, k.reshape({B * S, kv_heads, head_dim}).index_select(0, rows));
    v_pool.index_copy_(0, dest, v.reshape({B * S, kv_heads, head_dim}).index_select(0, rows));
    const torch::Tensor keys = k_pool.index_select(0, read_slots.reshape({-1})).view({B, L, kv_heads, head_dim}).transpose(1, 2);
    const torch::Tensor values = v_pool.index_select(0, read_slots.reshape({-1})).view({B, L, kv_heads, head_dim}).transpose(1, 2);
    // Grouped-query attention without copying keys: the `group` query heads of one key/value
    // head are stacked as extra query rows, [B, kv_heads, group * S, head_dim].
    const int64_t group = heads / kv_heads;
    torch::Tensor qg = q.transpose(1, 2).reshape({B, kv_heads, group * S, head_dim});
    torch::Tensor scores = torch::matmul(qg, keys.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim));
    scores = scores.view({B, kv_heads, group, S, L}).masked_fill(~mask.unsqueeze(1), -std::numeric_limits<float>::infinity());
    torch::Tensor out = torch::matmul(torch::softmax(scores, -1).view({B, kv_heads, group * S, L}), values);
    return o_proj->forward(out.view({B, heads, S, head_dim}).transpose(1, 2).reshape({B, S, heads * head_dim}));
  }
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  explicit MlpImpl(const LmConfig& c) {
    gate_proj = register_module("gate_proj", linear(c.hidden_size, c.intermediate_size, false));
    up_proj = register_module("up_proj", linear(c.hidden_size, c.intermediate_size, false));
    down_proj = register_module("down_proj", linear(c.intermediate_size, c.hidden_size, false));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
  }
};
TORCH_MODULE(Mlp);

struct LayerImpl : torch::nn::Module {
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
  explicit LayerImpl(const LmConfig& c) {
    input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps));
    self_attn = register_module("self_attn", Attention(c));
    post_attention_layernorm = register_module("post_attention_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps));
    mlp = register_module("mlp", Mlp(c));
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin) {
    x = x + self_attn->forward(input_layernorm->forward(x), cos, sin);
    return x + mlp->forward(post_attention_layernorm->forward(x));
  }
};
TORCH_MODULE(Layer);

struct BodyImpl : torch::nn::Module {
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RmsNorm norm{nullptr};
  explicit BodyImpl(const LmConfig& c) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(Layer(c));
    norm = register_module("norm", RmsNorm(c.hidden_size, c.rms_norm_eps));
  }
};
TORCH_MODULE(Body);

torch::ScalarType dtype_of(const std::string& name) {
  if (name == "float32") return torch::kFloat;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "float16") return torch::kHalf;
  throw ConfigError("dtype '" + name + "' is not one of float32, bfloat16, float16");
}

}  // namespace

struct CausalLm::Impl : torch::nn::Module {
  LmConfig config;
  Body model{nullptr};
  torch::nn::Linear lm_head{nullptr}, score{nullptr};

  explicit Impl(const LmConfig& c) : config(c) {
    if (c.head != "lm" && c.head != "value" && c.head != "reward")
      throw ConfigError("head '" + c.head + "' is not one of lm, value, reward");
    model = register_module("model", Body(c));
    if (c.head != "lm") score = register_module("score", linear(c.hidden_size, 1, false));
    else if (!c.tie_word_embeddings) lm_head = register_module("lm_head", linear(c.hidden_size, c.vocab_size, false));
    torch::NoGradGuard no_grad;
    for (auto& p : named_parameters()) {
      const std::string& name = p.key();
      if (name.find("norm") != std::string::npos) p.value().fill_(1.0);
      else if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) p.value().zero_();
      else p.value().normal_(0.0, 0.02);
    }
  }

  // cos and sin of the rotary embedding at `positions` (any shape): [..., head_dim].
  std::pair<torch::Tensor, torch::Tensor> rope_at(const torch::Tensor& positions) const {
    const int64_t hd = config.head_dim;
    torch::Tensor inv_freq =
        1.0 / torch::pow(config.rope_theta, torch::arange(0, hd, 2, torch::kDouble) / static_cast<double>(hd));
    torch::Tensor freqs = positions.to(torch::kDouble).unsqueeze(-1) * inv_freq;
    torch::Tensor emb = torch::cat({freqs, freqs}, -1);
    return {emb.cos().to(torch::kFloat), emb.sin().to(torch::kFloat)};
  }
  std::pair<torch::Tensor, torch::Tensor> rope(int64_t T) const { return rope_at(torch::arange(T, torch::kLong)); }

  void check_tokens(const torch::Tensor& tokens) const {
    if (tokens.dim() != 2 || tokens.scalar_type() != torch::kLong)
      throw Error("the model takes int64 token ids of shape [batch, length]");
    if ((tokens < 0).any().item<bool>() || (tokens >= config.vocab_size).any().item<bool>())
      throw Error("a token id is outside the vocabulary of " + std::to_string(config.vocab_size));
  }

  torch::Tensor head(const torch::Tensor& x) {
    torch::Tensor h = model->norm->forward(x);
    if (score) throw Error("this model has a " + config.head + " head, not next-token logits");
    return lm_head ? lm_head->forward(h) : torch::matmul(h, model->embed_tokens->weight.t());
  }

  torch::Tensor scores(const torch::Tensor& tokens) {
    if (!score) throw Error("this model has a language-model head, not a value or reward head");
    check_tokens(tokens);
    auto [cos, sin] = rope(tokens.size(1));
    torch::Tensor x = model->embed_tokens->forward(tokens);
    for (const auto& layer : *model->layers) x = layer->as<LayerImpl>()->forward(x, cos, sin);
    return score->forward(model->norm->forward(x)).squeeze(-1);
  }

  torch::Tensor forward(const torch::Tensor& tokens) {
    check_tokens(tokens);
    auto [cos, sin] = rope(tokens.size(1));
    torch::Tensor x = model->embed_tokens->forward(tokens);
    for (const auto& layer : *model->layers) x = layer->as<LayerImpl>()->forward(x, cos, sin);
    return head(x);
  }

  torch::Tensor forward_cached(const torch::Tensor& tokens, const torch::Tensor& start, const torch::Tensor& count,
                               const torch::Tensor& slots, KvCache& cache) {
    check_tokens(tokens);
    const int64_t B = tokens.size(0), S = tokens.size(1), L = slots.size(1);
    const torch::Tensor i = torch::arange(S, torch::kLong).unsqueeze(0);                  // [1, S]
    const torch::Tensor valid = i < count.unsqueeze(1);                                    // [B, S]
    const torch::Tensor pos = (start.unsqueeze(1) + i).clamp_max(L - 1);                    // [B, S]
    const torch::Tensor write_slots = slots.gather(1, pos);                                 // [B, S]
    const torch::Tensor j = torch::arange(L, torch::kLong).view({1, 1, L});
    const torch::Tensor mask = ((j <= pos.unsqueeze(2)) & (j < (start + count).view({B, 1, 1}))).unsqueeze(1);
    auto [cos, sin] = rope_at(pos);
    torch::Tensor x = model->embed_tokens->forward(tokens);
    for (size_t l = 0; l < model->layers->size(); ++l) {
      auto* layer = (*model->layers)[l]->as<LayerImpl>();
      x = x + layer->self_attn->forward_cached(layer->input_layernorm->forward(x), cos, sin, write_slots, valid, slots,
                                               mask, cache.k[l], cache.v[l]);
      x = x + layer->mlp->forward(layer->post_attention_layernorm->forward(x));
    }
    return head(x);
  }
};

CausalLm::CausalLm(const LmConfig& config) : impl_(std::make_unique<Impl>(config)) {}
CausalLm::~CausalLm() = default;
CausalLm::CausalLm(CausalLm&&) noexcept = default;
CausalLm& CausalLm::operator=(CausalLm&&) noexcept = default;

const LmConfig& CausalLm::config() const { return impl_->config; }

at::Tensor CausalLm::forward(const at::Tensor& tokens) { return impl_->forward(tokens); }

at::Tensor CausalLm::token_log_probs(const at::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  const int64_t T = tokens.size(1);
  if (T < 2) return torch::zeros({tokens.size(0), 0});
  torch::Tensor logp = torch::log_softmax(forward(tokens).narrow(1, 0, T - 1), -1);
  return logp.gather(2, tokens.narrow(1, 1, T - 1).unsqueeze(2)).squeeze(2);
}

KvCache CausalLm::make_cache(int64_t num_blocks, int64_t block_size) const {
  if (num_blocks < 1 || block_size < 1) throw ConfigError("a KV cache needs at least one block of at least one position");
  const LmConfig& c = impl_->config;
  KvCache cache;
  cache.block_size = block_size;
  cache.num_blocks = num_blocks;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    cache.k.push_back(torch::zeros({num_blocks * block_size, c.num_key_value_heads, c.head_dim}));
    cache.v.push_back(torch::zeros({num_blocks * block_size, c.num_key_value_heads, c.head_dim}));
  }
  return cache;
}

at::Tensor CausalLm::forward_cached(const at::Tensor& tokens, const at::Tensor& start, const at::Tensor& count,
                                    const at::Tensor& slots, KvCache& cache) {
  torch::NoGradGuard no_grad;
  return impl_->forward_cached(tokens, start, count, slots, cache);
}

at::Tensor CausalLm::scores(const at::Tensor& tokens) { return impl_->scores(tokens); }

at::Tensor CausalLm::rewards(const at::Tensor& tokens, const at::Tensor& last) {
  if (impl_->config.head != "reward") throw Error("rewards() needs a reward head; this model's head is " + impl_->config.head);
  if (last.dim() != 1 || last.size(0) != tokens.size(0) || (last < 0).any().item<bool>() ||
      (last >= tokens.size(1)).any().item<bool>())
    throw Error("rewards(): `last` must hold one index in [0, length) per row");
  return impl_->scores(tokens).gather(1, last.unsqueeze(1)).squeeze(1);
}

std::vector<std::pair<std::string, at::Tensor>> CausalLm::named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : impl_->named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

CausalLm CausalLm::load(const fs::path& dir) { return load(dir, ""); }

CausalLm CausalLm::load(const fs::path& dir, const std::string& head) {
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path)) throw ConfigError(dir.string() + ": no config.json (is this a model directory?)");
  LmConfig config = LmConfig::from_json(core::read_file(config_path), config_path.string());
  if (!head.empty() && head != "lm" && head != "value" && head != "reward")
    throw ConfigError("model head '" + head + "' is not one of lm, value, reward");
  const bool new_head = !head.empty() && head != config.head;
  if (new_head && head == "lm" && !config.tie_word_embeddings)
    throw ConfigError(dir.string() + ": a language-model head cannot be made from a " + config.head +
                      " model with untied embeddings (no lm_head weights)");
  if (new_head) config.head = head;
  CausalLm lm(config);
  lm.read_weights(dir, new_head);
  return lm;
}

void CausalLm::load_weights(const fs::path& dir) { read_weights(dir, false); }

void CausalLm::read_weights(const fs::path& dir, bool new_head) {
  // Weights: one file, or shards listed by the index.
  std::map<std::string, at::Tensor> tensors;
  std::vector<fs::path> files;
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(dir / "model.safetensors")) {
    files.push_back(dir / "model.safetensors");
  } else if (fs::exists(index)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(core::read_file(index));
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(index.string() + ": not valid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) throw FormatError(index.string() + ": no weight_map");
    std::vector<std::string> names;
    for (const auto& [name, file] : j["weight_map"].items()) names.push_back(file.get<std::string>());
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    for (const auto& n : names) files.push_back(dir / n);
  } else {
    throw ConfigError(dir.string() + ": no model.safetensors or model.safetensors.index.json");
  }
  for (const auto& f : files)
    for (auto& [name, t] : core::load_safetensors(f).tensors) tensors[name] = t;
  torch::NoGradGuard no_grad;
  for (auto& p : impl_->named_parameters()) {
    auto it = tensors.find(p.key());
    if (it == tensors.end() && new_head && p.key() == "score.weight") {
      p.value().zero_();
      continue;
    }
    if (it == tensors.end()) throw FormatError(dir.string() + ": the checkpoint has no tensor '" + p.key() + "'");
    if (it->second.sizes() != p.value().sizes()) {
      std::ostringstream s;
      s << dir.string() << ": tensor '" << p.key() << "' has shape " << it->second.sizes() << ", the config implies "
        << p.value().sizes();
      throw FormatError(s.str());
    }
    const auto dt = it->second.scalar_type();
    if (dt != torch::kFloat && dt != torch::kBFloat16 && dt != torch::kHalf)
      throw FormatError(dir.string() + ": tensor '" + p.key() + "' is " + std::string(c10::toString(dt)) +
                        "; weights must be F32, BF16 or F16");
    p.value().copy_(it->second.to(torch::kFloat));
  }
}

void CausalLm::save(const fs::path& dir, const std::string& dtype) const {
  const torch::ScalarType dt = dtype_of(dtype);
  fs::create_directories(dir);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : impl_->named_parameters()) out.emplace_back(p.key(), p.value().detach().to(dt).contiguous());
  core::save_safetensors(dir / "model.safetensors", out, {{"format", "pt"}});
  LmConfig c = impl_->config;
  c.torch_dtype = dtype;
  const std::string json = c.to_json();
  core::write_file_atomically(dir / "config.json", [&](std::ostream& o) { o << json; });
}

}  // namespace flotilla::models
