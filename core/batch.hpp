#pragma once
// Batch: named tensors that share their first dimension (rows), plus small string metadata.
// The unit of data between stages: experience fragments, prompts, generations, log-probs.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::core {

class Batch {
 public:
  Batch() = default;

  // Adds or replaces a field; its first dimension must equal size() unless the batch is empty.
  void set(const std::string& name, at::Tensor tensor);
  // The field called `name`; throws naming the fields that exist when it does not.
  const at::Tensor& operator[](const std::string& name) const;
  bool contains(const std::string& name) const;
  void erase(const std::string& name);

  int64_t size() const { return rows_; }  // rows; 0 for a batch without fields
  bool empty() const { return names_.empty(); }
  const std::vector<std::string>& names() const { return names_; }
  std::map<std::string, std::string>& meta() { return meta_; }
  const std::map<std::string, std::string>& meta() const { return meta_; }

  // Only the named fields, in the order given.
  Batch select(const std::vector<std::string>& names) const;
  // Rows [begin, end), as views.
  Batch slice(int64_t begin, int64_t end) const;
  // Rows at the given int64 indices (a copy), in that order.
  Batch index(const at::Tensor& indices) const;
  // Consecutive parts with the given row counts, which must sum to size().
  std::vector<Batch> split(const std::vector<int64_t>& sizes) const;
  // `parts` consecutive parts as equal as possible: sizes differ by at most one, larger ones
  // first; a part may be empty when size() < parts.
  std::vector<Batch> chunk(int64_t parts) const;
  // Rows of all parts, in order; every part must have the same fields and dtypes. Metadata is
  // the first part's.
  static Batch concat(const std::vector<Batch>& parts);
  // Each row repeated `times` times in place (row0, row0, row1, row1, ...): GRPO groups.
  Batch repeat_interleave(int64_t times) const;
  Batch to(const at::Device& device) const;

  // A self-describing byte string (safetensors with the field order and metadata in its header).
  std::string serialize() const;
  static Batch deserialize(std::string_view bytes);

 private:
  template <class F>
  Batch map(F&& f) const;
  std::vector<std::string> names_;
  std::vector<at::Tensor> tensors_;
  std::map<std::string, std::string> meta_;
  int64_t rows_ = 0;
};

// The row counts chunk(parts) uses for `rows` rows.
std::vector<int64_t> chunk_sizes(int64_t rows, int64_t parts);

}  // namespace flotilla::core
