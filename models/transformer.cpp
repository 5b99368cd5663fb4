#include "models/transformer.hpp"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <map>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"

namespace flotilla::models {
namespace fs = std::filesystem;

bool splits_vocabulary(const LmConfig& config, int tp) { return tp > 1 && config.vocab_size % tp == 0; }

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

// Megatron's three operators between the whole and the split parts of a tensor-parallel block.
// The group travels as a pointer in the autograd context.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
const TensorParallel& group_of(AutogradContext* ctx) {
  return *reinterpret_cast<const TensorParallel*>(ctx->saved_data["tp"].toInt());
}
torch::Tensor summed(const TensorParallel& tp, const torch::Tensor& x) {
  torch::Tensor r = x.contiguous().clone();
  tp.all_reduce(r);
  return r;
}
// Into a split block: the same tensor forward, the gradients of every rank's part summed back.
struct CopyToTp : torch::autograd::Function<CopyToTp> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t tp) {
    ctx->saved_data["tp"] = tp;
    return x.clone();
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) { return {summed(group_of(ctx), g[0]), torch::Tensor()}; }
};
// Out of a row-parallel block: the partial outputs summed forward, the gradient as it is back.
struct ReduceFromTp : torch::autograd::Function<ReduceFromTp> {
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, int64_t tp) {
    return summed(*reinterpret_cast<const TensorParallel*>(tp), x);
  }
  static variable_list backward(AutogradContext*, variable_list g) { return {g[0], torch::Tensor()}; }
};
// Out of a vocabulary-parallel head: every rank's logits side by side, each rank's columns back.
struct GatherFromTp : torch::autograd::Function<GatherFromTp> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t tp) {
    ctx->saved_data["tp"] = tp;
    return reinterpret_cast<const TensorParallel*>(tp)->all_gather_last(x.contiguous());
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const TensorParallel& tp = group_of(ctx);
    return {g[0].chunk(tp.size, -1)[static_cast<size_t>(tp.rank)].contiguous(), torch::Tensor()};
  }
};
int64_t handle(const TensorParallel& tp) { return reinterpret_cast<int64_t>(&tp); }
torch::Tensor copy_to(const TensorParallel& tp, const torch::Tensor& x) { return tp.size > 1 ? CopyToTp::apply(x, handle(tp)) : x; }
torch::Tensor reduce_from(const TensorParallel& tp, const torch::Tensor& x) {
  return tp.size > 1 ? ReduceFromTp::apply(x, handle(tp)) : x;
}
torch::Tensor gather_from(const TensorParallel& tp, const torch::Tensor& x) {
  return tp.size > 1 ? GatherFromTp::apply(x, handle(tp)) : x;
}

int64_t split(int64_t n, const TensorParallel& tp, const std::string& what) {
  if (n % tp.size != 0)
    throw ConfigError(what + " (" + std::to_string(n) + ") does not split over " + std::to_string(tp.size) + " tensor-parallel ranks");
  return n / tp.size;
}

// One layer's keys and values, [B, kv_heads, T, head_dim], rotated.
struct KeysValues {
  torch::Tensor k, v;
};

struct AttentionImpl : torch::nn::Module {
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RmsNorm q_norm{nullptr}, k_norm{nullptr};
  int64_t heads, kv_heads, head_dim;  // this rank's heads
  AttentionImpl(const LmConfig& c, const TensorParallel& tp)
      : heads(split(c.num_attention_heads, tp, "num_attention_heads")),
        kv_heads(split(c.num_key_value_heads, tp, "num_key_value_heads")),
        head_dim(c.head_dim) {
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

  // x [B, T, H]; cos, sin [T, head_dim] (or [B, 1, T, head_dim], each row its own positions).
  // Queries [B, heads, T, head_dim], keys and values [B, kv_heads, T, head_dim], rotated.
  KeysValues project(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor& q) {
    const int64_t B = x.size(0), T = x.size(1);
    q = q_proj->forward(x).view({B, T, heads, head_dim});
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
    return {k, v};
  }

  // Attention of `q` over `kv` through the output projection: [B, T, H]. `hidden` [.., T, keys]
  // is true where a query may not look.
  torch::Tensor attend(const torch::Tensor& q, KeysValues kv, const torch::Tensor& hidden) {
    const int64_t B = q.size(0), T = q.size(2);
    if (kv_heads != heads) {  // grouped-query attention: each key/value head serves heads/kv_heads queries
      kv.k = kv.k.repeat_interleave(heads / kv_heads, 1);
      kv.v = kv.v.repeat_interleave(heads / kv_heads, 1);
    }
    torch::Tensor scores = torch::matmul(q, kv.k.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim));
    scores = scores.masked_fill(hidden, -std::numeric_limits<float>::infinity());
    torch::Tensor out = torch::matmul(torch::softmax(scores, -1), kv.v);  // [B, heads, T, head_dim]
    return o_proj->forward(out.transpose(1, 2).reshape({B, T, heads * head_dim}));
  }

  // Causal self-attention over x alone; `kept` (when given) receives x's keys and values.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, KeysValues* kept = nullptr) {
    torch::Tensor q;
    KeysValues kv = project(x, cos, sin, q);
    if (kept) *kept = kv;
    const int64_t T = x.size(1);
    return attend(q, std::move(kv), torch::ones({T, T}, torch::kBool).triu(1));
  }

  // x's positions after `before`'s (each row's keys and values of the positions ahead of it):
  // x's queries look at `before` and at x causally, hidden where `hidden` [B, 1, T, P + T] says.
  torch::Tensor forward_after(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, const KeysValues& before,
                              const torch::Tensor& hidden) {
    torch::Tensor q;
    KeysValues kv = project(x, cos, sin, q);
    return attend(q, {torch::cat({before.k, kv.k}, 2), torch::cat({before.v, kv.v}, 2)}, hidden);
  }
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  MlpImpl(const LmConfig& c, const TensorParallel& tp) {
    const int64_t units = split(c.intermediate_size, tp, "intermediate_size");
    gate_proj = register_module("gate_proj", linear(c.hidden_size, units, false));
    up_proj = register_module("up_proj", linear(c.hidden_size, units, false));
    down_proj = register_module("down_proj", linear(units, c.hidden_size, false));
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
  const TensorParallel* tp;
  LayerImpl(const LmConfig& c, const TensorParallel& group) : tp(&group) {
    input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps));
    self_attn = register_module("self_attn", Attention(c, group));
    post_attention_layernorm = register_module("post_attention_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps));
    mlp = register_module("mlp", Mlp(c, group));
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin, KeysValues* kept = nullptr) {
    x = x + reduce_from(*tp, self_attn->forward(copy_to(*tp, input_layernorm->forward(x)), cos, sin, kept));
    return mlp_block(x);
  }
  // x's positions after the keys and values `before` (AttentionImpl::forward_after).
  torch::Tensor forward_after(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin, const KeysValues& before,
                              const torch::Tensor& hidden) {
    x = x + reduce_from(*tp, self_attn->forward_after(copy_to(*tp, input_layernorm->forward(x)), cos, sin, before, hidden));
    return mlp_block(x);
  }
  torch::Tensor mlp_block(const torch::Tensor& x) {
    return x + reduce_from(*tp, mlp->forward(copy_to(*tp, post_attention_layernorm->forward(x))));
  }
};
TORCH_MODULE(Layer);

struct BodyImpl : torch::nn::Module {
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RmsNorm norm{nullptr};
  BodyImpl(const LmConfig& c, const TensorParallel& tp) {
    const int64_t rows = tp.vocab_parallel ? split(c.vocab_size, tp, "vocab_size") : c.vocab_size;
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(rows, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(Layer(c, tp));
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

std::vector<int64_t> same_prompts(const at::Tensor& tokens, const at::Tensor& starts) {
  if (tokens.dim() != 2 || tokens.scalar_type() != torch::kLong || starts.dim() != 1 || starts.size(0) != tokens.size(0) ||
      starts.scalar_type() != torch::kLong)
    throw Error("same_prompts(): expected int64 tokens [B, T] and one int64 start per row");
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const torch::Tensor st = starts.contiguous(), tok = tokens.contiguous();
  const auto s = st.accessor<int64_t, 1>();
  const auto t = tok.accessor<int64_t, 2>();
  std::vector<int64_t> first, group(static_cast<size_t>(B));
  std::unordered_multimap<size_t, int64_t> seen;  // a prompt's hash: its index in `first`
  for (int64_t r = 0; r < B; ++r) {
    if (s[r] < 1 || s[r] > T)
      throw Error("row " + std::to_string(r) + "'s response starts at " + std::to_string(s[r]) + ", outside [1, " + std::to_string(T) + "]");
    const int64_t* row = &t[r][0];
    size_t h = std::hash<int64_t>()(s[r]);
    for (int64_t i = 0; i < s[r]; ++i) h = (h * 1000003u) ^ std::hash<int64_t>()(row[i]);
    int64_t g = -1;
    for (auto [it, end] = seen.equal_range(h); it != end && g < 0; ++it) {
      const int64_t f = first[static_cast<size_t>(it->second)];
      if (s[f] == s[r] && std::equal(row, row + s[r], &t[f][0])) g = it->second;
    }
    if (g < 0) {
      g = static_cast<int64_t>(first.size());
      first.push_back(r);
      seen.emplace(h, g);
    }
    group[static_cast<size_t>(r)] = g;
  }
  return group;
}

struct CausalLm::Impl : torch::nn::Module {
  LmConfig config;
  TensorParallel tp;
  Body model{nullptr};
  torch::nn::Linear lm_head{nullptr}, score{nullptr};

  Impl(const LmConfig& c, TensorParallel group) : config(c), tp(std::move(group)) {
    if (c.head != "lm" && c.head != "value" && c.head != "reward")
      throw ConfigError("head '" + c.head + "' is not one of lm, value, reward");
    if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size) throw ConfigError("tensor-parallel rank " + std::to_string(tp.rank) + " of " + std::to_string(tp.size));
    tp.vocab_parallel = tp.vocab_parallel && splits_vocabulary(c, tp.size);
    if (tp.size > 1 && (!tp.all_reduce || !tp.all_gather_last)) throw Error("a tensor-parallel model needs its group's collectives");
    // A tensor-parallel rank draws the whole model as one process would (the same generator
    // state before and after) and keeps its slices.
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    at::Tensor drawn;
    if (tp.size > 1) {
      std::lock_guard lock(gen.mutex());
      drawn = gen.get_state();
    }
    model = register_module("model", Body(c, tp));
    const int64_t vocab = tp.vocab_parallel ? c.vocab_size / tp.size : c.vocab_size;
    if (c.head != "lm") score = register_module("score", linear(c.hidden_size, 1, false));
    else if (!c.tie_word_embeddings) lm_head = register_module("lm_head", linear(c.hidden_size, vocab, false));
    torch::NoGradGuard no_grad;
    if (tp.size > 1) {
      {
        std::lock_guard lock(gen.mutex());
        gen.set_state(drawn);
      }
      const Impl whole(c, TensorParallel{});
      const auto from = whole.named_parameters();
      for (auto& p : named_parameters()) p.value().copy_(slice(p.key(), from[p.key()]));
      return;
    }
    for (auto& p : named_parameters()) {
      const std::string& name = p.key();
      if (name.find("norm") != std::string::npos) p.value().fill_(1.0);
      else if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) p.value().zero_();
      else p.value().normal_(0.0, 0.02);
    }
  }

  // The dimension this rank's slice of a parameter is cut along, or -1 when it holds all of it.
  int split_dim(const std::string& name) const { return tp.size > 1 ? tensor_parallel_dim(name, tp.vocab_parallel) : -1; }
  std::vector<int64_t> whole_shape(const std::string& name, const torch::Tensor& local) const {
    std::vector<int64_t> s(local.sizes().begin(), local.sizes().end());
    if (const int d = split_dim(name); d >= 0) s[static_cast<size_t>(d)] *= tp.size;
    return s;
  }
  torch::Tensor slice(const std::string& name, const torch::Tensor& whole) const {
    const int d = split_dim(name);
    return d >= 0 ? whole.chunk(tp.size, d)[static_cast<size_t>(tp.rank)] : whole;
  }

  // Token embeddings; a vocabulary-parallel rank looks up the tokens in its range, and the
  // ranks' rows are summed.
  torch::Tensor embed(const torch::Tensor& tokens) {
    if (!tp.vocab_parallel) return model->embed_tokens->forward(tokens);
    const int64_t rows = model->embed_tokens->weight.size(0);
    const torch::Tensor local = tokens - tp.rank * rows;
    const torch::Tensor inside = ((local >= 0) & (local < rows)).unsqueeze(-1).to(torch::kFloat);
    return reduce_from(tp, model->embed_tokens->forward(local.clamp(0, rows - 1)) * inside);
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
    if (tp.vocab_parallel) h = copy_to(tp, h);
    const torch::Tensor logits = lm_head ? lm_head->forward(h) : torch::matmul(h, model->embed_tokens->weight.t());
    return tp.vocab_parallel ? gather_from(tp, logits) : logits;
  }

  torch::Tensor scores(const torch::Tensor& tokens) {
    if (!score) throw Error("this model has a language-model head, not a value or reward head");
    check_tokens(tokens);
    auto [cos, sin] = rope(tokens.size(1));
    torch::Tensor x = embed(tokens);
    for (const auto& layer : *model->layers) x = layer->as<LayerImpl>()->forward(x, cos, sin);
    return score->forward(model->norm->forward(x)).squeeze(-1);
  }

  torch::Tensor forward(const torch::Tensor& tokens) {
    check_tokens(tokens);
    auto [cos, sin] = rope(tokens.size(1));
    torch::Tensor x = embed(tokens);
    for (const auto& layer : *model->layers) x = layer->as<LayerImpl>()->forward(x, cos, sin);
    return head(x);
  }

  // The body's output (before the final norm) at each row's log-prob positions from starts[r] - 1
  // on: [B, S, H], S = T - min(starts), column j at position starts[r] - 1 + j (past the row's
  // end, padding). Rows whose first starts[r] tokens are the same (a GRPO group's prompt, a DPO
  // pair's) share one pass over those positions: it runs once per distinct prompt, and each row's
  // own positions run after it, attending to its keys and values.
  torch::Tensor response_states(const torch::Tensor& tokens, const torch::Tensor& starts) {
    check_tokens(tokens);
    const int64_t B = tokens.size(0), T = tokens.size(1);
    const torch::Tensor st = starts.contiguous(), tok = tokens.contiguous();
    const std::vector<int64_t> group = same_prompts(tok, st);
    std::vector<int64_t> first;  // each distinct prompt's first row
    for (int64_t r = 0; r < B; ++r)
      if (group[static_cast<size_t>(r)] == static_cast<int64_t>(first.size())) first.push_back(r);
    const int64_t P = st.max().item<int64_t>(), lo = st.min().item<int64_t>();
    const torch::Tensor firsts = torch::tensor(first, torch::kLong), groups = torch::tensor(group, torch::kLong);
    const int64_t S = T - lo, own = S - 1;  // window columns; each row's own positions in it
    // The prompts' pass, every distinct prompt's first P tokens (a shorter prompt's row goes on
    // with its own response: those positions are hidden from the rows below).
    auto [cos, sin] = rope(P);
    torch::Tensor xp = embed(tok.index_select(0, firsts).narrow(1, 0, P));
    // Each row's own positions starts[r] .. starts[r] + own - 1 (inputs past the row's end: padding).
    const torch::Tensor pos = st.unsqueeze(1) + torch::arange(own, torch::kLong);
    auto [cos_s, sin_s] = rope_at(pos);
    cos_s = cos_s.unsqueeze(1), sin_s = sin_s.unsqueeze(1);
    torch::Tensor xs = embed(tok.gather(1, pos.clamp_max(T - 1)));
    // Hidden from row r's queries: its prompt's positions from starts[r] on, and its own later ones.
    const torch::Tensor past = (torch::arange(P, torch::kLong).unsqueeze(0) >= st.unsqueeze(1)).view({B, 1, 1, P});
    const torch::Tensor hidden = torch::cat({past.expand({B, 1, own, P}), torch::ones({own, own}, torch::kBool).triu(1).expand({B, 1, own, own})}, 3);
    for (const auto& l : *model->layers) {
      LayerImpl& layer = *l->as<LayerImpl>();
      KeysValues kv;
      xp = layer.forward(xp, cos, sin, &kv);
      if (own > 0) xs = layer.forward_after(xs, cos_s, sin_s, {kv.k.index_select(0, groups), kv.v.index_select(0, groups)}, hidden);
    }
    // Column 0: each row's last prompt position, from its prompt's pass.
    const torch::Tensor last = xp.index({groups, st - 1});
    return own > 0 ? torch::cat({last.unsqueeze(1), xs}, 1) : last.unsqueeze(1);
  }
};

CausalLm::CausalLm(const LmConfig& config, TensorParallel tp) : impl_(std::make_unique<Impl>(config, std::move(tp))) {}
CausalLm::~CausalLm() = default;
CausalLm::CausalLm(CausalLm&&) noexcept = default;
CausalLm& CausalLm::operator=(CausalLm&&) noexcept = default;

const LmConfig& CausalLm::config() const { return impl_->config; }
const TensorParallel& CausalLm::tensor_parallel() const { return impl_->tp; }

at::Tensor CausalLm::forward(const at::Tensor& tokens) { return impl_->forward(tokens); }

at::Tensor CausalLm::response_logits(const at::Tensor& tokens, const at::Tensor& starts) {
  return impl_->head(impl_->response_states(tokens, starts));
}

at::Tensor CausalLm::response_scores(const at::Tensor& tokens, const at::Tensor& starts) {
  if (!impl_->score) throw Error("this model has a language-model head, not a value or reward head");
  return impl_->score->forward(impl_->model->norm->forward(impl_->response_states(tokens, starts))).squeeze(-1);
}

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
  const int64_t kv_heads = c.num_key_value_heads / impl_->tp.size;  // this rank's
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    cache.k.push_back(torch::zeros({num_blocks * block_size, kv_heads, c.head_dim}));
    cache.v.push_back(torch::zeros({num_blocks * block_size, kv_heads, c.head_dim}));
  }
  return cache;
}

at::Tensor CausalLm::scores(const at::Tensor& tokens) { return impl_->scores(tokens); }

at::Tensor CausalLm::rewards(const at::Tensor& tokens, const at::Tensor& last) {
  if (impl_->config.head != "reward") throw Error("rewards() needs a reward head; this model's head is " + impl_->config.head);
  if (last.dim() != 1 || last.size(0) != tokens.size(0) || (last < 0).any().item<bool>() ||
      (last >= tokens.size(1)).any().item<bool>())
    throw Error("rewards(): `last` must hold one index in [0, length) per row");
  return impl_->scores(tokens).gather(1, last.unsqueeze(1)).squeeze(1);
}

void CausalLm::reduce_tensor_parallel_gradients() {
  if (impl_->tp.size == 1) return;
  for (auto& p : impl_->named_parameters()) {
    const std::string& n = p.key();
    const bool per_head = n.find("q_norm") != std::string::npos || n.find("k_norm") != std::string::npos;
    if (per_head && p.value().grad().defined()) {
      at::Tensor g = p.value().mutable_grad();
      impl_->tp.all_reduce(g);
    }
  }
}

std::vector<std::pair<std::string, at::Tensor>> CausalLm::named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : impl_->named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

CausalLm CausalLm::load(const fs::path& dir) { return load(dir, ""); }

CausalLm CausalLm::load(const fs::path& dir, const std::string& head, TensorParallel tp) {
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
  CausalLm lm(config, std::move(tp));
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
    if (it->second.sizes() != c10::IntArrayRef(impl_->whole_shape(p.key(), p.value()))) {
      std::ostringstream s;
      s << dir.string() << ": tensor '" << p.key() << "' has shape " << it->second.sizes() << ", the config implies "
        << c10::IntArrayRef(impl_->whole_shape(p.key(), p.value()));
      throw FormatError(s.str());
    }
    const auto dt = it->second.scalar_type();
    if (dt != torch::kFloat && dt != torch::kBFloat16 && dt != torch::kHalf)
      throw FormatError(dir.string() + ": tensor '" + p.key() + "' is " + std::string(c10::toString(dt)) +
                        "; weights must be F32, BF16 or F16");
    p.value().copy_(impl_->slice(p.key(), it->second).to(torch::kFloat));
  }
}

void CausalLm::save(const fs::path& dir, const std::string& dtype) const {
  if (impl_->tp.size > 1)
    throw Error("a tensor-parallel rank holds a slice of the model; gather the slices into one model to save it");
  std::vector<std::pair<std::string, at::Tensor>> whole;
  for (const auto& p : impl_->named_parameters()) whole.emplace_back(p.key(), p.value().detach());
  save(dir, whole, dtype);
}

void CausalLm::save(const fs::path& dir, const std::vector<std::pair<std::string, at::Tensor>>& whole, const std::string& dtype) const {
  const torch::ScalarType dt = dtype_of(dtype);
  const auto named = impl_->named_parameters();
  if (whole.size() != named.size())
    throw Error("saving " + std::to_string(whole.size()) + " tensors for a model of " + std::to_string(named.size()) + " parameters");
  std::vector<std::pair<std::string, at::Tensor>> out;
  size_t i = 0;
  for (const auto& p : named) {
    const auto& [name, t] = whole[i++];
    if (name != p.key() || t.sizes() != c10::IntArrayRef(impl_->whole_shape(p.key(), p.value())))
      throw Error("saving tensor '" + name + "' where the model has '" + p.key() + "' of another shape");
    out.emplace_back(name, t.to(dt).contiguous());
  }
  fs::create_directories(dir);
  core::save_safetensors(dir / "model.safetensors", out, {{"format", "pt"}});
  LmConfig c = impl_->config;
  c.torch_dtype = dtype;
  const std::string json = c.to_json();
  core::write_file_atomically(dir / "config.json", [&](std::ostream& o) { o << json; });
}

}  // namespace flotilla::models
