#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "core/config.hpp"
#include "core/registry.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
using flotilla::core::Config;
using flotilla::core::ConfigTree;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("config_reads_typed_values_and_defaults") {
  Config c(ConfigTree::load_string("a: 3\nb: 0.5\nc: hello\nd: true\ne: [1, 2]\nf: 1e6\ng: 1_000\n"));
  auto root = c.root();
  CHECK(root.get<int64_t>("a", 0) == 3);
  CHECK(root.get<double>("b", 0.0) == 0.5);
  CHECK(root.get<std::string>("c", "") == "hello");
  CHECK(root.get<bool>("d", false) == true);
  CHECK(root.get<std::vector<int64_t>>("e", {}) == std::vector<int64_t>{1, 2});
  CHECK(root.get<int64_t>("f", 0) == 1000000);
  CHECK(root.get<int64_t>("g", 0) == 1000);
  CHECK(root.get<int>("missing", 7) == 7);
  CHECK_NOTHROW(c.check_unknown_keys());
}

TEST_CASE("config_type_error_names_file_line_column_key_expected_and_found") {
  test::TempDir dir;
  dir.write("exp.yaml", "train:\n  total_steps: many\n");
  Config c(ConfigTree::load_file(dir.path() / "exp.yaml"));
  std::string err = error_of([&] { c.root().section("train").get<int64_t>("total_steps", 1); });
  CHECK(err.find("exp.yaml:2:16") != std::string::npos);
  CHECK(err.find("train.total_steps") != std::string::npos);
  CHECK(err.find("expected an integer") != std::string::npos);
  CHECK(err.find("found 'many'") != std::string::npos);
}

TEST_CASE("config_range_check_rejects_out_of_range_values") {
  Config c(ConfigTree::load_string("lr: -0.1\n", "x.yaml"));
  std::string err = error_of([&] { c.root().get<double>("lr", 1e-3, core::greater_than(0.0)); });
  CHECK(err.find("x.yaml:1:5: lr: expected a value > 0") != std::string::npos);
  CHECK(err.find("found '-0.1'") != std::string::npos);
}

TEST_CASE("config_choice_suggests_the_closest_allowed_value") {
  Config c(ConfigTree::load_string("backend: cdua\n"));
  std::string err = error_of([&] { c.root().choice("backend", "cpu", {"cpu", "cuda"}); });
  CHECK(err.find("one of cpu, cuda") != std::string::npos);
  CHECK(err.find("did you mean 'cuda'") != std::string::npos);
}

TEST_CASE("config_required_key_missing_is_an_error") {
  Config c(ConfigTree::load_string("env: {}\n", "x.yaml"));
  std::string err = error_of([&] { c.root().section("env").require<std::string>("id"); });
  CHECK(err.find("missing required key 'env.id'") != std::string::npos);
}

TEST_CASE("config_unknown_key_gets_did_you_mean") {
  Config c(ConfigTree::load_string("train:\n  total_step: 5\n  lr: 0.1\n", "x.yaml"));
  auto train = c.root().section("train");
  train.get<int64_t>("total_steps", 1);
  train.get<double>("lr", 0.1);
  std::string err = error_of([&] { c.check_unknown_keys(); });
  CHECK(err.find("x.yaml:2:3") != std::string::npos);
  CHECK(err.find("unknown key 'total_step' in 'train'") != std::string::npos);
  CHECK(err.find("did you mean 'total_steps'") != std::string::npos);
}

// Found by fuzz_config: a '[' in a key that opens no index made path splitting throw
// std::invalid_argument ("stol") instead of naming the key.
TEST_CASE("config_key_with_a_bracket_is_named_as_written") {
  Config c(ConfigTree::load_string("rollout:\n  max_new_t[le5ain: 3\n  steps[2: 1\n", "x.yaml"));
  auto rollout = c.root().section("rollout");
  CHECK(error_of([&] { rollout.get<std::string>("max_new_t[le5ain", ""); }) == "");
  CHECK(rollout.get<int64_t>("steps[2", 0) == 1);
  Config d(ConfigTree::load_string("rollout:\n  max_new_t[le5ain: 3\n", "x.yaml"));
  d.root().section("rollout").get<int64_t>("max_new_tokens", 1);
  std::string err = error_of([&] { d.check_unknown_keys(); });
  CHECK(err.find("x.yaml:2:3") != std::string::npos);
  CHECK(err.find("unknown key 'max_new_t[le5ain' in 'rollout'") != std::string::npos);
}

TEST_CASE("config_unknown_top_level_section_is_reported_once") {
  Config c(ConfigTree::load_string("seed: 1\ntrian:\n  a: 1\n", "x.yaml"));
  c.root().get<int64_t>("seed", 0);
  c.root().section("train");
  std::string err = error_of([&] { c.check_unknown_keys(); });
  CHECK(err.find("unknown key 'trian' in the top level; did you mean 'train'") != std::string::npos);
}

TEST_CASE("config_defaults_compose_in_order_with_paths_relative_to_the_including_file") {
  test::TempDir dir;
  dir.write("base/a.yaml", "x: 1\ny: {p: 1, q: 1}\nlist: [1, 2, 3]\n");
  dir.write("base/b.yaml", "defaults: [a.yaml]\ny: {q: 2}\n");
  dir.write("exp.yaml", "defaults: [base/b.yaml]\nlist: [9]\ny: {r: 3}\n");
  ConfigTree t = ConfigTree::load_file(dir.path() / "exp.yaml");
  const YAML::Node& r = t.root();
  CHECK(r["x"].as<int>() == 1);
  CHECK(r["y"]["p"].as<int>() == 1);
  CHECK(r["y"]["q"].as<int>() == 2);  // b overrides a
  CHECK(r["y"]["r"].as<int>() == 3);  // maps merge key by key
  CHECK(r["list"].size() == 1);       // lists replace
  CHECK_FALSE(r["defaults"].IsDefined());
  // Each value remembers the file it came from.
  CHECK(t.value_location("x").file.find("a.yaml") != std::string::npos);
  CHECK(t.value_location("y.q").file.find("b.yaml") != std::string::npos);
  CHECK(t.value_location("y.r").file.find("exp.yaml") != std::string::npos);
}

TEST_CASE("config_defaults_cycle_and_missing_file_are_errors") {
  test::TempDir dir;
  dir.write("a.yaml", "defaults: [b.yaml]\n");
  dir.write("b.yaml", "defaults: [a.yaml]\n");
  dir.write("c.yaml", "defaults: [nope.yaml]\n");
  CHECK(error_of([&] { ConfigTree::load_file(dir.path() / "a.yaml"); }).find("includes itself") != std::string::npos);
  std::string err = error_of([&] { ConfigTree::load_file(dir.path() / "c.yaml"); });
  CHECK(err.find("c.yaml:1:12") != std::string::npos);
  CHECK(err.find("nope.yaml") != std::string::npos);
}

TEST_CASE("config_overrides_parse_values_as_yaml_and_create_sections") {
  ConfigTree t = ConfigTree::load_string("a: {b: 1}\n");
  t.apply_overrides({"a.b=2.5", "a.c=[1, 2]", "x.y.z=true", "s=hello world"});
  Config c(std::move(t));
  auto root = c.root();
  CHECK(root.section("a").get<double>("b", 0) == 2.5);
  CHECK(root.section("a").get<std::vector<int>>("c", {}) == std::vector<int>{1, 2});
  CHECK(root.section("x").section("y").get<bool>("z", false));
  CHECK(root.get<std::string>("s", "") == "hello world");
}

TEST_CASE("config_override_errors_name_the_override") {
  ConfigTree t = ConfigTree::load_string("a: 1\n");
  CHECK(error_of([&] { t.apply_override("novalue"); }).find("expected key.path=value") != std::string::npos);
  CHECK(error_of([&] { t.apply_override("a.b=1"); }).find("'a' is '1', not a map") != std::string::npos);
  t.apply_override("a=x");
  Config c(std::move(t));
  std::string err = error_of([&] { c.root().get<int>("a", 0); });
  CHECK(err.find("command-line override 'a=x'") != std::string::npos);
}

TEST_CASE("config_invalid_yaml_reports_line") {
  test::TempDir dir;
  dir.write("bad.yaml", "a: 1\nb: [1, 2\nc: 3\n");
  std::string err = error_of([&] { ConfigTree::load_file(dir.path() / "bad.yaml"); });
  CHECK(err.find("bad.yaml:") != std::string::npos);
  CHECK(err.find("invalid YAML") != std::string::npos);
}

TEST_CASE("config_resolved_holds_every_value_read_and_reads_back_the_same") {
  Config c(ConfigTree::load_string("a: 2\nsec: {lr: 3.0e-4}\nworkers: [{role: actor}, {role: trainer, count: 2}]\n"));
  auto read = [](Config& cfg) {
    auto root = cfg.root();
    root.get<int64_t>("a", 1);
    root.get<std::string>("missing", "dflt");
    root.section("sec").get<double>("lr", 1.0);
    root.section("sec").get<double>("gamma", 0.99);
    for (auto w : root.list("workers")) {
      w.get<std::string>("role", "");
      w.get<int64_t>("count", 1);
    }
  };
  read(c);
  std::string yaml = c.resolved_yaml();
  CHECK(yaml.find("missing: dflt") != std::string::npos);
  CHECK(yaml.find("gamma: 0.99") != std::string::npos);
  CHECK(yaml.find("lr: 0.0003") != std::string::npos);
  Config again(ConfigTree::load_string(yaml));
  read(again);
  CHECK(again.resolved_yaml() == yaml);
  CHECK(again.resolved()["workers"][1]["count"].as<int>() == 2);
  CHECK(again.resolved()["workers"][0]["count"].as<int>() == 1);
}

// Found by fuzz_config: a key with a dot ("a.b") is recorded in the resolved config as a path,
// and a section read after it at the same path made the bookkeeping throw YAML::BadSubscript.
TEST_CASE("config_dotted_key_and_a_section_at_the_same_path_resolve_without_throwing") {
  Config c(ConfigTree::load_string("a.b: 1\na: {b: {c: 2}}\n"));
  auto root = c.root();
  CHECK(root.get<int64_t>("a.b", 0) == 1);
  CHECK(root.section("a").section("b").get<int64_t>("c", 0) == 2);
  CHECK(c.resolved()["a"]["b"]["c"].as<int>() == 2);
}

TEST_CASE("closest_match_tolerates_small_typos_only") {
  CHECK(core::closest_match("trian", {"train", "seed"}) == "train");
  CHECK(core::closest_match("total_step", {"total_steps", "lr"}) == "total_steps");
  CHECK(core::closest_match("zzzzzz", {"train", "seed"}) == "");
}

TEST_CASE("registry_loads_builtins_on_first_use_and_names_an_unknown_entry_with_a_suggestion") {
  int loads = 0;
  core::Registry<int> r("widget", [&](core::Registry<int>& self) {
    ++loads;
    self.add("sprocket", 1);
    self.add("gear", 2);
  });
  CHECK(loads == 0);
  r.add("cog", 3);  // a user's entry joins the built-in ones
  CHECK(loads == 1);
  CHECK(r.at("gear") == 2);
  CHECK((r.names() == std::vector<std::string>{"cog", "gear", "sprocket"}));
  CHECK(r.find("chain") == nullptr);
  CHECK_THROWS_WITH_AS(r.at("sprockett"),
                       "unknown widget 'sprockett'; did you mean 'sprocket'? (known: cog, gear, sprocket)", ConfigError);
  CHECK_THROWS_WITH_AS(r.at("zzzzzz"), "unknown widget 'zzzzzz' (known: cog, gear, sprocket)", ConfigError);
  CHECK_THROWS_WITH_AS(r.add("gear", 4), "a widget named 'gear' is already registered", Error);
  CHECK(loads == 1);
  // A config key read against the registry points at the file and line.
  core::Config c(core::ConfigTree::load_string("algo:\n  name: geer\n", "exp.yaml"));
  CHECK_THROWS_WITH_AS(r.choose(c.root().section("algo"), "name", "gear"), doctest::Contains("exp.yaml:2"), ConfigError);
  CHECK_THROWS_WITH_AS(r.choose(c.root().section("algo"), "name", "gear"), doctest::Contains("did you mean 'gear'?"), ConfigError);
}
