// `flotilla env list`, `env trace` and `bench env` as a user runs them.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <sstream>

#include "support/cli.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;

namespace {
using test::contains;
const std::string kCli = FLOTILLA_TEST_CLI;
std::vector<nlohmann::json> json_lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}
}  // namespace

TEST_CASE("cli_env_list_names_every_classic_env_with_its_spaces") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"env", "list"}, dir.path());
  REQUIRE(r.code == 0);
  for (const char* id : {"CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1"})
    CHECK(contains(r.out, id));
  CHECK(contains(r.out, "Discrete(2)"));
  auto j = test::run_cli(kCli, {"env", "list", "--json"}, dir.path());
  REQUIRE(j.code == 0);
  auto list = nlohmann::json::parse(j.out);
  bool found = false;
  for (const auto& e : list)
    if (e["id"] == "Pendulum-v1") {
      found = true;
      CHECK(e["action_space"] == "Box(-2.0, 2.0, (1,), float32)");
      CHECK(e["state"] == nlohmann::json::array({"theta", "theta_dot"}));
    }
  CHECK(found);
}

TEST_CASE("cli_env_trace_prints_one_json_object_per_step") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"env", "trace", "--env", "CartPole-v1", "--init-state", "[0, 0, 0, 0]", "--actions", "[1, 1, 0]"},
                         dir.path());
  REQUIRE(r.code == 0);
  auto lines = json_lines(r.out);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0]["t"] == 0);
  CHECK(lines[0]["obs"] == nlohmann::json::array({0.0, 0.0, 0.0, 0.0}));
  CHECK(lines[1]["t"] == 1);
  CHECK(lines[1]["action"] == 1);
  CHECK(lines[1]["reward"] == 1.0);
  CHECK(lines[1]["terminated"] == false);
  CHECK(lines[1]["truncated"] == false);
  CHECK(lines[1]["obs"][1].get<double>() == doctest::Approx(0.195122).epsilon(1e-5));
  CHECK(lines[3]["action"] == 0);

  // Continuous actions from a file, one per line; the trace stops at the end of the episode.
  auto file = dir.write("actions.txt", "[1.0]\n[1.0]\n[1.0]\n[1.0]\n");
  auto c = test::run_cli(kCli, {"env", "trace", "--env", "MountainCarContinuous-v0", "--init-state", "[0.44, 0.05]",
                                "--actions-file", file.string()},
                         dir.path());
  REQUIRE(c.code == 0);
  auto cl = json_lines(c.out);
  REQUIRE(cl.size() == 2);
  CHECK(cl[1]["terminated"] == true);
  CHECK(cl[1]["reward"].get<double>() == doctest::Approx(99.9));
  CHECK(contains(c.err, "3 remaining actions were not used"));

  // The same seed gives the same reset state; another seed another one.
  auto s1 = test::run_cli(kCli, {"env", "trace", "--env", "Acrobot-v1", "--seed", "5"}, dir.path());
  auto s2 = test::run_cli(kCli, {"env", "trace", "--env", "Acrobot-v1", "--seed", "5"}, dir.path());
  auto s3 = test::run_cli(kCli, {"env", "trace", "--env", "Acrobot-v1", "--seed", "6"}, dir.path());
  CHECK(s1.out == s2.out);
  CHECK(s1.out != s3.out);
}

TEST_CASE("cli_env_trace_bad_input_exits_2_with_a_reason") {
  test::TempDir dir;
  auto wrong_len = test::run_cli(kCli, {"env", "trace", "--env", "Pendulum-v1", "--init-state", "[1, 2, 3]"}, dir.path());
  CHECK(wrong_len.code == 2);
  CHECK(contains(wrong_len.err, "takes 2 numbers [theta, theta_dot]"));
  auto unknown = test::run_cli(kCli, {"env", "trace", "--env", "Pendulum-v0"}, dir.path());
  CHECK(unknown.code == 2);
  CHECK(contains(unknown.err, "did you mean 'Pendulum-v1'?"));
  auto out_of_range = test::run_cli(kCli, {"env", "trace", "--env", "CartPole-v1", "--actions", "[0, 7]"}, dir.path());
  CHECK(out_of_range.code == 2);
  CHECK(contains(out_of_range.err, "step 2: CartPole-v1: env 0: action 7 is outside Discrete(2)"));
  auto not_json = test::run_cli(kCli, {"env", "trace", "--env", "CartPole-v1", "--init-state", "[0, 0"}, dir.path());
  CHECK(not_json.code == 2);
  CHECK(contains(not_json.err, "--init-state is not valid JSON"));
  auto wrong_kind = test::run_cli(kCli, {"env", "trace", "--env", "Pendulum-v1", "--actions", "[\"left\"]"}, dir.path());
  CHECK(wrong_kind.code == 2);
  CHECK(contains(wrong_kind.err, "expected 1 values") == false);
  CHECK(contains(wrong_kind.err, "expected numbers"));
}

TEST_CASE("cli_bench_env_prints_steps_per_second") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"bench", "env", "--env", "CartPole-v1", "--num-envs", "256", "--threads", "2", "--steps", "50"},
                         dir.path());
  REQUIRE(r.code == 0);
  std::string last = r.out.substr(r.out.rfind("steps_per_second: "));
  CHECK(std::stod(last.substr(18)) > 0);
  auto j = test::run_cli(kCli, {"bench", "env", "--env", "Pendulum-v1", "--num-envs", "100", "--steps", "20", "--json"}, dir.path());
  REQUIRE(j.code == 0);
  auto o = nlohmann::json::parse(j.out);
  CHECK(o["env"] == "Pendulum-v1");
  CHECK(o["num_envs"] == 100);
  CHECK(o["threads"] == 1);
  CHECK(o["backend"] == "cpu");
  CHECK(o["steps_per_second"].get<double>() > 0);
  auto bad = test::run_cli(kCli, {"bench", "env", "--env", "Nope-v0"}, dir.path());
  CHECK(bad.code == 2);
}
