// Worker processes, worker-group RPC and the controller's monitoring, on loopback.
#include <signal.h>

#include <thread>
#include <yaml-cpp/yaml.h>
#include <zmq.hpp>

#include "actors/collective.hpp"
#include "controller/cluster.hpp"
#include "controller/rlhf_data.hpp"
#include "controller/experiment.hpp"
#include "core/error.hpp"
#include "core/name_service.hpp"
#include "core/names.hpp"
#include "support/temp_dir.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using actors::Dispatch;

namespace {
controller::ClusterOptions options() {
  controller::ClusterOptions o;
  o.executable = FLOTILLA_TEST_CLI;
  o.heartbeat = std::chrono::milliseconds(100);
  o.heartbeat_timeout = std::chrono::milliseconds(3000);  // generous: CI runs other tests beside these
  o.call_timeout = std::chrono::milliseconds(10000);
  return o;
}
core::Batch rows(int64_t n) {
  core::Batch b;
  b.set("x", at::arange(n, at::kFloat));
  return b;
}
}  // namespace

TEST_CASE("rpc_dispatch_modes_and_uneven_chunks") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 3}}, options());
  auto& g = cluster.group("echo");
  CHECK(g.size() == 3);
  // One to all: every rank answers; futures come back per rank.
  auto futures = g.call("rank");
  REQUIRE(futures.size() == 3);
  for (int r = 0; r < 3; ++r) CHECK(futures[r].get().result == std::to_string(r));
  // Rank zero only.
  CHECK(g.run("rank", "", {}, Dispatch::RankZero).result == "0");
  // Data-parallel chunks of 7 rows over 3 ranks: 3, 2, 2, concatenated back in order.
  auto chunked = g.call("double", "", rows(7), Dispatch::DpChunk);
  std::vector<std::string> sizes;
  std::vector<actors::CallResult> results;
  for (auto& f : chunked) results.push_back(f.get());
  for (auto& r : results) sizes.push_back(r.result);
  CHECK((sizes == std::vector<std::string>{"3", "2", "2"}));
  auto again = g.call("double", "", rows(7), Dispatch::DpChunk);
  auto joined = g.collect(again, "double", Dispatch::DpChunk);
  CHECK(at::equal(joined.batch["x"], at::arange(7, at::kFloat) * 2));
  CHECK(at::equal(joined.batch["rank"], at::tensor(std::vector<int64_t>{0, 0, 0, 1, 1, 2, 2})));
  // Fewer rows than ranks: the last rank gets an empty chunk and still answers.
  auto tiny = g.run("double", "", rows(2), Dispatch::DpChunk);
  CHECK(tiny.batch.size() == 2);
  // Groups kept whole (GRPO groups, DPO pairs): 5 pairs over 3 ranks are 2, 2 and 1 pairs.
  auto grouped = g.call_parts("double", "", controller::chunk_groups(rows(10), 2, 3));
  std::vector<std::string> grouped_sizes;
  for (auto& r : cluster.wait("echo", grouped, "double")) grouped_sizes.push_back(r.result);
  CHECK((grouped_sizes == std::vector<std::string>{"4", "4", "2"}));
  CHECK_THROWS_WITH_AS(g.call_parts("double", "", {rows(1)}), doctest::Contains("1 parts for 3 ranks"), Error);
  cluster.check();
}

TEST_CASE("rpc_exception_comes_back_naming_worker_rank_and_method") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 2}}, options());
  try {
    cluster.group("echo").run("fail", "on purpose");
    FAIL("expected an error");
  } catch (const Error& e) {
    const std::string what = e.what();
    CHECK(what.find("worker echo/0 (rank 0), method 'fail': failing as asked: on purpose") != std::string::npos);
  }
  try {
    cluster.group("echo").run("nope");
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("no method 'nope' (methods: double, fail, ping, rank, stop)") != std::string::npos);
  }
  cluster.check();  // the workers are still fine
  CHECK(cluster.group("echo").run("ping").result == "echo/0");
}

TEST_CASE("worker_drops_a_malformed_message_and_keeps_serving") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 1}}, options());
  auto names = core::directory_name_service(dir.path() / "names");
  auto keys = names->list("flotilla/rpc/");
  std::string endpoint;
  for (const auto& k : keys)
    if (k.find("/workers/echo/0/rpc") != std::string::npos) endpoint = *names->get(k);
  REQUIRE_FALSE(endpoint.empty());
  zmq::context_t context(1);
  zmq::socket_t rogue(context, zmq::socket_type::dealer);
  rogue.set(zmq::sockopt::linger, 0);
  rogue.connect(endpoint);
  rogue.send(zmq::str_buffer("this is not an envelope!"));  // 24 bytes of garbage
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(cluster.group("echo").run("rank").result == "0");
  cluster.check();
}

TEST_CASE("a_killed_worker_is_detected_within_the_heartbeat_timeout") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 2}}, options());
  cluster.check();
  const auto t0 = std::chrono::steady_clock::now();
  ::kill(cluster.pid("echo", 1), SIGKILL);
  std::string failure;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) {
    try {
      cluster.check();
    } catch (const Error& e) {
      failure = e.what();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(failure.find("worker echo/1") != std::string::npos);
  CHECK(failure.find("killed by signal 9") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1500));
}

TEST_CASE("a_stopped_worker_is_detected_by_missing_heartbeats") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 1}}, options());
  const pid_t pid = cluster.pid("echo", 0);
  ::kill(pid, SIGSTOP);  // alive but silent
  std::string failure;
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10) && failure.empty()) {
    try {
      cluster.check();
    } catch (const Error& e) {
      failure = e.what();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGCONT);
  CHECK(failure.find("worker echo/0") != std::string::npos);
  CHECK(failure.find("sent no heartbeat for 3000 ms") != std::string::npos);
}

TEST_CASE("no_worker_outlives_the_cluster") {
  test::TempDir dir;
  std::vector<pid_t> pids;
  {
    controller::Cluster cluster(dir.path(), "rpc", {{"echo", 2}}, options());
    pids = {cluster.pid("echo", 0), cluster.pid("echo", 1)};
    for (pid_t p : pids) CHECK(::kill(p, 0) == 0);
  }
  for (pid_t p : pids) CHECK(::kill(p, 0) != 0);  // reaped and gone
}

TEST_CASE("gloo_allreduce_mean_averages_over_ranks") {
  test::TempDir dir;
  std::vector<at::Tensor> results(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      actors::Collective c(dir.path() / "store", r, 2);
      at::Tensor a = at::full({3}, static_cast<float>(r + 1)), b = at::full({2, 2}, static_cast<float>(10 * r));
      c.allreduce_mean({a, b});
      results[r] = at::cat({a, b.reshape({-1})});
    });
  }
  for (auto& t : ranks) t.join();
  CHECK(at::allclose(results[0], results[1]));
  CHECK(results[0][0].item<float>() == 1.5f);
  CHECK(results[0][3].item<float>() == 5.0f);
}

TEST_CASE("rl_workers_pause_resume_and_report_through_poll") {
  test::TempDir dir;
  auto loaded = controller::load_experiment(std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_ppo_distributed.yaml",
                                            {"workers=[{role: env_actor, count: 1}, {role: policy_worker, count: 1}, "
                                             "{role: trainer, count: 1}]"});
  const std::string config = loaded.config->resolved_yaml();
  controller::Cluster cluster(dir.path(), "life", {{"trainer", 1}, {"policy_worker", 1}, {"env_actor", 1}}, options());
  for (const char* role : {"trainer", "policy_worker", "env_actor"}) cluster.run(role, "configure", config);
  CHECK(cluster.run("env_actor", "poll").result.find("state: configured") != std::string::npos);
  cluster.run("trainer", "publish");
  cluster.run("trainer", "start", "1");
  cluster.run("policy_worker", "start");
  cluster.run("env_actor", "start");
  auto steps = [&] {
    YAML::Node n = YAML::Load(cluster.run("env_actor", "poll").result);
    return n["env_steps"].as<int64_t>();
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (steps() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(steps() > 0);
  CHECK(cluster.run("env_actor", "pause").result == "paused");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the fragment under way finishes
  const int64_t paused_at = steps();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK(steps() == paused_at);
  CHECK(cluster.run("env_actor", "poll").result.find("state: paused") != std::string::npos);
  cluster.run("env_actor", "resume");
  const auto again = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (steps() == paused_at && std::chrono::steady_clock::now() < again) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(steps() > paused_at);
  cluster.check();
}
