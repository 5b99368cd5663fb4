
#include <cstring>
#include <random>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"
#include "support/temp_dir.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using core::parse_safetensors;
using core::safetensors_bytes;

namespace {

uint64_t header_length(const std::string& bytes) {
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  return n;
}

// A file assembled by hand, to feed the reader headers no correct writer would produce.
std::string file_with(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string reject_reason(const std::string& bytes) {
  try {
    parse_safetensors(bytes, "test.safetensors");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors_layout_matches_the_reference_writer_byte_for_byte") {
  at::Tensor t = at::arange(6, at::kFloat).reshape({1, 2, 3});
  std::string bytes = safetensors_bytes({{"attn.0", t}});
  // The reference serializer's own test vector for this tensor: a 64-byte header, no padding.
  CHECK(header_length(bytes) == 64);
  CHECK(bytes.substr(8, 64) == R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})");
  REQUIRE(bytes.size() == 8 + 64 + 24);
  float third;
  std::memcpy(&third, bytes.data() + 72 + 8, 4);
  CHECK(third == 2.0f);

  // A 65-byte header is padded with seven spaces so the data starts 8-byte aligned.
  std::string padded = safetensors_bytes({{"attn0", t.reshape({1, 1, 2, 3})}});
  CHECK(header_length(padded) == 72);
  CHECK(padded.substr(8 + 65, 7) == "       ");

  CHECK(safetensors_bytes({}) == file_with("{}      ", ""));
  const std::string with_metadata = safetensors_bytes({}, {{"framework", "pt"}});
  CHECK(with_metadata == file_with(std::string(R"({"__metadata__":{"framework":"pt"}})") + "     "));
}

TEST_CASE("safetensors_orders_data_by_descending_dtype_then_name") {
  std::string bytes = safetensors_bytes({{"u", at::zeros({3}, at::kByte)},
                                         {"b_f32", at::zeros({1}, at::kFloat)},
                                         {"a_f32", at::zeros({1}, at::kFloat)},
                                         {"i", at::zeros({1}, at::kLong)}});
  core::TensorFile f = parse_safetensors(bytes);
  std::string header = bytes.substr(8, header_length(bytes));
  CHECK(header.find("\"i\"") < header.find("\"a_f32\""));
  CHECK(header.find("\"a_f32\"") < header.find("\"b_f32\""));
  CHECK(header.find("\"b_f32\"") < header.find("\"u\""));
  const std::string i_entry = R"("i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]})";
  CHECK(header.find(i_entry) != std::string::npos);
}

TEST_CASE("safetensors_round_trips_every_dtype_through_a_file") {
  test::TempDir dir;
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", at::randn({3, 4})},
      {"f64", at::randn({2}, at::kDouble)},
      {"f16", at::randn({5}).to(at::kHalf)},
      {"bf16", at::randn({2, 3}).to(at::kBFloat16)},
      {"i64", at::arange(-3, 3, at::kLong)},
      {"i32", at::arange(4, at::kInt)},
      {"i16", at::arange(4, at::kShort)},
      {"i8", at::arange(-2, 2, at::kChar)},
      {"u8", at::arange(250, 256, at::kByte)},
      {"bool", at::tensor(std::vector<uint8_t>{1, 0, 1}).to(at::kBool)},
      {"scalar", at::scalar_tensor(2.5)},
      {"empty", at::zeros({0, 3})},
      {"strided", at::arange(12, at::kFloat).reshape({3, 4}).t()},
  };
  const auto path = dir.path() / "all.safetensors";
  core::save_safetensors(path, tensors, {{"format", "pt"}});
  core::TensorFile back = core::load_safetensors(path);
  CHECK(back.metadata.at("format") == "pt");
  CHECK(back.tensors.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    CAPTURE(name);
    REQUIRE(back.contains(name));
    CHECK((back.at(name).scalar_type() == t.scalar_type()));
    CHECK((back.at(name).sizes() == t.sizes()));
    CHECK(at::equal(back.at(name), t));
  }
  // The in-memory reader sees the same file the same way.
  core::TensorFile mem = parse_safetensors(core::read_file(path));
  CHECK(at::equal(mem.at("bf16"), back.at("bf16")));
  CHECK_THROWS_AS(back.at("nope"), FormatError);
}

TEST_CASE("safetensors_rejects_duplicate_names_and_unsupported_dtypes") {
  CHECK_THROWS_AS(safetensors_bytes({{"a", at::zeros({1})}, {"a", at::zeros({1})}}), FormatError);
  CHECK_THROWS_AS(safetensors_bytes({{"c", at::zeros({1}, at::kComplexFloat)}}), FormatError);
}

TEST_CASE("safetensors_rejects_corrupt_files_with_a_reason") {
  const std::string good = safetensors_bytes({{"a", at::ones({2})}, {"b", at::ones({3}, at::kLong)}});
  CHECK(reject_reason(good).empty());
  CHECK(reject_reason("abc").find("shorter than its 8-byte header length") != std::string::npos);
  CHECK(reject_reason(good.substr(0, 20)).find("runs past the end") != std::string::npos);
  CHECK(reject_reason(good.substr(0, good.size() - 1)).find("fall outside") != std::string::npos);
  CHECK(reject_reason(good + "x").find("data section holds") != std::string::npos);

  const std::string data8(8, '\0');
  CHECK(reject_reason(file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", data8))
            .find("fall outside") != std::string::npos);
  CHECK(reject_reason(file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                data8))
            .find("overlaps") != std::string::npos);
  CHECK(reject_reason(file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8))
            .find("gap") != std::string::npos);
  CHECK(reject_reason(file_with(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", data8))
            .find("unknown or unsupported dtype 'Q7'") != std::string::npos);
  CHECK(reject_reason(file_with(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8))
            .find("shape and dtype need 3 x 4 bytes") != std::string::npos);
  CHECK(reject_reason(file_with(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8))
            .find("non-negative") != std::string::npos);
  CHECK(reject_reason(file_with(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", data8))
            .find("overflows") != std::string::npos);
  CHECK(reject_reason(file_with("[1,2]   ", "")).find("does not start with '{'") != std::string::npos);
  CHECK(reject_reason(file_with("{\"a\":   ", "")).find("not valid JSON") != std::string::npos);
  CHECK(reject_reason(file_with(R"({"__metadata__":{"k":1}})", "")).find("is not a string") != std::string::npos);
  CHECK(reject_reason(file_with(R"({"a":{"dtype":"F32"}})", "")).find("lacks dtype, shape or data_offsets") !=
        std::string::npos);
}

TEST_CASE("safetensors_reader_survives_random_damage") {
  // Flipped bytes and cuts anywhere must give a clean FormatError or a valid file, never a crash.
  const std::string good = safetensors_bytes({{"w", at::randn({4, 4})}, {"n", at::arange(5, at::kLong)}}, {{"k", "v"}});
  std::mt19937 rng(1234);
  int rejected = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bad = good;
    if (trial % 2 == 0) {
      bad.resize(rng() % bad.size());
    } else {
      for (int k = 0; k < 3; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    }
    try {
      parse_safetensors(bad);
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  CHECK(rejected > 1000);
}

TEST_CASE("safetensors_missing_file_is_an_io_error") {
  CHECK_THROWS_AS(core::load_safetensors("/nonexistent/x.safetensors"), IoError);
}
