#pragma once
// safetensors, the tensor file format of PyTorch and Hugging Face: an 8-byte little-endian
// header length, a JSON header (dtype, shape, data_offsets per tensor, optional string map
// `__metadata__`) padded with spaces to 8 bytes, then the raw little-endian data. Files are
// written as the reference implementation writes them (tensors ordered by descending dtype, then
// name) and every file read is validated before a byte of data is touched.
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace flotilla::core {

struct TensorFile {
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // in file order
  std::map<std::string, std::string> metadata;

  // The tensor called `name`; throws FormatError naming it when absent.
  const at::Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const;
};

// The whole file as bytes. Tensors may be on any device and of any layout; names must be unique.
std::string safetensors_bytes(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});
// Writes atomically: a temporary file beside `path`, then a rename.
void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Parses and validates; `source` names the data in error messages.
TensorFile parse_safetensors(std::string_view bytes, const std::string& source = "<bytes>");
TensorFile load_safetensors(const std::filesystem::path& path);

}  // namespace flotilla::core
