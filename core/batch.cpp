#include "core/batch.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>

#include "core/error.hpp"
#include "core/safetensors.hpp"

namespace flotilla::core {
namespace {
constexpr const char* kFieldsKey = "flotilla.batch.fields";
constexpr const char* kMetaKey = "flotilla.batch.meta";
}  // namespace

std::vector<int64_t> chunk_sizes(int64_t rows, int64_t parts) {
  if (parts <= 0) throw Error("Batch::chunk: parts must be positive, got " + std::to_string(parts));
  std::vector<int64_t> sizes(parts, rows / parts);
  for (int64_t i = 0; i < rows % parts; ++i) ++sizes[i];
  return sizes;
}

void Batch::set(const std::string& name, at::Tensor tensor) {
  if (!tensor.defined()) throw Error("Batch::set('" + name + "'): the tensor is undefined");
  if (tensor.dim() == 0) throw Error("Batch::set('" + name + "'): a field needs a first (row) dimension");
  auto it = std::find(names_.begin(), names_.end(), name);
  const bool replacing_only = it != names_.end() && names_.size() == 1;
  if (!names_.empty() && !replacing_only && tensor.size(0) != rows_)
    throw Error("Batch::set('" + name + "'): has " + std::to_string(tensor.size(0)) + " rows, the batch has " +
                std::to_string(rows_));
  rows_ = tensor.size(0);
  if (it != names_.end()) {
    tensors_[it - names_.begin()] = std::move(tensor);
  } else {
    names_.push_back(name);
    tensors_.push_back(std::move(tensor));
  }
}

const at::Tensor& Batch::operator[](const std::string& name) const {
  auto it = std::find(names_.begin(), names_.end(), name);
  if (it == names_.end()) {
    std::string known;
    for (const auto& n : names_) known += (known.empty() ? "" : ", ") + n;
    throw Error("Batch has no field '" + name + "' (fields: " + (known.empty() ? "none" : known) + ")");
  }
  return tensors_[it - names_.begin()];
}

bool Batch::contains(const std::string& name) const {
  return std::find(names_.begin(), names_.end(), name) != names_.end();
}

void Batch::erase(const std::string& name) {
  auto it = std::find(names_.begin(), names_.end(), name);
  if (it == names_.end()) return;
  tensors_.erase(tensors_.begin() + (it - names_.begin()));
  names_.erase(it);
  if (names_.empty()) rows_ = 0;
}

template <class F>
Batch Batch::map(F&& f) const {
  Batch out;
  out.meta_ = meta_;
  for (size_t i = 0; i < names_.size(); ++i) out.set(names_[i], f(tensors_[i]));
  return out;
}

Batch Batch::select(const std::vector<std::string>& names) const {
  Batch out;
  out.meta_ = meta_;
  for (const auto& n : names) out.set(n, (*this)[n]);
  return out;
}

Batch Batch::slice(int64_t begin, int64_t end) const {
  if (begin < 0 || end < begin || end > rows_)
    throw Error("Batch::slice(" + std::to_string(begin) + ", " + std::to_string(end) + ") is outside the " +
                std::to_string(rows_) + " rows");
  Batch out = map([&](const at::Tensor& t) { return t.slice(0, begin, end); });
  out.rows_ = end - begin;
  return out;
}

Batch Batch::index(const at::Tensor& indices) const {
  at::Tensor idx = indices.to(at::kLong);
  if (idx.dim() != 1) throw Error("Batch::index: indices must be one-dimensional");
  if (idx.numel() > 0) {
    int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
    if (lo < 0 || hi >= rows_)
      throw Error("Batch::index: index " + std::to_string(lo < 0 ? lo : hi) + " is outside the " +
                  std::to_string(rows_) + " rows");
  }
  Batch out = map([&](const at::Tensor& t) { return t.index_select(0, idx.to(t.device())); });
  out.rows_ = idx.numel();
  return out;
}

std::vector<Batch> Batch::split(const std::vector<int64_t>& sizes) const {
  int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  if (total != rows_ || std::any_of(sizes.begin(), sizes.end(), [](int64_t s) { return s < 0; }))
    throw Error("Batch::split: sizes sum to " + std::to_string(total) + " but the batch has " +
                std::to_string(rows_) + " rows");
  std::vector<Batch> out;
  int64_t begin = 0;
  for (int64_t s : sizes) {
    out.push_back(slice(begin, begin + s));
    begin += s;
  }
  return out;
}

std::vector<Batch> Batch::chunk(int64_t parts) const { return split(chunk_sizes(rows_, parts)); }

Batch Batch::concat(const std::vector<Batch>& parts) {
  if (parts.empty()) return Batch();
  const Batch& first = parts.front();
  for (size_t p = 1; p < parts.size(); ++p) {
    if (parts[p].names_ != first.names_)
      throw Error("Batch::concat: part " + std::to_string(p) + " has other fields than part 0");
  }
  Batch out;
  out.meta_ = first.meta_;
  for (size_t i = 0; i < first.names_.size(); ++i) {
    std::vector<at::Tensor> pieces;
    for (const auto& part : parts) pieces.push_back(part.tensors_[i]);
    try {
      out.set(first.names_[i], at::cat(pieces, 0));
    } catch (const c10::Error& e) {
      throw Error("Batch::concat: field '" + first.names_[i] + "' cannot be joined: " + e.what_without_backtrace());
    }
  }
  return out;
}

Batch Batch::repeat_interleave(int64_t times) const {
  if (times < 1) throw Error("Batch::repeat_interleave: times must be >= 1, got " + std::to_string(times));
  return map([&](const at::Tensor& t) { return t.repeat_interleave(times, 0); });
}

Batch Batch::to(const at::Device& device) const {
  return map([&](const at::Tensor& t) { return t.to(device); });
}

std::string Batch::serialize() const {
  std::vector<std::pair<std::string, at::Tensor>> fields;
  for (size_t i = 0; i < names_.size(); ++i) fields.emplace_back(names_[i], tensors_[i]);
  return safetensors_bytes(fields, {{kFieldsKey, nlohmann::json(names_).dump()},
                                    {kMetaKey, nlohmann::json(meta_).dump()}});
}

Batch Batch::deserialize(std::string_view bytes) {
  TensorFile file = parse_safetensors(bytes, "serialized Batch");
  Batch out;
  try {
    auto names = nlohmann::json::parse(file.metadata.at(kFieldsKey)).get<std::vector<std::string>>();
    out.meta_ = nlohmann::json::parse(file.metadata.at(kMetaKey)).get<std::map<std::string, std::string>>();
    for (const auto& n : names) out.set(n, file.at(n));
  } catch (const std::out_of_range&) {
    throw FormatError("serialized Batch: the header lacks the field list");
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(std::string("serialized Batch: bad field list: ") + e.what());
  }
  return out;
}

}  // namespace flotilla::core
