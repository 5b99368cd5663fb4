// A JSONL dataset as `data.train` is read, as each kind (verifiable, sft, preference).
#include <cstdint>

#include "core/error.hpp"
#include "envs/text_tasks.hpp"
#include "temp_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = flotilla::fuzz::as_file(data, size, "data.jsonl");
  for (const char* kind : {"verifiable", "sft", "preference"}) {
    try {
      for (const auto& e : flotilla::envs::read_text_dataset(path, kind)) (void)flotilla::envs::text_example_json(e, kind);
    } catch (const flotilla::Error&) {
    }
  }
  return 0;
}
