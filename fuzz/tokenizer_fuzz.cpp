// A tokenizer.json as models are loaded: parsed and built (normalizer, pre-tokenizer regexes,
// BPE vocabulary and merges, added tokens), then used: a fixed text and the input's own bytes
// encoded, and the ids decoded back.
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "models/tokenizer.hpp"
#include "temp_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto tokenizer = flotilla::models::load_hf_tokenizer(flotilla::fuzz::as_file(data, size, "tokenizer.json"));
    for (std::string_view text : {std::string_view("Hello, world! 12 + 30 = 42\n<|im_end|>"),
                                  std::string_view(reinterpret_cast<const char*>(data), std::min<size_t>(size, 256))}) {
      const std::vector<int32_t> ids = tokenizer->encode(text);
      for (int32_t id : ids)
        if (id < 0 || id >= tokenizer->vocab_size()) __builtin_trap();  // an id outside the vocabulary
      (void)tokenizer->decode(ids);
    }
    (void)tokenizer->token_id("<|im_end|>");
  } catch (const flotilla::Error&) {
  }
  return 0;
}
