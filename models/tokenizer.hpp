#pragma once
// Tokenizers: text <-> token ids. Hugging Face `tokenizer.json` files with a byte-level BPE model
// (Qwen2/Qwen3, Llama 3, GPT-2 style), GPT-2's original `encoder.json` + `vocab.bpe`, and a
// byte-level tokenizer (256 byte ids plus specials) for tiny models trained from scratch.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::models {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` (UTF-8; invalid UTF-8 is a FormatError naming the byte offset). Added and
  // special tokens in the text are never split.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // The text of `ids`; an id outside the vocabulary is an Error naming it.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int32_t vocab_size() const = 0;
  // The id of a token string (e.g. "<|im_end|>"), if the vocabulary has it.
  virtual std::optional<int32_t> token_id(std::string_view token) const = 0;
};

// A Hugging Face tokenizer.json. Supported: normalizer null or NFC; pre-tokenizers Split (regex,
// Isolated), ByteLevel and Sequence of them; model BPE (merges as "a b" strings or [a, b] pairs);
// decoder ByteLevel; added tokens. Anything else is a FormatError naming the component.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& tokenizer_json);
// GPT-2's encoder.json and vocab.bpe.
std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::filesystem::path& encoder_json,
                                               const std::filesystem::path& vocab_bpe);
// Bytes 0-255 are ids 0-255; `specials` follow.
std::unique_ptr<Tokenizer> byte_tokenizer(const std::vector<std::string>& specials = {});
// A Hugging Face tokenizer.json for a byte-level BPE without merges: ids 0-255 are the bytes
// (in GPT-2's byte-to-character encoding), `specials` follow as added tokens. What `flotilla lm
// init` writes beside a new model, so tiny models have a standard tokenizer file.
std::string byte_level_tokenizer_json(const std::vector<std::string>& specials);
// By file name: tokenizer.json (or a directory holding one), encoder.json (with vocab.bpe beside
// it), or "bytes" for the byte-level tokenizer.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

}  // namespace flotilla::models
