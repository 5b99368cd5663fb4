// Transport security: a run's key file, CURVE sockets that admit only the run's client key, and a
// running job that refuses (and counts) peers with another key or none.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <zmq.hpp>

#include "core/curve.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/metrics.hpp"
#include "core/name_service.hpp"
#include "runtime/group.hpp"
#include "support/cli.hpp"
#include "support/error_of.hpp"
#include "support/processes.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
namespace fs = std::filesystem;
namespace curve = core::curve;
using namespace std::chrono_literals;

namespace {
const std::string kCli = FLOTILLA_TEST_CLI;

// This process's sockets use `keys` while it lives.
struct UseKeys {
  explicit UseKeys(std::optional<curve::RunKeys> keys, const fs::path& file = {}) { curve::use(std::move(keys), file); }
  ~UseKeys() { curve::use(std::nullopt); }
};

fs::perms mode_of(const fs::path& p) { return fs::status(p).permissions(); }
}  // namespace

TEST_CASE("curve_key_file_is_the_owners_alone_and_checked_when_read") {
  test::TempDir dir;
  const curve::RunKeys keys = curve::generate();
  CHECK(keys.server.public_key.size() == 40);
  CHECK(keys.server.public_key != keys.client.public_key);
  const fs::path file = dir.path() / "private" / "curve.keys";
  curve::write(file, keys);
  CHECK(mode_of(file) == (fs::perms::owner_read | fs::perms::owner_write));
  CHECK(mode_of(file.parent_path()) == fs::perms::owner_all);
  const curve::RunKeys back = curve::read(file);
  CHECK(back.server.secret_key == keys.server.secret_key);
  CHECK(back.client.public_key == keys.client.public_key);

  fs::permissions(file, fs::perms::group_read, fs::perm_options::add);
  CHECK(test::error_of([&] { curve::read(file); }).find("open to other users (mode 640); make it the owner's alone: chmod 600") !=
        std::string::npos);
  fs::permissions(file, fs::perms::group_read, fs::perm_options::remove);

  CHECK(test::error_of([&] { curve::read(dir.path() / "nowhere.keys"); }).find("flotilla keys gen") != std::string::npos);
  // A public key that is not its secret key's.
  std::string text = core::read_file(file);
  text.replace(text.find(keys.client.public_key), 40, keys.server.public_key);
  const fs::path swapped = dir.path() / "private" / "swapped.keys";
  curve::write(swapped, keys);
  {
    std::ofstream(swapped) << text;
  }
  CHECK(test::error_of([&] { curve::read(swapped); }).find("the client public key does not belong to its secret key") != std::string::npos);
  {
    std::ofstream(swapped) << "server-public tooshort\n";
  }
  CHECK(test::error_of([&] { curve::read(swapped); }).find("server-public: expected a 40-character Z85 CURVE key") != std::string::npos);
}

TEST_CASE("curve_server_admits_the_runs_client_key_and_refuses_and_counts_every_other_peer") {
  const curve::RunKeys run = curve::generate(), other = curve::generate();
  UseKeys use(run);
  zmq::context_t context(1), outside(1);
  zmq::socket_t server(context, zmq::socket_type::pull);
  server.set(zmq::sockopt::linger, 0);
  server.set(zmq::sockopt::rcvtimeo, 1000);
  curve::bind(context, server, "tcp://127.0.0.1:*");
  const std::string at = server.get(zmq::sockopt::last_endpoint);
  // One connection (no retries) from `outside`; whether its message arrived.
  auto arrives = [&](const std::function<void(zmq::socket_t&)>& connect) {
    zmq::socket_t client(outside, zmq::socket_type::push);
    client.set(zmq::sockopt::linger, 0);
    client.set(zmq::sockopt::reconnect_ivl, -1);
    connect(client);
    client.send(zmq::str_buffer("hello"), zmq::send_flags::dontwait);
    zmq::message_t m;
    return server.recv(m).has_value() && m.to_string() == "hello";
  };
  auto with_keys = [&](const std::string& server_public, const curve::KeyPair& client) {
    return [&, server_public, client](zmq::socket_t& s) {
      s.set(zmq::sockopt::curve_serverkey, server_public);
      s.set(zmq::sockopt::curve_publickey, client.public_key);
      s.set(zmq::sockopt::curve_secretkey, client.secret_key);
      s.connect(at);
    };
  };
  const int64_t before = curve::refused();
  CHECK(arrives([&](zmq::socket_t& s) { curve::connect(s, at); }));  // the run's own client
  CHECK(curve::refused() == before);
  // Knows the server's public key, but its own key is another run's: ZAP says no.
  CHECK_FALSE(arrives(with_keys(run.server.public_key, other.client)));
  CHECK(test::wait_until([&] { return curve::refused() == before + 1; }, 5));
  // Speaks no CURVE at all.
  CHECK_FALSE(arrives([&](zmq::socket_t& s) { s.connect(at); }));
  CHECK(test::wait_until([&] { return curve::refused() == before + 2; }, 5));
  // Holds the run's client key but expects another server: its hello does not open.
  CHECK_FALSE(arrives(with_keys(other.server.public_key, run.client)));
  CHECK(test::wait_until([&] { return curve::refused() == before + 3; }, 5));
  CHECK(arrives([&](zmq::socket_t& s) { curve::connect(s, at); }));  // still serving its own
  CHECK(curve::refused() == before + 3);
}

TEST_CASE("ipc_and_plain_runs_bind_without_curve") {
  test::TempDir dir;
  UseKeys use(curve::generate());
  zmq::context_t context(1);
  zmq::socket_t server(context, zmq::socket_type::pull), client(context, zmq::socket_type::push);
  server.set(zmq::sockopt::rcvtimeo, 2000);
  const std::string at = "ipc://" + (dir.path() / "s").string();
  curve::bind(context, server, at);
  CHECK(server.get(zmq::sockopt::mechanism) == ZMQ_NULL);
  client.connect(at);  // a plain peer: the run directory's permissions guard ipc sockets
  client.send(zmq::str_buffer("x"));
  zmq::message_t m;
  CHECK(server.recv(m).has_value());
  client.close();
  server.close();
  CHECK(test::error_of([&] {
          zmq::socket_t s(context, zmq::socket_type::pull);
          curve::bind(context, s, "tcp://256.0.0.1:1");
        }).find("cannot bind 'tcp://256.0.0.1:1'") != std::string::npos);
}

TEST_CASE("a_running_job_refuses_foreign_and_plaintext_peers_answers_its_own_key_and_counts_refusals") {
  test::TempDir dir;
  const fs::path run = dir.path() / "r";
  test::CliProcess job(kCli,
                       {"run", "-q", std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_ppo_distributed.yaml", "train.total_steps=120000",
                        "stop.mean_return=100000", "run.dir=" + run.string()},
                       dir.path());
  std::string rpc, samples, parameters;
  REQUIRE(test::wait_until(
      [&] {
        if (!fs::exists(run / "names")) return false;
        auto names = core::directory_name_service(run / "names");
        for (const auto& k : names->list("flotilla/")) {
          auto at = [&](const std::string& suffix) { return k.size() > suffix.size() && k.ends_with(suffix); };
          if (at("/workers/trainer/0/rpc")) rpc = names->get(k).value_or("");
          if (at("/streams/samples/trainer/0")) samples = names->get(k).value_or("");
          if (at("/streams/parameters/trainer/0")) parameters = names->get(k).value_or("");
        }
        return !rpc.empty() && !samples.empty() && !parameters.empty();
      },
      60));
  CHECK(mode_of(run / "curve.keys") == (fs::perms::owner_read | fs::perms::owner_write));
  zmq::context_t context(1);
  // A peer that knows the run's server key but holds another client key, one of another run
  // altogether, and one without CURVE: a call to stop the trainer gets no answer and does nothing.
  curve::RunKeys thief = curve::generate();
  thief.server.public_key = curve::read(run / "curve.keys").server.public_key;
  for (const std::optional<curve::RunKeys>& keys : {std::optional(thief), std::optional(curve::generate()), std::optional<curve::RunKeys>()}) {
    UseKeys use(keys);
    runtime::WorkerGroup trainer(context, "trainer", {rpc}, 1500ms);
    CHECK_THROWS_AS(trainer.call(runtime::Stop{}).get(), TimeoutError);
  }
  {
    // Samples pushed in plaintext, and a subscriber to the parameters with another key.
    zmq::socket_t push(context, zmq::socket_type::push), sub(context, zmq::socket_type::sub);
    push.set(zmq::sockopt::linger, 0);
    push.connect(samples);
    push.send(zmq::str_buffer("not a sample batch"), zmq::send_flags::dontwait);
    UseKeys use(curve::generate());
    sub.set(zmq::sockopt::subscribe, "");
    sub.set(zmq::sockopt::rcvtimeo, 2000);
    curve::connect(sub, parameters);
    zmq::message_t m;
    CHECK_FALSE(sub.recv(m).has_value());  // the trainer publishes every update; none reach it
  }
  {
    // The run's own keys: answered, and nothing from the others reached the trainer.
    UseKeys use(curve::read(run / "curve.keys"));
    runtime::WorkerGroup trainer(context, "trainer", {rpc}, 20s);
    const runtime::Status status = trainer.call(runtime::Poll{}).get().result();
    CHECK(status.counter("transport/dropped") == 0);
    CHECK(status.state == "running");
  }
  const test::CliResult r = job.wait(240);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto summary = nlohmann::json::parse(core::read_file(run / "summary.json"));
  CHECK(summary["exit_reason"] == "completed");
  CHECK(summary["global_step"].get<double>() >= 120000);
  CHECK(summary["security/refused_connections"].get<double>() >= 5);  // each peer above, once or more
  CHECK_MESSAGE(test::contains(r.err, "refused a connection from 127.0.0.1: its key is not this run's"), r.err);
  CHECK(test::contains(r.err, "refused a connection on " + rpc + ": the peer's CURVE hello does not open with this run's server key"));
  // A plaintext peer: this side sees the mismatch, or the peer hanging up on seeing it first.
  for (const std::string& at : {rpc, samples}) {
    const bool logged = test::contains(r.err, "refused a connection on " + at + ": the peer does not use CURVE") ||
                        test::contains(r.err, "refused a connection on " + at + ": the peer left during the CURVE handshake");
    CHECK_MESSAGE(logged, at);
  }
  for (const auto& row : core::read_metrics_jsonl(run / "metrics.jsonl"))
    for (const auto& [k, v] : row.values) CHECK_MESSAGE(!k.starts_with("transport/dropped"), k);
  CHECK(test::workers_of(run.string()).empty());
}

TEST_CASE("keys_gen_writes_a_private_key_file_a_run_can_use") {
  test::TempDir dir;
  const fs::path keys = dir.path() / "keys";
  auto g = test::run_cli(kCli, {"keys", "gen", keys.string()}, dir.path());
  REQUIRE_MESSAGE(g.code == 0, g.err);
  CHECK(test::contains(g.out, "use it with: security.keys=" + keys.string()));
  CHECK(mode_of(keys / "curve.keys") == (fs::perms::owner_read | fs::perms::owner_write));
  const std::string before = core::read_file(keys / "curve.keys");
  auto again = test::run_cli(kCli, {"keys", "gen", keys.string()}, dir.path());
  CHECK(again.code != 0);
  CHECK(test::contains(again.err, "exists; pass --force"));
  CHECK(core::read_file(keys / "curve.keys") == before);

  auto r = test::run_cli(kCli,
                         {"run", "-q", std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_ppo_distributed.yaml", "train.total_steps=3000",
                          "stop.mean_return=100000", "run.dir=r", "security.keys=" + keys.string()},
                         dir.path(), dir.path());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK_FALSE(fs::exists(dir.path() / "r" / "curve.keys"));
  CHECK(test::contains(core::read_file(dir.path() / "r" / "log.txt"), "CURVE keys in " + (keys / "curve.keys").string()));

  fs::permissions(keys / "curve.keys", fs::perms::others_read, fs::perm_options::add);
  auto open = test::run_cli(kCli,
                            {"run", "-q", std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_ppo_distributed.yaml", "train.total_steps=3000",
                             "run.dir=r2", "security.keys=" + keys.string()},
                            dir.path(), dir.path());
  CHECK(open.code != 0);
  CHECK(test::contains(open.err, "chmod 600"));
  CHECK(test::workers_of((dir.path() / "r2").string()).empty());

  auto both = test::run_cli(kCli,
                            {"validate", std::string(FLOTILLA_SOURCE_DIR) + "/configs/cartpole_ppo_distributed.yaml", "security.curve=false",
                             "security.keys=" + keys.string()},
                            dir.path());
  CHECK(both.code != 0);
  CHECK(test::contains(both.err, "keys are given but curve is false"));
}
