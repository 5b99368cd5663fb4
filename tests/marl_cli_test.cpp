// Multi-agent runs from the command line: every shipped config, QMIX resume, a distributed MAPPO
// job, env trace and bench env on multi-agent envs, and the errors a user can run into.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>
#include <sstream>
#include <csignal>
#include <thread>

#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "support/cli.hpp"
#include "support/cli_checks.hpp"
#include "support/processes.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {
using test::contains;
using test::summary_of;
using test::metric_names;
const std::string kCli = FLOTILLA_TEST_CLI;
std::string config(const std::string& name) { return test::config_path(name); }

// The JSON objects of a command's output, one a line (env trace).
std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  return lines;
}
}  // namespace

TEST_CASE("marl_configs_run_a_short_job") {
  struct Case {
    const char* file;
    std::vector<std::string> overrides;
    std::vector<const char*> metrics;
  };
  const std::vector<Case> cases = {
      {"mpe_spread_mappo.yaml", {"train.total_steps=400", "env.num_envs=4", "train.num_steps=25"},
       {"charts/episodic_return", "losses/value_loss", "losses/explained_variance"}},
      {"mpe_tag_ippo.yaml", {"train.total_steps=400", "env.num_envs=4", "train.num_steps=25"},
       {"charts/episodic_return", "losses/policy_loss"}},
      {"smax_3m_mappo.yaml", {"train.total_steps=2000", "env.num_envs=8", "train.num_steps=50"},
       {"charts/win_rate", "charts/episodic_return", "losses/policy_loss"}},
      {"smax_2s3z_mappo.yaml", {"train.total_steps=2000", "env.num_envs=8", "train.num_steps=50"},
       {"charts/win_rate", "losses/policy_loss"}},
      {"smax_3m_qmix.yaml",
       {"train.total_steps=2000", "env.num_envs=8", "algo.learning_starts=4", "algo.batch_size=4"},
       {"charts/win_rate", "charts/epsilon", "losses/td_loss", "losses/q_values"}},
      {"overcooked_cramped_room_ippo.yaml", {"train.total_steps=1600", "env.num_envs=2", "train.num_steps=400"},
       {"charts/episodic_return", "losses/policy_loss"}},
      {"overcooked_counter_circuit_mappo.yaml", {"train.total_steps=1600", "env.num_envs=2", "train.num_steps=400"},
       {"charts/episodic_return", "losses/value_loss"}},
      {"hanabi_full_mappo.yaml", {"train.total_steps=4000", "env.num_envs=8", "train.num_steps=100"},
       {"charts/episodic_return", "losses/policy_loss"}},
      {"hanabi_full_vdn.yaml",
       {"train.total_steps=2000", "env.num_envs=4", "algo.learning_starts=4", "algo.batch_size=4"},
       {"charts/episodic_return", "losses/td_loss"}},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.file));
    test::TempDir dir;
    auto v = test::run_cli(kCli, {"validate", config(c.file)}, dir.path());
    CHECK(v.code == 0);
    std::vector<std::string> args = {"run", "-q", config(c.file), "run.dir=r", "stop.window=100000"};
    args.insert(args.end(), c.overrides.begin(), c.overrides.end());
    auto r = test::run_cli(kCli, args, dir.path(), dir.path());
    REQUIRE_MESSAGE(r.code == 0, r.err);
    auto s = summary_of(dir.path() / "r");
    CHECK(s["exit_reason"] == "completed");
    auto names = metric_names(dir.path() / "r");
    for (const char* m : c.metrics) CHECK_MESSAGE(names.count(m), std::string(m));
    CHECK(fs::exists(dir.path() / "r" / "checkpoints"));
    auto e = test::run_cli(kCli, {"eval", "r", "--episodes", "3", "--json"}, dir.path(), dir.path());
    REQUIRE_MESSAGE(e.code == 0, e.err);
    auto j = nlohmann::json::parse(e.out);
    CHECK(j["episodes"] == 3);
    CHECK(j.contains("win_rate") == contains(c.file, "smax"));
  }
}

TEST_CASE("every_overcooked_config_loads") {
  test::TempDir dir;
  for (const char* layout : {"cramped_room", "asymmetric_advantages", "coordination_ring", "forced_coordination",
                             "counter_circuit"})
    for (const char* algo : {"ippo", "mappo"}) {
      const std::string file = std::string("overcooked_") + layout + "_" + algo + ".yaml";
      CAPTURE(file);
      auto v = test::run_cli(kCli, {"validate", config(file)}, dir.path());
      CHECK_MESSAGE(v.code == 0, v.err);
    }
  // IPPO's critics are local: the agent-specific critic is MAPPO's.
  test::check_config_error(kCli, {"validate", config("overcooked_cramped_room_ippo.yaml"), "model.critic=agent_specific"},
                           dir.path(), "mappo");
}

TEST_CASE("qmix_ctrl_c_then_resume_continues_the_run") {
  test::TempDir dir;
  // Ctrl-C once the run has logged rows past `rows`: it has started and made progress.
  auto interrupted_run = [&](const std::vector<std::string>& args, size_t rows) {
    test::CliProcess p(kCli, args, dir.path(), dir.path());
    const fs::path metrics = dir.path() / "r" / "metrics.jsonl";
    REQUIRE(test::wait_until([&] { return fs::exists(metrics) && core::read_metrics_jsonl(metrics).size() > rows + 5; }, 60));
    p.signal(SIGINT);
    return p.wait(60);
  };
  auto first = interrupted_run({"run", config("smax_3m_qmix.yaml"), "run.dir=r", "train.total_steps=100000000",
                                "env.num_envs=4", "algo.learning_starts=2", "algo.batch_size=2"},
                               0);
  CHECK(first.code == 130);
  const double stopped_at = summary_of(dir.path() / "r")["global_step"].get<double>();
  CHECK(stopped_at > 0);
  const size_t rows_before = core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl").size();
  auto second = interrupted_run({"resume", "-q", "r"}, rows_before);
  CHECK(second.code == 130);
  CHECK(summary_of(dir.path() / "r")["global_step"].get<double>() > stopped_at);
  auto rows = core::read_metrics_jsonl(dir.path() / "r" / "metrics.jsonl");
  REQUIRE(rows.size() > rows_before);
  CHECK(rows[rows_before].step > stopped_at);  // the resumed run counts on from the checkpoint
}

TEST_CASE("mappo_runs_across_processes") {
  test::TempDir dir;
  const fs::path cfg = dir.write("spread_distributed.yaml", "defaults: [" + config("mpe_spread_mappo.yaml") + R"(]
name: spread_distributed
env: {num_envs: 4}
workers:
  - {role: env_actor, count: 2}
  - {role: policy_worker, count: 1}
  - {role: trainer, count: 1}
train: {total_steps: 1000, num_steps: 25}
)");
  auto r = test::run_cli(kCli, {"run", "-q", cfg.string(), "run.dir=r"}, dir.path(), dir.path());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  auto s = summary_of(dir.path() / "r");
  CHECK(s["global_step"].get<double>() >= 1000);
  auto names = metric_names(dir.path() / "r");
  CHECK(names.count("charts/episodic_return"));
  CHECK(names.count("losses/value_loss"));
}

TEST_CASE("marl_config_errors_name_the_problem") {
  test::TempDir dir;
  test::check_config_error(kCli, {"validate", config("smax_3m_qmix.yaml"), "workers=[{role: trainer}]"}, dir.path(), "one process");
  test::check_config_error(kCli, {"validate", config("smax_3m_qmix.yaml"), "env.id=mpe/simple_spread",
                                         "env.params={continuous_actions: true}"}, dir.path(), "continuous");
  test::check_config_error(kCli, {"validate", config("mpe_spread_mappo.yaml"), "stop.win_rate=0.5"}, dir.path(), "no win or loss");
  test::check_config_error(kCli, {"validate", config("smax_3m_qmix.yaml"), "algo.name=qmx"}, dir.path(), "qmix");
  test::check_config_error(kCli, {"validate", config("mpe_spread_mappo.yaml"), "env.params.N=40"}, dir.path(), "N must be between 1 and 16");
}

TEST_CASE("env_trace_and_bench_work_on_multi_agent_envs") {
  test::TempDir dir;
  auto t = test::run_cli(kCli, {"env", "trace", "--env", "mpe/simple_spread", "--param", "N=2", "--init-state",
                                R"({"agents":[{"p_pos":[0,0]},{"p_pos":[1,0]}],"landmarks":[{"p_pos":[0,1]},{"p_pos":[1,1]}]})",
                                "--actions", "[[2,0],[0,0]]"},
                         dir.path());
  REQUIRE_MESSAGE(t.code == 0, t.err);
  const std::vector<nlohmann::json> lines = json_lines(t.out);
  REQUIRE(lines.size() == 3);
  CHECK(lines[0]["agents"]["agent_1"]["obs"][2].get<double>() == 1.0);  // own position x
  CHECK(lines[1]["agents"]["agent_0"]["obs"][0].get<double>() == doctest::Approx(0.5));  // pushed right
  // Each landmark has an agent under it: no distance penalty, no collision.
  CHECK(lines[2]["agents"]["agent_1"].contains("reward"));
  test::check_config_error(kCli, {"env", "trace", "--env", "mpe/simple_spread", "--actions", "[[7,0,0]]"}, dir.path(), "agent_0");
  auto b = test::run_cli(kCli, {"bench", "env", "--env", "smax/3m", "--num-envs", "64", "--steps", "20", "--json"}, dir.path());
  REQUIRE(b.code == 0);
  auto j = nlohmann::json::parse(b.out);
  CHECK(j["agents"] == 3);
  CHECK(j["agent_steps_per_second"].get<double>() == doctest::Approx(3 * j["steps_per_second"].get<double>()));
  // Turn-based Hanabi: the trace lists the legal moves, the bench draws legal moves.
  std::string deck = R"({"deck":["R1","R2","Y1","W5","B3","G1","R1","Y2","B1","W1")";
  for (const char* c : {"R", "Y", "G", "W", "B"})
    for (int r = 1; r <= 5; ++r) {
      int copies = r == 1 ? 3 : r == 5 ? 1 : 2;
      for (const std::string dealt : {"R1", "R2", "Y1", "W5", "B3", "G1", "R1", "Y2", "B1", "W1"})
        copies -= dealt == std::string(c) + std::to_string(r);
      for (int k = 0; k < copies; ++k) deck += std::string(",\"") + c + std::to_string(r) + "\"";
    }
  deck += "]}";
  auto h = test::run_cli(kCli, {"env", "trace", "--env", "hanabi/full", "--init-state", deck, "--actions", "[[15,20],[20,0]]"},
                         dir.path());
  REQUIRE_MESSAGE(h.code == 0, h.err);
  const std::vector<nlohmann::json> moves = json_lines(h.out);
  REQUIRE(moves.size() == 3);
  CHECK(moves[0]["agents"]["player_0"]["legal"] == nlohmann::json({5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}));
  CHECK(moves[0]["agents"]["player_1"]["legal"] == nlohmann::json({20}));
  CHECK(moves[1]["agents"]["player_1"]["legal"][0] == 0);  // a hint was spent: discards are legal
  CHECK(moves[2]["agents"]["player_0"]["reward"] == 0.0);
  test::check_config_error(kCli, {"env", "trace", "--env", "hanabi/full", "--actions", "[[0,20]]"}, dir.path(),
                           "not legal now");
  auto hb = test::run_cli(kCli, {"bench", "env", "--env", "hanabi/full", "--num-envs", "64", "--steps", "20", "--json"},
                          dir.path());
  REQUIRE_MESSAGE(hb.code == 0, hb.err);
  auto hj = nlohmann::json::parse(hb.out);
  CHECK(hj["actions"] == "random legal");
  CHECK(hj["steps_per_second_without_sampling"].get<double>() >= hj["steps_per_second"].get<double>());
  auto list = test::run_cli(kCli, {"env", "list"}, dir.path());
  CHECK(contains(list.out, "overcooked/forced_coordination"));
  CHECK(contains(list.out, "hanabi/very_small"));
  CHECK(contains(list.out, "agent leadadversary_0: observations Box(-inf, inf, (34,), float32), actions Discrete(20)"));
  CHECK(contains(list.out, "smax/3s_vs_5z"));
}
