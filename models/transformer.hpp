#pragma once
// The decoder-only transformer family of Llama, Qwen2 and Qwen3: token embedding, RMSNorm, rotary
// position embedding, grouped-query attention (optional QK-norm for Qwen3 and q/k/v biases for
// Qwen2), SwiGLU MLP, tied or separate output head. Model directories use Hugging Face's layout:
// config.json with HF's keys, model.safetensors (or shards with model.safetensors.index.json)
// with HF's parameter names, and tokenizer.json. libtorch's nn types stay in transformer.cpp.
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::models {

struct LmConfig {
  std::string model_type = "qwen3";  // llama, qwen2 or qwen3
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 1e6;
  bool tie_word_embeddings = true;
  bool attention_bias = false;  // q/k/v biases (Qwen2 always has them)
  bool qk_norm = false;         // RMSNorm of each head's queries and keys (Qwen3)
  std::string torch_dtype = "float32";
  // The output head: "lm" (next-token logits, *ForCausalLM), "value" (a scalar per position, a
  // critic; *ForTokenClassification with one label) or "reward" (a scalar read at a sequence's
  // last token; *ForSequenceClassification with one label). The scalar heads are HF's `score`.
  std::string head = "lm";

  // From config.json text; a missing or inconsistent key is a FormatError naming it and `source`.
  static LmConfig from_json(const std::string& text, const std::string& source);
  std::string to_json() const;
  // Presets for `flotilla lm init`: "tiny", "small" or "base" (133M parameters at a 32k vocabulary).
  static LmConfig preset(const std::string& arch, const std::string& size, int64_t vocab);
  // Throws ConfigError naming the first of the heads, key/value heads and MLP width that `tp`
  // tensor-parallel ranks cannot split evenly. (The vocabulary is replicated when it does not split.)
  void check_tensor_parallel(int tp) const;
};

// A paged key/value cache: for every layer, keys and values of num_blocks blocks of block_size
// positions each, as flat slots (slot = block * block_size + offset). Which slots a sequence uses
// is its block table's business (models/generation.hpp); the engine's forward pass reads and
// writes it (models/inference.hpp).
struct KvCache {
  int64_t block_size = 16, num_blocks = 0;
  std::vector<at::Tensor> k, v;  // per layer: [num_blocks * block_size, kv_heads, head_dim]
};

// The dimension tensor parallelism splits a parameter along (Megatron's layout): 0 for the
// column-parallel projections (q/k/v, gate, up: their output rows, whole heads at a time) and
// their biases, 1 for the row-parallel ones (o, down: their input columns), 0 for the token
// embedding and output head when `vocab_parallel` (each rank a range of the vocabulary, as
// Megatron and vLLM do), -1 for what every tensor-parallel rank holds whole (norms, scalar heads).
int tensor_parallel_dim(const std::string& name, bool vocab_parallel = true);

// The tensor-parallel group a model's layers are split over (Megatron's layout): this rank, the
// group's size and its collectives. The body's input is whole on every rank; attention heads and
// the MLP's intermediate units are split (column-parallel in, row-parallel out, one sum per block
// in the forward pass and one in the backward); with `vocab_parallel` the embedding and output
// head hold a range of the vocabulary each and the logits are gathered whole.
// Whether `tp` ranks split the vocabulary (the embedding and head): when asked and it divides;
// otherwise every rank holds them whole.
bool splits_vocabulary(const LmConfig& config, int tp);

struct TensorParallel {
  int rank = 0, size = 1;
  bool vocab_parallel = true;
  std::function<void(at::Tensor&)> all_reduce;                   // sums over the group, in place
  std::function<at::Tensor(const at::Tensor&)> all_gather_last;  // concatenated on the last dim, rank order
};

// Which rows begin with the same prompt: for each row of `tokens` [B, T] whose response starts at
// token starts[r] (in [1, T]), the index of the first distinct prompt (starts[r] and the tokens
// before it) it equals, counted in order of appearance.
std::vector<int64_t> same_prompts(const at::Tensor& tokens, const at::Tensor& starts);

class CausalLm {
 public:
  // Random weights (normal, std 0.02) from libtorch's default generator (seed it first). Under
  // tensor parallelism every rank draws the whole model and keeps its slice, so the weights are
  // those of one process with the same seed.
  explicit CausalLm(const LmConfig& config, TensorParallel tp = {});
  ~CausalLm();
  CausalLm(CausalLm&&) noexcept;
  CausalLm& operator=(CausalLm&&) noexcept;

  // Reads config.json and the weights (F32, BF16 or F16; single file or shards). A missing tensor
  // or one of the wrong shape is a FormatError naming it.
  static CausalLm load(const std::filesystem::path& dir);
  // The same with another output head (a critic or reward model started from a policy
  // checkpoint): the body's weights are read, the new head starts at zero.
  static CausalLm load(const std::filesystem::path& dir, const std::string& head, TensorParallel tp = {});
  // Reads a model directory's weights into this model, which must have its config (a checkpoint
  // of this same model); errors as for load().
  void load_weights(const std::filesystem::path& dir);
  // Writes config.json and model.safetensors with HF names, in `dtype` ("float32", "bfloat16" or
  // "float16"). A tensor-parallel slice cannot be saved alone (gather it first).
  void save(const std::filesystem::path& dir, const std::string& dtype = "float32") const;
  // The same with `whole` as the weights (every parameter whole, in the model's order): how the
  // ranks of a sharded or tensor-parallel layout save the model they hold in pieces.
  void save(const std::filesystem::path& dir, const std::vector<std::pair<std::string, at::Tensor>>& whole,
            const std::string& dtype = "float32") const;

  const LmConfig& config() const;
  const TensorParallel& tensor_parallel() const;
  // Logits [B, T, V] (float32) for tokens [B, T] (int64) at positions 0 .. T-1.
  at::Tensor forward(const at::Tensor& tokens);
  // The logits from each row's response on: column j of row r predicts tokens[r, starts[r] + j],
  // [B, S, V] with S = T - min(starts) (past a row's end: padding); starts[r] in [1, T]. Rows that
  // begin with the same starts[r] tokens (a GRPO group's prompt, a DPO pair's) run those positions
  // once, and no logits are made for the prompts' positions: what a policy update needs, at a
  // fraction of forward()'s cost when rows share prompts. Equal to forward()'s logits at those
  // positions up to rounding.
  at::Tensor response_logits(const at::Tensor& tokens, const at::Tensor& starts);
  // The value head at the same positions (column j: log-prob position starts[r] - 1 + j), [B, S].
  at::Tensor response_scores(const at::Tensor& tokens, const at::Tensor& starts);
  // log p(token t | tokens before t) for t = 1 .. T-1: [B, T-1], without gradients.
  at::Tensor token_log_probs(const at::Tensor& tokens);
  // Value and reward heads: the head's scalar at every position [B, T] (with gradients).
  at::Tensor scores(const at::Tensor& tokens);
  // Reward head: the scalar at each row's last real token, `last` [B] (index of that token).
  at::Tensor rewards(const at::Tensor& tokens, const at::Tensor& last);

  // Under tensor parallelism, the gradients of the parameters every rank holds whole but uses on
  // its own heads only (Qwen3's q_norm and k_norm) are partial sums: this sums them over the
  // group. Call it after backward, before clipping or stepping.
  void reduce_tensor_parallel_gradients();

  // The parameters (this rank's slices under tensor parallelism), in the model's order.
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const;

  // An empty paged cache for this rank's key/value heads.
  KvCache make_cache(int64_t num_blocks, int64_t block_size) const;

 private:
  void read_weights(const std::filesystem::path& dir, bool new_head);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla::models
