#include "core/safetensors.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstring>
#include <fstream>
#include <limits>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace flotilla::core {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference reader's limit

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  int rank;  // the reference implementation's dtype order, used to lay out the data
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {"BOOL", at::kBool, 0, 1},     {"U8", at::kByte, 1, 1},      {"I8", at::kChar, 2, 1},
    {"I16", at::kShort, 5, 2},     {"F16", at::kHalf, 7, 2},     {"BF16", at::kBFloat16, 8, 2},
    {"I32", at::kInt, 9, 4},       {"F32", at::kFloat, 11, 4},   {"F64", at::kDouble, 12, 8},
    {"I64", at::kLong, 13, 8},
};

const DtypeInfo& dtype_of(at::ScalarType t, const std::string& name) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d;
  throw FormatError("safetensors: tensor '" + name + "' has dtype " + std::string(c10::toString(t)) +
                    ", which the format does not hold");
}

struct Entry {
  std::string name;
  const DtypeInfo* dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

struct Layout {
  std::string header;  // padded
  std::vector<std::pair<const std::pair<std::string, at::Tensor>*, at::Tensor>> order;  // tensors in data order
  uint64_t data_bytes = 0;
};

Layout plan(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
            const std::map<std::string, std::string>& metadata) {
  Layout out;
  for (const auto& item : tensors) {
    const auto& [name, t] = item;
    if (name == "__metadata__") throw FormatError("safetensors: '__metadata__' cannot name a tensor");
    if (!t.defined()) throw FormatError("safetensors: tensor '" + name + "' is undefined");
    out.order.push_back({&item, t.to(at::kCPU).contiguous()});
  }
  std::sort(out.order.begin(), out.order.end(), [](const auto& a, const auto& b) {
    int ra = dtype_of(a.second.scalar_type(), a.first->first).rank;
    int rb = dtype_of(b.second.scalar_type(), b.first->first).rank;
    return ra != rb ? ra > rb : a.first->first < b.first->first;
  });
  for (size_t i = 1; i < out.order.size(); ++i)
    if (out.order[i].first->first == out.order[i - 1].first->first)
      throw FormatError("safetensors: tensor name '" + out.order[i].first->first + "' appears twice");

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  for (const auto& [item, t] : out.order) {
    const DtypeInfo& d = dtype_of(t.scalar_type(), item->first);
    uint64_t n = static_cast<uint64_t>(t.numel()) * d.size;
    header[item->first] = {{"dtype", d.name}, {"shape", t.sizes().vec()}, {"data_offsets", {out.data_bytes, out.data_bytes + n}}};
    out.data_bytes += n;
  }
  out.header = header.dump();
  out.header.append((8 - out.header.size() % 8) % 8, ' ');
  return out;
}

std::string length_prefix(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

// Validates the header against a data section of `data_bytes` bytes; throws on any inconsistency.
std::pair<std::vector<Entry>, std::map<std::string, std::string>> read_header(std::string_view header,
                                                                             uint64_t data_bytes,
                                                                             const std::string& source) {
  auto fail = [&](const std::string& what) -> FormatError {
    return FormatError(source + ": not a valid safetensors file: " + what);
  };
  if (header.empty() || header.front() != '{') throw fail("the header does not start with '{'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("the header is not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) throw fail("the header is not a JSON object");

  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw fail("__metadata__ is not a map of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw fail("__metadata__['" + m.key() + "'] is not a string");
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw fail("tensor '" + name + "' lacks dtype, shape or data_offsets");
    Entry e{name, nullptr, {}, 0, 0};
    if (!v["dtype"].is_string()) throw fail("tensor '" + name + "': dtype is not a string");
    const std::string dtype = v["dtype"].get<std::string>();
    for (const auto& d : kDtypes)
      if (dtype == d.name) e.dtype = &d;
    if (!e.dtype) throw fail("tensor '" + name + "' has unknown or unsupported dtype '" + dtype + "'");
    if (!v["shape"].is_array()) throw fail("tensor '" + name + "': shape is not a list");
    uint64_t numel = 1;
    for (const auto& dim : v["shape"]) {
      if (!dim.is_number_unsigned()) throw fail("tensor '" + name + "': shape has a dimension that is not a non-negative integer");
      uint64_t d = dim.get<uint64_t>();
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (d != 0 && numel > std::numeric_limits<uint64_t>::max() / d))
        throw fail("tensor '" + name + "': shape overflows");
      numel *= d;
      e.shape.push_back(static_cast<int64_t>(d));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw fail("tensor '" + name + "': data_offsets is not a pair of non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.end < e.begin || e.end > data_bytes)
      throw fail("tensor '" + name + "': data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                 "] fall outside the " + std::to_string(data_bytes) + " data bytes");
    if (numel > std::numeric_limits<uint64_t>::max() / e.dtype->size || numel * e.dtype->size != e.end - e.begin)
      throw fail("tensor '" + name + "': shape and dtype need " + std::to_string(numel) + " x " +
                 std::to_string(e.dtype->size) + " bytes but data_offsets span " + std::to_string(e.end - e.begin));
    entries.push_back(std::move(e));
  }
  // The data section must be tiled exactly: no overlaps, no gaps, nothing after the last tensor.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const auto& e : entries) {
    if (e.begin < expected) throw fail("tensor '" + e.name + "' overlaps the tensor before it");
    if (e.begin > expected) throw fail("a gap of unused bytes lies before tensor '" + e.name + "'");
    expected = e.end;
  }
  if (expected != data_bytes)
    throw fail("the tensors cover " + std::to_string(expected) + " data bytes but the data section holds " +
               std::to_string(data_bytes));
  return {std::move(entries), std::move(metadata)};
}

at::Tensor empty_for(const Entry& e) { return at::empty(e.shape, at::TensorOptions().dtype(e.dtype->type)); }

}  // namespace

const at::Tensor& TensorFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw FormatError("no tensor named '" + name + "' in the file");
}

bool TensorFile::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(), [&](const auto& p) { return p.first == name; });
}

std::string safetensors_bytes(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  Layout layout = plan(tensors, metadata);
  std::string out = length_prefix(layout.header.size()) + layout.header;
  out.reserve(out.size() + layout.data_bytes);
  for (const auto& [item, t] : layout.order)
    out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

void save_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Layout layout = plan(tensors, metadata);
  write_file_atomically(path, [&](std::ostream& out) {
    out << length_prefix(layout.header.size()) << layout.header;
    for (const auto& [item, t] : layout.order)
      out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * t.element_size()));
  });
}

TensorFile parse_safetensors(std::string_view bytes, const std::string& source) {
  if (bytes.size() < 8) throw FormatError(source + ": not a valid safetensors file: shorter than its 8-byte header length");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  if (n > kMaxHeaderBytes || n > bytes.size() - 8)
    throw FormatError(source + ": not a valid safetensors file: header length " + std::to_string(n) +
                      " runs past the end of the " + std::to_string(bytes.size()) + " bytes");
  auto [entries, metadata] = read_header(bytes.substr(8, n), bytes.size() - 8 - n, source);
  TensorFile out;
  out.metadata = std::move(metadata);
  const char* data = bytes.data() + 8 + n;
  for (const auto& e : entries) {
    at::Tensor t = empty_for(e);
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, e.end - e.begin);
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

TensorFile load_safetensors(const std::filesystem::path& path) {
  const std::string source = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(source + ": cannot open the safetensors file");
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (size < 8) throw FormatError(source + ": not a valid safetensors file: shorter than its 8-byte header length");
  uint64_t n;
  in.read(reinterpret_cast<char*>(&n), 8);
  if (n > kMaxHeaderBytes || n > size - 8)
    throw FormatError(source + ": not a valid safetensors file: header length " + std::to_string(n) +
                      " runs past the end of the " + std::to_string(size) + "-byte file");
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  auto [entries, metadata] = read_header(header, size - 8 - n, source);
  TensorFile out;
  out.metadata = std::move(metadata);
  // Read each tensor straight into its own storage: no second copy of a large checkpoint.
  for (const auto& e : entries) {
    at::Tensor t = empty_for(e);
    in.seekg(static_cast<std::streamoff>(8 + n + e.begin));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
    if (!in) throw IoError(source + ": read failed inside tensor '" + e.name + "'");
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace flotilla::core
