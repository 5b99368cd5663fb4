#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "core/tensorboard.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;

TEST_CASE("metrics_jsonl_writes_one_object_per_log_call") {
  test::TempDir dir;
  {
    core::Metrics m;
    m.add_sink(core::jsonl_sink(dir.path() / "m.jsonl"));
    m.log(10, {{"charts/episodic_return", 1.5}, {"perf/sps", 1000}});
    m.log(20, {{"charts/episodic_return", 2.5}, {"losses/policy_loss", NAN}});
    m.flush();
  }
  auto rows = core::read_metrics_jsonl(dir.path() / "m.jsonl");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].step == 10);
  CHECK(rows[0].time_s >= 0);
  CHECK(rows[1].time_s >= rows[0].time_s);
  CHECK(rows[0].values == core::Scalars{{"charts/episodic_return", 1.5}, {"perf/sps", 1000}});
  CHECK(rows[1].values[0].second == 2.5);
  CHECK(std::isnan(rows[1].values[1].second));  // NaN is kept as null, not dropped
}

TEST_CASE("metrics_jsonl_reader_ignores_a_torn_last_line_but_not_corruption") {
  test::TempDir dir;
  auto p = dir.write("m.jsonl", "{\"step\":1,\"time_s\":0.1,\"a\":1}\n{\"step\":2,\"ti");
  CHECK(core::read_metrics_jsonl(p).size() == 1);
  auto q = dir.write("n.jsonl", "{\"step\":1\nxx\n{\"step\":2,\"time_s\":0}\n");
  CHECK_THROWS_AS(core::read_metrics_jsonl(q), FormatError);
}

TEST_CASE("metrics_csv_adds_columns_for_metrics_first_seen_late") {
  test::TempDir dir;
  {
    core::Metrics m;
    m.add_sink(core::csv_sink(dir.path() / "m.csv"));
    m.log(1, {{"a", 1}});
    m.log(2, {{"a", 2}, {"b", 0.25}});
    m.log(3, {{"b", 0.5}});
    m.flush();
  }
  std::string text = core::read_file(dir.path() / "m.csv");
  std::istringstream in(text);
  std::string header, r1, r2, r3;
  std::getline(in, header);
  std::getline(in, r1);
  std::getline(in, r2);
  std::getline(in, r3);
  CHECK(header == "step,time_s,a,b");
  CHECK(r1.rfind("1,", 0) == 0);
  CHECK(r1.substr(r1.size() - 3) == ",1,");  // b empty in the first row
  CHECK(r2.substr(r2.size() - 7) == ",2,0.25");
  CHECK(r3.substr(r3.size() - 5) == ",,0.5");
}

TEST_CASE("crc32c_matches_the_standard_check_value") {
  const char* digits = "123456789";
  CHECK(core::crc32c(digits, 9) == 0xE3069283u);
  CHECK(core::crc32c("", 0) == 0u);
}

TEST_CASE("tensorboard_event_file_parses_back_to_the_same_scalars") {
  test::TempDir dir;
  {
    core::Metrics m;
    m.add_sink(core::tensorboard_sink(dir.path()));
    m.log(0, {{"charts/episodic_return", 9.5}, {"losses/value_loss", 0.125}});
    m.log(512, {{"charts/episodic_return", 475.0}});
    m.flush();
  }
  std::filesystem::path file;
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) file = e.path();
  REQUIRE_FALSE(file.empty());
  auto scalars = core::read_tensorboard_scalars(file);
  REQUIRE(scalars.size() == 3);
  CHECK(scalars[0].tag == "charts/episodic_return");
  CHECK(scalars[0].step == 0);
  CHECK(scalars[0].value == 9.5f);
  CHECK(scalars[1].tag == "losses/value_loss");
  CHECK(scalars[1].value == 0.125f);
  CHECK(scalars[2].step == 512);
  CHECK(scalars[2].value == 475.0f);
  CHECK(scalars[2].wall_time > 1.7e9);

  // A flipped byte breaks a checksum, and the reader says so.
  std::string bytes = core::read_file(file);
  bytes[bytes.size() - 10] ^= 0x5a;
  auto damaged = dir.write("events.out.tfevents.damaged", bytes);
  CHECK_THROWS_AS(core::read_tensorboard_scalars(damaged), FormatError);
}
