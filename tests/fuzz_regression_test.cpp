// Every input a fuzz target once failed on (fuzz/regressions/TARGET/), replayed through that
// target's harness in the normal build: the harness returns, where it once crashed, threw an
// exception Flotilla does not name or hit undefined behaviour. scripts/fuzz finds new ones; a
// fixed one is copied here.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "core/fs.hpp"

extern "C" int fuzz_wire_one_input(const uint8_t*, size_t);
extern "C" int fuzz_safetensors_one_input(const uint8_t*, size_t);
extern "C" int fuzz_config_one_input(const uint8_t*, size_t);
extern "C" int fuzz_tokenizer_one_input(const uint8_t*, size_t);
extern "C" int fuzz_jsonl_one_input(const uint8_t*, size_t);

namespace fs = std::filesystem;

TEST_CASE("fuzz_regressions_and_seeds_pass_their_harnesses") {
  const std::map<std::string, int (*)(const uint8_t*, size_t)> harness = {
      {"wire", fuzz_wire_one_input},         {"safetensors", fuzz_safetensors_one_input}, {"config", fuzz_config_one_input},
      {"tokenizer", fuzz_tokenizer_one_input}, {"jsonl", fuzz_jsonl_one_input}};
  int replayed = 0;
  for (const char* set : {"regressions", "corpus"}) {
    const fs::path root = fs::path(FLOTILLA_SOURCE_DIR) / "fuzz" / set;
    for (const auto& [name, one_input] : harness) {
      if (!fs::exists(root / name)) continue;
      for (const auto& e : fs::directory_iterator(root / name)) {
        CAPTURE(e.path().string());
        const std::string bytes = flotilla::core::read_file(e.path());
        CHECK(one_input(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()) == 0);
        ++replayed;
      }
    }
  }
  CHECK(replayed >= 20);  // the seeds of every target, and the regressions
}
