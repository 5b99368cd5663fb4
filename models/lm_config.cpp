#include <nlohmann/json.hpp>

#include <optional>

#include "core/error.hpp"
#include "models/transformer.hpp"

namespace flotilla::models {

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

void LmConfig::check_tensor_parallel(int tp) const {
  for (const auto& [what, n] : {std::pair<const char*, int64_t>{"num_attention_heads", num_attention_heads},
                                {"num_key_value_heads", num_key_value_heads},
                                {"intermediate_size", intermediate_size}})
    if (n % tp != 0)
      throw ConfigError(std::string(what) + " (" + std::to_string(n) + ") does not split over " + std::to_string(tp) +
                        " tensor-parallel ranks");
}

}  // namespace flotilla::models
