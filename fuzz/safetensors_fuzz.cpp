// A safetensors file as checkpoints and models are read: header, dtypes, shapes and offsets
// checked against the bytes, then every tensor touched.
#include <ATen/ATen.h>

#include <cstdint>
#include <string_view>

#include "core/error.hpp"
#include "core/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    flotilla::core::TensorFile f = flotilla::core::parse_safetensors(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& [name, t] : f.tensors)
      if (t.numel() > 0) (void)t.reshape({-1}).to(at::kDouble).sum().item<double>();
  } catch (const flotilla::Error&) {
  }
  return 0;
}
