
#include "core/batch.hpp"
#include "core/error.hpp"
#include "support/torch_doctest.hpp"

using flotilla::core::Batch;

namespace {
Batch rows(int64_t n) {
  Batch b;
  b.set("obs", at::arange(n * 2, at::kFloat).reshape({n, 2}));
  b.set("action", at::arange(n, at::kLong));
  b.meta()["policy_version"] = "7";
  return b;
}
}  // namespace

TEST_CASE("batch_set_enforces_a_shared_first_dimension") {
  Batch b = rows(4);
  CHECK(b.size() == 4);
  CHECK((b.names() == std::vector<std::string>{"obs", "action"}));
  CHECK_THROWS_AS(b.set("reward", at::zeros({3})), flotilla::Error);
  CHECK_THROWS_AS(b.set("scalar", at::scalar_tensor(1.0)), flotilla::Error);
  b.set("reward", at::ones({4}));
  CHECK(b.contains("reward"));
  b.erase("reward");
  CHECK_FALSE(b.contains("reward"));
}

TEST_CASE("batch_missing_field_error_lists_the_fields") {
  Batch b = rows(2);
  try {
    (void)b["rewards"];
    FAIL("expected an error");
  } catch (const flotilla::Error& e) {
    CHECK(std::string(e.what()).find("no field 'rewards' (fields: obs, action)") != std::string::npos);
  }
}

TEST_CASE("batch_select_keeps_named_fields_in_the_given_order") {
  Batch s = rows(3).select({"action", "obs"});
  CHECK((s.names() == std::vector<std::string>{"action", "obs"}));
  CHECK(s.meta().at("policy_version") == "7");
}

TEST_CASE("batch_chunk_allows_uneven_parts") {
  Batch b = rows(7);
  auto parts = b.chunk(3);
  REQUIRE(parts.size() == 3);
  CHECK(parts[0].size() == 3);
  CHECK(parts[1].size() == 2);
  CHECK(parts[2].size() == 2);
  CHECK(parts[1]["action"][0].item<int64_t>() == 3);
  CHECK(parts[2]["obs"][1][1].item<float>() == 13.0f);
  // More parts than rows: the tail is empty but present, so every rank gets a reply slot.
  auto many = rows(2).chunk(4);
  CHECK(many.size() == 4);
  CHECK(many[0].size() == 1);
  CHECK(many[3].size() == 0);
  CHECK((flotilla::core::chunk_sizes(10, 4) == std::vector<int64_t>{3, 3, 2, 2}));
  CHECK_THROWS_AS(b.chunk(0), flotilla::Error);
}

TEST_CASE("batch_split_needs_sizes_that_sum_to_the_rows") {
  Batch b = rows(5);
  auto parts = b.split({1, 4});
  CHECK(parts[1]["action"][0].item<int64_t>() == 1);
  CHECK_THROWS_AS(b.split({2, 2}), flotilla::Error);
  CHECK_THROWS_AS(b.split({6, -1}), flotilla::Error);
}

TEST_CASE("batch_concat_inverts_chunk") {
  Batch b = rows(7);
  Batch joined = Batch::concat(b.chunk(3));
  CHECK(joined.size() == 7);
  CHECK(at::equal(joined["obs"], b["obs"]));
  CHECK(at::equal(joined["action"], b["action"]));
  CHECK(joined.meta().at("policy_version") == "7");
  Batch other;
  other.set("obs", at::zeros({1, 2}));
  CHECK_THROWS_AS(Batch::concat({b, other}), flotilla::Error);
}

TEST_CASE("batch_index_and_slice_pick_rows") {
  Batch b = rows(5);
  Batch picked = b.index(at::tensor(std::vector<int64_t>{4, 0, 4}));
  CHECK(picked.size() == 3);
  CHECK(picked["action"][0].item<int64_t>() == 4);
  CHECK(picked["action"][1].item<int64_t>() == 0);
  CHECK_THROWS_AS(b.index(at::tensor(std::vector<int64_t>{5})), flotilla::Error);
  Batch s = b.slice(1, 3);
  CHECK(s.size() == 2);
  CHECK(s["action"][0].item<int64_t>() == 1);
  CHECK_THROWS_AS(b.slice(3, 9), flotilla::Error);
}

TEST_CASE("batch_repeat_interleave_repeats_each_row_in_place") {
  Batch r = rows(2).repeat_interleave(3);
  CHECK(r.size() == 6);
  CHECK(at::equal(r["action"], at::tensor(std::vector<int64_t>{0, 0, 0, 1, 1, 1})));
  CHECK(r["obs"][4][1].item<float>() == 3.0f);
}

TEST_CASE("batch_to_moves_every_field") {
  Batch b = rows(2).to(at::Device(at::kCPU));
  CHECK(b["obs"].device().is_cpu());
  CHECK(b.size() == 2);
}

TEST_CASE("batch_serialize_round_trips_fields_order_dtypes_and_metadata") {
  Batch b = rows(3);
  b.set("mask", at::tensor(std::vector<uint8_t>{1, 0, 1}).to(at::kBool));
  b.set("half", at::ones({3, 1}, at::kHalf));
  Batch back = Batch::deserialize(b.serialize());
  CHECK(back.names() == b.names());
  for (const auto& n : b.names()) {
    CHECK((back[n].scalar_type() == b[n].scalar_type()));
    CHECK(at::equal(back[n], b[n]));
  }
  CHECK(back.meta() == b.meta());
  CHECK_THROWS_AS(Batch::deserialize("garbage"), flotilla::FormatError);
}
