// Wire format, sample streams and the name service.
#include <nlohmann/json.hpp>

#include <thread>
#include <zmq.hpp>

#include "core/error.hpp"
#include "core/name_service.hpp"
#include "core/names.hpp"
#include "core/stream.hpp"
#include "core/wire.hpp"
#include "support/cli.hpp"
#include "support/temp_dir.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using namespace std::chrono_literals;

namespace {

core::Batch sample_batch() {
  core::Batch b;
  b.set("obs", at::arange(12, at::kFloat).reshape({3, 4}));
  b.set("action", at::tensor(std::vector<int64_t>{0, 1, 1}));
  b.set("done", at::tensor(std::vector<uint8_t>{0, 0, 1}).to(at::kBool));
  b.set("logits", at::ones({3, 2}).to(at::kBFloat16));
  b.meta()["env"] = "CartPole-v1";
  return b;
}

struct Pair {
  zmq::context_t context{1};
  zmq::socket_t out{context, zmq::socket_type::pair}, in{context, zmq::socket_type::pair};
  explicit Pair(const std::string& name) {
    in.bind("inproc://" + name);
    out.connect("inproc://" + name);
    in.set(zmq::sockopt::rcvtimeo, 2000);
  }
};

// The words of a Samples envelope holding one 1-d tensor of `length` elements in frame 1 (the
// frame itself is the caller's to send).
kj::Array<capnp::word> one_tensor_samples(const char* name, proto::DType dtype, int64_t length) {
  capnp::MallocMessageBuilder b;
  auto env = b.initRoot<proto::Envelope>();
  env.setVersion(proto::SCHEMA_VERSION);
  auto t = env.initSamples().initBatch().initTensors(1)[0];
  t.setName(name);
  t.setDtype(dtype);
  t.initShape(1).set(0, length);
  t.setFrame(1);
  return capnp::messageToFlatArray(b);
}

std::string decode_kind(zmq::socket_t& in) {
  try {
    auto m = core::InMessage::receive(in);
    if (m && m->envelope().isSamples()) m->batch(m->envelope().getSamples().getBatch());
  } catch (const core::DecodeError& e) {
    return e.kind();
  }
  return "";
}

}  // namespace

TEST_CASE("wire_round_trips_a_batch_without_copying_tensor_bytes") {
  Pair p("roundtrip");
  core::Batch sent = sample_batch();
  core::OutMessage m("actor/3");
  auto s = m.envelope().initSamples();
  s.setPolicyVersion(17);
  m.put_batch(s.initBatch(), sent);
  REQUIRE(m.send(p.out));
  auto got = core::InMessage::receive(p.in);
  REQUIRE(got.has_value());
  CHECK(std::string(got->envelope().getSender().cStr()) == "actor/3");
  REQUIRE(got->envelope().isSamples());
  CHECK(got->envelope().getSamples().getPolicyVersion() == 17);
  core::Batch back = got->batch(got->envelope().getSamples().getBatch());
  CHECK(back.names() == sent.names());
  for (const auto& n : sent.names()) {
    CAPTURE(n);
    CHECK((back[n].scalar_type() == sent[n].scalar_type()));
    CHECK(at::equal(back[n], sent[n]));
    // inproc hands ZeroMQ frames over as they are: the same bytes, so neither side copied them.
    CHECK(back[n].data_ptr() == sent[n].data_ptr());
  }
  CHECK(back.meta().at("env") == "CartPole-v1");
}

TEST_CASE("wire_frames_keep_tensors_alive_after_the_sender_drops_them") {
  Pair p("lifetime");
  {
    core::Batch b;
    b.set("x", at::full({1000}, 7.0));
    core::OutMessage m("w");
    m.put_batch(m.envelope().initSamples().initBatch(), b);
    m.send(p.out);
  }  // the batch and the message are gone; the frame still holds the tensor
  auto got = core::InMessage::receive(p.in);
  REQUIRE(got.has_value());
  core::Batch back = got->batch(got->envelope().getSamples().getBatch());
  CHECK(back["x"].sum().item<double>() == 7000.0);
}

TEST_CASE("wire_rejects_malformed_messages_by_kind") {
  Pair p("malformed");
  p.out.send(zmq::buffer(std::string("not a capnp message")));  // 19 bytes: not whole words
  CHECK(decode_kind(p.in) == "bad-envelope");
  std::string words(24, '\xff');
  p.out.send(zmq::buffer(words));
  CHECK(decode_kind(p.in) == "bad-envelope");
  {
    core::OutMessage m("old");
    m.envelope().setVersion(99);
    m.envelope().initHeartbeat();
    m.send(p.out);
  }
  CHECK(decode_kind(p.in) == "bad-version");
  {
    // A tensor whose frame is shorter than its shape says.
    auto bytes = one_tensor_samples("x", proto::DType::F32, 100);
    p.out.send(zmq::buffer(bytes.asBytes().begin(), bytes.asBytes().size()), zmq::send_flags::sndmore);
    p.out.send(zmq::buffer(std::string(8, 'x')));
  }
  CHECK(decode_kind(p.in) == "bad-tensor");
}

// Found by UBSan in the sanitizer build: a rollout read prompt ids in place from a frame at an odd
// address. Frames are not aligned (a small one lives inside the message object).
TEST_CASE("wire_gives_aligned_tensors_for_frames_at_any_address") {
  const std::vector<int64_t> ids = {7, -3, 1LL << 40};
  auto words = one_tensor_samples("ids", proto::DType::I64, 3);
  std::vector<char> storage(64);
  for (size_t offset : {size_t{0}, size_t{1}, size_t{3}}) {
    CAPTURE(offset);
    std::memcpy(storage.data() + offset, ids.data(), 24);
    auto frame = std::make_shared<zmq::message_t>(storage.data() + offset, 24, [](void*, void*) {}, nullptr);  // in place
    core::InMessage m = core::InMessage::decode({std::make_shared<zmq::message_t>(words.asBytes().begin(), words.asBytes().size()), frame});
    const at::Tensor got = m.batch(m.envelope().getSamples().getBatch())["ids"];
    CHECK(reinterpret_cast<uintptr_t>(got.data_ptr()) % 8 == 0);
    CHECK(got[0].item<int64_t>() == 7);
    CHECK(got[2].item<int64_t>() == (1LL << 40));
  }
}

// Found by fuzz_wire: a pointer of the wrong kind deep in an envelope passed decode() and threw
// Cap'n Proto's exception later, in whichever thread read the field. decode() now follows every
// pointer, so such a message is one bad-envelope drop.
TEST_CASE("wire_rejects_a_pointer_of_the_wrong_kind_anywhere_in_the_envelope") {
  // The kind decode() reports for the envelope `fill` makes; "decoded" when it passes.
  auto decoded = [](const std::function<void(proto::Envelope::Builder)>& fill) {
    capnp::MallocMessageBuilder b;
    auto env = b.initRoot<proto::Envelope>();
    env.setVersion(proto::SCHEMA_VERSION);
    fill(env);
    auto words = capnp::messageToFlatArray(b);
    auto frame = std::make_shared<zmq::message_t>(words.asBytes().begin(), words.asBytes().size());
    try {
      (void)core::InMessage::decode({frame});
    } catch (const core::DecodeError& e) {
      return e.kind();
    }
    return std::string("decoded");
  };
  // A struct where a text belongs: the first pointer of `s`.
  auto spoil = [](auto s) { capnp::toAny(s).getPointerSection()[0].template initAs<proto::RowRange>(); };
  CHECK(decoded([](auto e) { e.initHeartbeat().setState("running"); }) == "decoded");
  CHECK(decoded([](auto e) { e.initSamples().initBatch().initTensors(1)[0].setName("x"); }) == "decoded");
  CHECK(decoded([&](auto e) { e.initHeartbeat(), spoil(e); }) == "bad-envelope");                  // the sender
  CHECK(decoded([&](auto e) { spoil(e.initHeartbeat()); }) == "bad-envelope");                      // the heartbeat's state
  CHECK(decoded([&](auto e) { spoil(e.initSamples().initBatch().initTensors(1)[0]); }) == "bad-envelope");  // a tensor's name
  CHECK(decoded([&](auto e) { spoil(e.initRpcRequest().initInput().initSources(1)[0].initSegments(1)[0]); }) == "bad-envelope");
}

TEST_CASE("sample_stream_drops_and_counts_bad_messages_and_keeps_serving") {
  zmq::context_t context(1);
  auto receiver = core::zmq_sample_receiver(context, "tcp://127.0.0.1:*");
  CHECK(receiver->endpoint().rfind("tcp://127.0.0.1:", 0) == 0);
  zmq::socket_t rogue(context, zmq::socket_type::push);
  rogue.connect(receiver->endpoint());
  rogue.send(zmq::buffer(std::string("garbage!")));  // 8 bytes, not an envelope
  {
    core::OutMessage m("rogue");
    m.envelope().initHeartbeat();  // a valid message of the wrong type
    m.send(rogue);
  }
  auto sender = core::zmq_sample_sender(context, receiver->endpoint(), "actor/0");
  sender->send(sample_batch(), 5);
  auto got = receiver->receive(5s);
  REQUIRE(got.has_value());
  CHECK(got->policy_version == 5);
  CHECK(got->sender == "actor/0");
  CHECK(at::equal(got->batch["obs"], sample_batch()["obs"]));
  // PULL interleaves the two senders, so the bad ones may come after the good one.
  CHECK_FALSE(receiver->receive(300ms).has_value());
  auto dropped = receiver->dropped();
  CHECK(dropped["bad-envelope"] == 1);
  CHECK(dropped["unexpected-type"] == 1);
}

TEST_CASE("sample_streams_deliver_in_order_over_tcp_and_in_process") {
  zmq::context_t context(1);
  auto receiver = core::zmq_sample_receiver(context, "tcp://127.0.0.1:*");
  std::thread producer([&] {
    auto sender = core::zmq_sample_sender(context, receiver->endpoint(), "actor/1");
    for (int v = 0; v < 20; ++v) {
      core::Batch b;
      b.set("v", at::full({2}, v, at::kLong));
      sender->send(b, v);
    }
  });
  for (int v = 0; v < 20; ++v) {
    auto got = receiver->receive(5s);
    REQUIRE(got.has_value());
    CHECK(got->policy_version == v);
    CHECK(got->batch["v"][1].item<int64_t>() == v);
  }
  producer.join();

  auto [send, recv] = core::inprocess_sample_stream(2, "local");
  send->send(sample_batch(), 1);
  send->send(sample_batch(), 2);
  CHECK(recv->receive(1s)->policy_version == 1);
  CHECK(recv->receive(1s)->policy_version == 2);
  CHECK_FALSE(recv->receive(10ms).has_value());
}

TEST_CASE("parameter_stream_delivers_the_newest_version") {
  zmq::context_t context(1);
  auto params = [](int v) {
    core::Batch p;
    p.set("w", at::full({2, 2}, static_cast<float>(v)));
    return p;
  };
  // A SUB socket misses what is published before it has joined: version 0 is published until one
  // arrives, which proves the subscription is in place.
  auto join = [&](core::ParameterPublisher& pub, core::ParameterSubscriber& sub) {
    for (int tries = 0; tries < 200; ++tries) {
      pub.publish(0, params(0));
      if (auto got = sub.latest(25ms)) return got->version == 0;
    }
    return false;
  };
  // In process, a message is in the subscriber's queue when publish returns: latest() takes all
  // three and hands back only the newest.
  auto pub_in = core::zmq_parameter_publisher(context, "inproc://parameters", "trainer/0");
  auto sub_in = core::zmq_parameter_subscriber(context, pub_in->endpoint());
  REQUIRE(join(*pub_in, *sub_in));
  for (int v = 1; v <= 3; ++v) pub_in->publish(v, params(v));
  auto got = sub_in->latest(1s);
  REQUIRE(got.has_value());
  CHECK(got->version == 3);
  CHECK(got->tensors["w"][1][1].item<float>() == 3.0f);
  CHECK_FALSE(sub_in->latest(50ms).has_value());

  // Over TCP the versions arrive in order, never an older one after a newer one, up to the last.
  auto pub = core::zmq_parameter_publisher(context, "tcp://127.0.0.1:*", "trainer/0");
  auto sub = core::zmq_parameter_subscriber(context, pub->endpoint());
  REQUIRE(join(*pub, *sub));
  for (int v = 1; v <= 3; ++v) pub->publish(v, params(v));
  int64_t last = 0;
  for (auto next = sub->latest(5s); next; next = last < 3 ? sub->latest(5s) : std::nullopt) {
    CHECK(next->version > last);
    CHECK(next->tensors["w"][1][1].item<float>() == static_cast<float>(next->version));
    last = next->version;
  }
  CHECK(last == 3);
  CHECK_FALSE(sub->latest(50ms).has_value());
}

TEST_CASE("inference_server_batches_requests_and_routes_replies") {
  zmq::context_t context(1);
  auto server = core::zmq_inference_server(context, "tcp://127.0.0.1:*", "policy/0");
  std::vector<std::thread> clients;
  std::vector<core::Batch> replies(3);
  std::vector<int64_t> versions(3);
  for (int c = 0; c < 3; ++c) {
    clients.emplace_back([&, c] {
      auto client = core::zmq_inference_client(context, server->endpoint(), "actor/" + std::to_string(c));
      core::Batch obs;
      obs.set("obs", at::full({c + 1, 2}, static_cast<float>(c)));
      auto [out, version] = client->infer(obs, 10s);
      replies[c] = out;
      versions[c] = version;
    });
  }
  int64_t rows = 0;
  size_t parts = 0;
  while (rows < 6) {  // the three requests, gathered into as few batches as arrive together
    auto batch = server->gather(6, 500ms, 5s);
    REQUIRE(batch.has_value());
    rows += batch->inputs.size();
    parts += batch->parts.size();
    core::Batch out;
    out.set("action", batch->inputs["obs"].select(1, 0) * 10);
    server->reply(*batch, out, 7);
  }
  for (auto& t : clients) t.join();
  CHECK(parts == 3);
  for (int c = 0; c < 3; ++c) {
    CAPTURE(c);
    CHECK(replies[c].size() == c + 1);
    CHECK(replies[c]["action"][0].item<float>() == 10.0f * c);
    CHECK(versions[c] == 7);
  }
  // One small request waits no longer than max_delay for company.
  std::thread lone([&] {
    auto client = core::zmq_inference_client(context, server->endpoint(), "actor/9");
    core::Batch obs;
    obs.set("obs", at::zeros({1, 2}));
    client->infer(obs, 10s);
  });
  auto t0 = std::chrono::steady_clock::now();
  auto one = server->gather(100, 50ms, 5s);
  REQUIRE(one.has_value());
  CHECK(one->inputs.size() == 1);
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  core::Batch out;
  out.set("action", at::zeros({1}));
  server->reply(*one, out, 1);
  lone.join();
}

TEST_CASE("inference_client_times_out_naming_the_server") {
  zmq::context_t context(1);
  auto client = core::zmq_inference_client(context, "tcp://127.0.0.1:9", "actor/0");
  core::Batch obs;
  obs.set("obs", at::zeros({1, 2}));
  try {
    client->infer(obs, 100ms);
    FAIL("expected a timeout");
  } catch (const TimeoutError& e) {
    CHECK(std::string(e.what()).find("no inference reply from 'tcp://127.0.0.1:9' within 100 ms") != std::string::npos);
  }
}

TEST_CASE("name_service_ttl_expiry_keepalive_list_and_wait_timeout") {
  test::TempDir dir;
  for (int backend = 0; backend < 2; ++backend) {
    CAPTURE(backend);
    auto ns = backend == 0 ? core::memory_name_service() : core::directory_name_service(dir.path() / "names");
    const std::string key = core::names::worker_rpc("exp", "t1", "trainer", 0);
    CHECK(key == "flotilla/exp/t1/workers/trainer/0/rpc");
    ns->put(key, "tcp://127.0.0.1:5555");
    CHECK(ns->get(key).value() == "tcp://127.0.0.1:5555");
    const std::string a0 = core::names::worker_rpc("exp", "t1", "actor", 0), a1 = core::names::worker_rpc("exp", "t1", "actor", 1);
    ns->put(a0, "a0", 300ms);
    ns->put(a1, "a1", 300ms);
    CHECK(ns->list("flotilla/exp/t1/workers/actor/").size() == 2);
    // Actor 1 renews its lease every few milliseconds, actor 0 never: wait for actor 0's to lapse
    // (no guess at how long a loaded machine takes), then actor 1's must still stand.
    bool renewed = true;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (ns->get(a0).has_value() && std::chrono::steady_clock::now() < deadline) {
      renewed &= ns->keepalive(a1);
      std::this_thread::sleep_for(5ms);
    }
    renewed &= ns->keepalive(a1);
    CHECK(renewed);
    CHECK_FALSE(ns->get(a0).has_value());
    CHECK(ns->get(a1).value() == "a1");
    CHECK_FALSE(ns->keepalive(core::names::worker_rpc("exp", "t1", "actor", 0)));
    ns->remove(key);
    CHECK_FALSE(ns->get(key).has_value());
    try {
      ns->wait("flotilla/exp/t1/workers/policy/0/rpc", 60ms, "worker policy/0");
      FAIL("expected a timeout");
    } catch (const TimeoutError& e) {
      CHECK(std::string(e.what()).find("'flotilla/exp/t1/workers/policy/0/rpc', which worker policy/0 should have published") !=
            std::string::npos);
    }
    std::thread later([&] {
      std::this_thread::sleep_for(30ms);
      ns->put("flotilla/exp/t1/late", "here");
    });
    CHECK(ns->wait("flotilla/exp/t1/late", 2000ms, "a test thread") == "here");
    later.join();
    CHECK_THROWS_AS(ns->put("../escape", "x"), Error);
  }
}

TEST_CASE("cli_bench_stream_reports_plain_curve_and_bare_throughputs_and_their_ratios") {
  test::TempDir dir;
  auto r = test::run_cli(FLOTILLA_TEST_CLI, {"bench", "stream", "--bytes", "4096", "--count", "300", "--json"}, dir.path());
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["bytes"] == 4096);
  CHECK(j["flotilla_mb_per_s"].get<double>() > 0);
  CHECK(j["zmq_messages_per_s"].get<double>() > 0);
  CHECK(j["ratio"].get<double>() > 0);
  CHECK(j["curve_mb_per_s"].get<double>() > 0);
  CHECK(j["cipher_mb_per_s"].get<double>() > 0);
  CHECK(j["curve_cost"].get<double>() == doctest::Approx(j["flotilla_mb_per_s"].get<double>() / j["curve_mb_per_s"].get<double>()));
}
