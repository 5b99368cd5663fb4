// The worker runtime on loopback: typed methods and their dispatch, data kept on workers and
// passed worker to worker, lanes, the lifecycle, and the controller's monitoring.
#include <signal.h>

#include <thread>
#include <zmq.hpp>

#include "actors/lm/methods.hpp"
#include "actors/lm/rollout.hpp"
#include "actors/rl/common.hpp"
#include "controller/cluster/cluster.hpp"
#include "controller/run/experiment.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/name_service.hpp"
#include "models/transformer.hpp"
#include "runtime/collective.hpp"
#include "runtime/worker.hpp"
#include "support/echo_methods.hpp"
#include "support/processes.hpp"
#include "support/temp_dir.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using namespace flotilla::test;

namespace {
controller::ClusterOptions options() {
  controller::ClusterOptions o;
  o.executable = FLOTILLA_TEST_CLI;
  o.heartbeat = std::chrono::milliseconds(100);
  o.heartbeat_timeout = std::chrono::milliseconds(3000);  // generous: CI runs other tests beside these
  o.call_timeout = std::chrono::milliseconds(20000);
  return o;
}
core::Batch rows(int64_t n) {
  core::Batch b;
  b.set("x", at::arange(n, at::kFloat));
  return b;
}
std::vector<int64_t> ranks_of(const runtime::Reply<EchoScale>& r) {
  std::vector<int64_t> out;
  for (const auto& v : r.ranks) out.push_back(v.version);
  return out;
}
// The same FNV-1a checksum the echo role computes, over the bytes of every field in order.
double checksum(const core::Batch& b) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& name : b.names()) {
    const at::Tensor t = b[name].contiguous();
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  return static_cast<double>(h >> 11);
}
// Methods no worker has in the shape they are called: an unknown name, and two whose fields do not
// match their wire struct.
struct Nope {
  static constexpr runtime::MethodSpec spec{"echo.nope"};
  using Wire = proto::Empty;
  using Result = runtime::Void;
  auto fields() { return std::tie(); }
};
struct WrongKind {  // Scale is {factor: Float64, note: Text}
  static constexpr runtime::MethodSpec spec{"test.wrong_kind"};
  using Wire = proto::Scale;
  using Result = runtime::Void;
  int64_t factor = 0;
  std::string note;
  auto fields() { return std::tie(factor, note); }
};
struct WrongCount {
  static constexpr runtime::MethodSpec spec{"test.wrong_count"};
  using Wire = proto::Scale;
  using Result = runtime::Void;
  double factor = 0;
  auto fields() { return std::tie(factor); }
};
double scalar(const core::Scalars& s, const std::string& name) {
  for (const auto& [k, v] : s)
    if (k == name) return v;
  FAIL("no " << name);
  return 0;
}
}  // namespace

TEST_CASE("typed_dispatch_one_to_all_rank_zero_and_uneven_chunks_that_keep_groups_whole") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 3}}, options());
  auto& g = cluster.group("echo");
  // One to all: every rank answers, in rank order.
  auto all = g.call(EchoRank{}).get();
  REQUIRE(all.ranks.size() == 3);
  for (int r = 0; r < 3; ++r) CHECK(all.ranks[r].version == r);
  // Rank zero: one reply, all the rows.
  auto zero = g.call(EchoScaleOnZero{.factor = 3, .note = ""}, rows(4)).get();
  REQUIRE(zero.ranks.size() == 1);
  CHECK(zero.result().version == 4);
  CHECK(at::equal(zero.batch["x"], at::arange(4, at::kFloat) * 3));
  // Data-parallel chunks of 7 rows over 3 ranks: 3, 2, 2, concatenated back in order.
  auto chunked = g.call(EchoScale{.factor = 2, .note = ""}, rows(7)).get();
  CHECK((ranks_of(chunked) == std::vector<int64_t>{3, 2, 2}));
  CHECK(at::equal(chunked.batch["x"], at::arange(7, at::kFloat) * 2));
  CHECK(at::equal(chunked.batch["rank"], at::tensor(std::vector<int64_t>{0, 0, 0, 1, 1, 2, 2})));
  // Fewer rows than ranks: the last rank gets an empty chunk and still answers.
  auto tiny = g.call(EchoScale{.factor = 2, .note = ""}, rows(2)).get();
  CHECK((ranks_of(tiny) == std::vector<int64_t>{1, 1, 0}));
  CHECK(tiny.batch.size() == 2);
  // Groups kept whole (GRPO groups, DPO pairs): 5 pairs over 3 ranks are 2, 2 and 1 pairs.
  auto grouped = g.call(EchoScale{.factor = 1, .note = ""}, runtime::Input(rows(10)).grouped(2)).get();
  CHECK((ranks_of(grouped) == std::vector<int64_t>{4, 4, 2}));
  // Groups of 4 over 3 ranks from 12 rows: 4 each; from 8 rows: 4, 4, 0.
  CHECK((ranks_of(g.call(EchoScale{}, runtime::Input(rows(8)).grouped(4)).get()) == std::vector<int64_t>{4, 4, 0}));
  CHECK_THROWS_WITH_AS(runtime::Input(rows(5)).grouped(2), doctest::Contains("5 rows do not split into groups of 2"), Error);
  cluster.check();
}

TEST_CASE("a_failing_method_a_wrong_argument_type_and_an_unknown_method_are_named") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 2}}, options());
  auto& g = cluster.group("echo");
  CHECK_THROWS_WITH_AS(g.call(EchoFail{.note = "on purpose"}).get(),
                       doctest::Contains("worker echo/0 (rank 0), method 'echo.fail': failing as asked: on purpose"), Error);
  // The right name with another argument type: refused by the worker, naming method and worker.
  CHECK_THROWS_WITH_AS(g.call(EchoScaleWrongType{.n = 3}).get(),
                       doctest::Contains("worker echo/0 (rank 0): method 'echo.scale' takes Scale arguments"), Error);
  CHECK_THROWS_WITH_AS(g.call(Nope{}).get(), doctest::Contains("no method 'echo.nope' (methods: configure, echo.block"), Error);
  cluster.check();  // the workers are still fine
  CHECK(g.call(EchoRank{}).get().ranks.size() == 2);
}

TEST_CASE("a_method_whose_fields_do_not_match_its_wire_struct_is_refused_at_registration") {
  runtime::Methods m("test/0");
  CHECK_THROWS_WITH_AS(m.on<WrongKind>([](const WrongKind&) { return runtime::Void{}; }),
                       doctest::Contains("worker test/0, method 'test.wrong_kind', arguments (Scale): field 'factor' is Float64 on the wire, Int64 in C++"),
                       Error);
  CHECK_THROWS_WITH_AS(m.on<WrongCount>([](const WrongCount&) { return runtime::Void{}; }),
                       doctest::Contains("the C++ struct lists 1 fields, the wire struct has 2"), Error);
  m.on<EchoRank>([](const EchoRank&) { return runtime::Version{}; });
  CHECK_THROWS_WITH_AS(m.on<EchoRank>([](const EchoRank&) { return runtime::Version{}; }),
                       doctest::Contains("worker test/0 registers method 'echo.rank' twice"), Error);
}

TEST_CASE("kept_rows_go_worker_to_worker_bit_identical_without_the_controller") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "data", {{"echo", 2}, {"echo_b", 1}}, options());
  {
    auto made = cluster.group("echo").call(EchoMake{.n = 4096}).get();  // 2 x 4096 rows, kept, ~2.2 MB each
    REQUIRE(made.data.rows() == 8192);
    CHECK((made.data.fields() == std::vector<std::string>{"f", "i"}));
    const int64_t before = cluster.transfer_bytes();
    auto sum = cluster.group("echo_b").call(EchoChecksum{}, made.data).get();
    // Rows moved from the echo workers to echo_b; not a tensor byte passed the controller.
    CHECK(cluster.transfer_bytes() == before);
    const core::Batch pulled = made.data.pull();
    CHECK(cluster.transfer_bytes() - before >= 8192 * (64 * 4 + 3 * 8));
    CHECK(scalar(sum.result().values, "checksum") == checksum(pulled));
    CHECK(scalar(sum.result().values, "rows") == 8192);
    // Each rank's object, pulled back, is the one it made.
    CHECK(scalar(made.ranks[1].values, "checksum") == checksum(made.data.slice(4096, 8192).pull()));
    // Selections and row orders travel as references too: odd rows across both holders, one field.
    std::vector<int64_t> odd;
    for (int64_t i = 8191; i > 0; i -= 2) odd.push_back(i);
    const runtime::DataRef picked = made.data.index(odd).select({"i"});
    auto picked_sum = cluster.group("echo_b").call(EchoChecksum{}, picked).get();
    CHECK(scalar(picked_sum.result().values, "checksum") == checksum(pulled.select({"i"}).index(at::tensor(odd, at::kLong))));
    // Joined with rows the controller sends.
    core::Batch extra;
    extra.set("w", at::arange(4096, at::kDouble));
    const runtime::DataRef joined = runtime::DataRef::join({made.data.slice(2048, 6144).select({"f"}), runtime::DataRef::of(extra)});
    auto joined_sum = cluster.group("echo_b").call(EchoChecksum{}, joined).get();
    core::Batch expect = pulled.slice(2048, 6144).select({"f"});
    expect.set("w", extra["w"]);
    CHECK(scalar(joined_sum.result().values, "checksum") == checksum(expect));
  }
  // When the last reference is gone, the holders free the objects.
  auto objects = [&] {
    double n = 0;
    for (const auto& s : cluster.group("echo").call(runtime::Poll{}).get().ranks) n += s.counter("store/objects");
    return n;
  };
  CHECK(test::wait_until([&] { return objects() == 0; }, 10));
}

TEST_CASE("a_method_on_another_lane_runs_while_a_long_one_is_in_progress") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "lanes", {{"echo", 1}}, options());
  auto& g = cluster.group("echo");
  auto blocked = g.call(EchoBlock{});  // main lane: waits until released (or 30 s)
  // The control lane answers while the main lane is busy.
  CHECK(g.call(runtime::Poll{}).get().result().state == "created");
  // A method on the side lane runs now, not after the block: it is what ends the block.
  g.call(EchoRelease{}).get();
  CHECK(blocked.get().result().version == 1);  // released, not timed out
}

TEST_CASE("a_worker_that_dies_during_a_call_ends_the_call_at_once_naming_it") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 2}}, options());
  auto blocked = cluster.group("echo").call(EchoBlock{});
  const auto t0 = std::chrono::steady_clock::now();
  ::kill(cluster.pid("echo", 1), SIGKILL);
  try {
    blocked.get();
    FAIL("expected an error");
  } catch (const Error& e) {
    const std::string what = e.what();
    CHECK(what.find("worker echo/1") != std::string::npos);
    CHECK(what.find("was killed by signal 9") != std::string::npos);
  }
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(2000));
  CHECK_THROWS_WITH_AS(cluster.check(), doctest::Contains("worker echo/1"), Error);
  // Later calls fail the same way instead of waiting.
  CHECK_THROWS_WITH_AS(cluster.group("echo").call(EchoRank{}).get(), doctest::Contains("killed by signal 9"), Error);
}

TEST_CASE("a_stopped_worker_is_detected_by_missing_heartbeats") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 1}}, options());
  const pid_t pid = cluster.pid("echo", 0);
  ::kill(pid, SIGSTOP);  // alive but silent
  std::string failure;
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10) && failure.empty()) {
    cluster.metrics(std::chrono::seconds(1));  // returns at once when a worker fails
    try {
      cluster.check();
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  ::kill(pid, SIGCONT);
  CHECK(failure.find("worker echo/0") != std::string::npos);
  CHECK(failure.find("sent no heartbeat for 3000 ms") != std::string::npos);
}

TEST_CASE("worker_drops_a_malformed_message_and_keeps_serving") {
  test::TempDir dir;
  controller::Cluster cluster(dir.path(), "rpc", {{"echo", 1}}, options());
  auto names = core::directory_name_service(dir.path() / "names");
  std::string endpoint;
  for (const auto& k : names->list("flotilla/rpc/"))
    if (k.find("/workers/echo/0/rpc") != std::string::npos) endpoint = *names->get(k);
  REQUIRE_FALSE(endpoint.empty());
  zmq::context_t context(1);
  zmq::socket_t rogue(context, zmq::socket_type::dealer);
  rogue.set(zmq::sockopt::linger, 0);
  rogue.connect(endpoint);
  rogue.send(zmq::str_buffer("this is not an envelope!"));  // 24 bytes of garbage
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  double dropped = 0;
  while (dropped == 0 && std::chrono::steady_clock::now() < deadline)
    dropped = cluster.group("echo").call(runtime::Poll{}).get().result().counter("transport/dropped");
  CHECK(dropped == 1);
  CHECK(cluster.group("echo").call(EchoRank{}).get().result().version == 0);
  cluster.check();
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
      runtime::Collective c(dir.path() / "store", r, 2);
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

TEST_CASE("rl_workers_start_pause_resume_and_report_through_poll") {
  test::TempDir dir;
  auto loaded = controller::load_experiment(std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_ppo_distributed.yaml",
                                            {"workers=[{role: env_actor, count: 1}, {role: policy_worker, count: 1}, "
                                             "{role: trainer, count: 1}]"});
  const std::string config = loaded.config->resolved_yaml();
  controller::Cluster cluster(dir.path(), "life", {{"trainer", 1}, {"policy_worker", 1}, {"env_actor", 1}}, options());
  auto& actor = cluster.group("env_actor");
  // Start before configure is refused, naming the worker.
  CHECK_THROWS_WITH_AS(actor.call(runtime::Start{}).get(), doctest::Contains("env_actor/0 was asked to start before it was configured"), Error);
  for (const char* g : {"trainer", "policy_worker", "env_actor"}) cluster.run(g, runtime::Configure{config});
  CHECK(actor.call(runtime::Poll{}).get().result().state == "configured");
  cluster.run("trainer", actors::rl::Publish{});
  for (const char* g : {"trainer", "policy_worker", "env_actor"}) cluster.run(g, runtime::Start{});
  auto steps = [&] { return actor.call(runtime::Poll{}).get().result().counter("env_steps"); };
  CHECK(test::wait_until([&] { return steps() > 0; }, 20));
  // Pause returns once the actor's loop is parked between fragments: nothing moves after it.
  CHECK(actor.call(runtime::Pause{}).get().result().state == "paused");
  const double paused_at = steps();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(steps() == paused_at);
  CHECK(actor.call(runtime::Resume{}).get().result().state == "running");
  CHECK(test::wait_until([&] { return steps() > paused_at; }, 20));
  cluster.check();
}

TEST_CASE("an_lm_rollout_pauses_mid_generation_takes_new_weights_while_paused_and_resumes") {
  test::TempDir dir;
  at::manual_seed(1);
  models::CausalLm(models::LmConfig::preset("qwen3", "tiny", 259)).save(dir.path() / "model");
  const std::string config = "program: rlhf\nplacement: split\nmodel: {path: " + (dir.path() / "model").string() +
                             "}\ndata: {train: unused.jsonl}\nrollout: {max_new_tokens: 600, max_batch: 4}\n";
  controller::Cluster cluster(dir.path(), "lm", {{"actor", 1}, {"rollout", 1}}, options());
  auto& rollout = cluster.group("rollout");
  auto& actor = cluster.group("actor");
  actor.call(runtime::Configure{config}).get();
  rollout.call(runtime::Configure{config}).get();
  rollout.call(runtime::Start{}).get();
  core::Batch prompts;
  prompts.set("prompt_tokens", at::randint(0, 256, {4, 5}, at::kLong));
  prompts.set("prompt_len", at::full({4}, 5, at::kLong));
  auto generating = rollout.call(actors::lm::Generate{.n = 2, .temperature = 1.0, .seed = 7, .stop = {}, .width = 0}, prompts);
  auto tokens = [&] { return rollout.call(runtime::Poll{}).get().result().counter("rollout/tokens"); };
  test::wait_until([&] { return tokens() > 0; }, 20);
  // Pause returns once the generation is parked between two engine steps.
  CHECK(rollout.call(runtime::Pause{}).get().result().state == "paused");
  const double parked_at = tokens();
  CHECK(parked_at > 0);
  CHECK(parked_at < 8 * 600);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(tokens() == parked_at);
  CHECK_FALSE(generating.ready());
  // A weight sync runs on its own lane while the generation is parked: the tokens after it carry
  // the new version.
  actor.call(actors::lm::LoadActor{.dir = (dir.path() / "model").string(), .version = 5}).get();
  const auto published = actor.call(actors::lm::PublishWeights{}).get();
  actors::lm::SyncWeights sync{.version = 5, .on_update = "continue", .holders = {}, .objects = {}};
  for (const auto& h : published.data.held()) sync.holders.push_back(h.endpoint), sync.objects.push_back(static_cast<int64_t>(h.object));
  const auto synced = rollout.call(sync).get().result();
  CHECK(synced.version == 5);
  int64_t elements = 0;
  for (const auto& [name, t] : models::CausalLm::load(dir.path() / "model").named_parameters()) elements += t.numel();
  CHECK(synced.received_bytes == 4 * elements);  // the whole model, once
  rollout.call(runtime::Resume{}).get();
  auto done = generating.get();
  CHECK(done.data.rows() == 8);
  CHECK(done.result().version == 0);  // the version it started with
  CHECK(tokens() == 8 * 600);         // no stop tokens: every sample ran to the limit
  const core::Batch out = done.data.pull({"response_length", "token_version", "response_mask"});
  CHECK(out["response_length"].sum().item<int64_t>() == 8 * 600);
  const at::Tensor versions = out["token_version"].masked_select(out["response_mask"] > 0);
  CHECK(versions.eq(0).sum().item<int64_t>() == static_cast<int64_t>(parked_at));
  CHECK(versions.eq(5).sum().item<int64_t>() == 8 * 600 - static_cast<int64_t>(parked_at));
}
