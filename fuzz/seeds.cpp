// Writes the seed corpora of the wire and safetensors targets into DIR/wire and DIR/safetensors:
// one well-formed message of each envelope type (with tensor frames where it has a batch), in
// the wire target's input format, and a few safetensors files. Run once; the files are kept in
// fuzz/corpus.
#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <zmq.hpp>

#include "core/safetensors.hpp"
#include "core/wire.hpp"

namespace fs = std::filesystem;
using flotilla::core::Batch;
using flotilla::core::OutMessage;

namespace {

Batch rows() {
  Batch b;
  b.set("obs", at::arange(12, at::kFloat).reshape({3, 4}));
  b.set("action", at::tensor({1, 0, 1}, at::kLong));
  b.meta()["episode"] = "7";
  return b;
}

// Sends `m` through an in-process pair and writes its frames as one fuzz input.
void write(zmq::context_t& context, OutMessage& m, const fs::path& file) {
  zmq::socket_t in(context, zmq::socket_type::pair), out(context, zmq::socket_type::pair);
  const std::string at = "inproc://seed-" + file.filename().string();
  in.bind(at);
  out.connect(at);
  m.send(out);
  std::vector<zmq::message_t> frames;
  do {
    frames.emplace_back();
    (void)in.recv(frames.back());
  } while (frames.back().more());
  std::string bytes(1, static_cast<char>(frames.size() - 1));
  for (size_t i = 1; i < frames.size(); ++i) bytes += {static_cast<char>(frames[i].size() & 0xff), static_cast<char>(frames[i].size() >> 8)};
  for (const auto& f : frames) bytes.append(static_cast<const char*>(f.data()), f.size());
  std::ofstream(file, std::ios::binary) << bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_seeds DIR\n";
    return 2;
  }
  const fs::path wire = fs::path(argv[1]) / "wire", st = fs::path(argv[1]) / "safetensors";
  fs::create_directories(wire);
  fs::create_directories(st);
  zmq::context_t context(1);
  const std::vector<std::pair<std::string, std::function<void(OutMessage&)>>> kinds = {
      {"heartbeat", [](OutMessage& m) {
         auto h = m.envelope().initHeartbeat();
         h.setRank(1), h.setState("running"), h.setSentAt(1.5e9), h.setEndpoint("tcp://127.0.0.1:5555"), h.setRefused(2);
       }},
      {"metrics", [](OutMessage& m) {
         auto x = m.envelope().initMetrics();
         x.setStep(10);
         flotilla::core::write_scalars(x.initValues(2), {{"loss", 0.5}, {"perf/sps", 1000}});
       }},
      {"samples", [](OutMessage& m) {
         auto s = m.envelope().initSamples();
         s.setPolicyVersion(3);
         flotilla::core::write_scalars(s.initStats(1), {{"charts/episodic_return", 20}});
         m.put_batch(s.initBatch(), rows());
       }},
      {"parameters", [](OutMessage& m) {
         auto p = m.envelope().initParameters();
         p.setVersion(4);
         m.put_batch(p.initBatch(), rows());
       }},
      {"inference_request", [](OutMessage& m) {
         auto r = m.envelope().initInferenceRequest();
         r.setId(5), r.setMinVersion(1), r.setSeed(9);
         m.put_batch(r.initBatch(), rows());
       }},
      {"inference_reply", [](OutMessage& m) {
         auto r = m.envelope().initInferenceReply();
         r.setId(5), r.setPolicyVersion(2);
         m.put_batch(r.initBatch(), rows());
       }},
      {"rpc_request", [](OutMessage& m) {
         auto r = m.envelope().initRpcRequest();
         r.setId(6), r.setMethod("echo.scale"), r.setArgsType(0x1234);
         auto sources = r.initInput().initSources(2);
         sources[0].initFields(1).set(0, "obs");
         m.put_batch(sources[0].initRows(), rows());
         auto seg = sources[1].initSegments(1);
         seg[0].setHolder("tcp://127.0.0.1:5556"), seg[0].setObject(77);
         auto range = seg[0].initRows().initRange();
         range.setBegin(0), range.setEnd(3);
       }},
      {"rpc_reply", [](OutMessage& m) {
         auto r = m.envelope().initRpcReply();
         r.setId(6), r.setOk(true), r.setResultType(0x1234);
         m.put_batch(r.initOutput().initBatch(), rows());
       }},
      {"rpc_reply_kept", [](OutMessage& m) {
         auto r = m.envelope().initRpcReply();
         r.setId(6), r.setOk(false), r.setError("worker echo/0: failed");
         auto k = r.initOutput().initKept();
         k.setObject(8), k.setRows(3), k.initFields(1).set(0, "obs");
       }},
      {"data_fetch", [](OutMessage& m) {
         auto f = m.envelope().initDataFetch();
         f.setId(9), f.setObject(77);
         f.initFields(1).set(0, "obs");
         auto idx = f.initRows().initIndices(2);
         idx.set(0, 2), idx.set(1, 0);
         auto ranges = f.initRanges(1);
         ranges[0].setBegin(1), ranges[0].setEnd(2);
       }},
      {"data_reply", [](OutMessage& m) {
         auto r = m.envelope().initDataReply();
         r.setId(9), r.setOk(true);
         m.put_batch(r.initBatch(), rows());
       }},
      {"data_release", [](OutMessage& m) { m.envelope().initDataRelease().initObjects(2).set(1, 78); }},
  };
  for (const auto& [name, fill] : kinds) {
    OutMessage m("trainer/0");
    fill(m);
    write(context, m, wire / name);
  }
  using flotilla::core::safetensors_bytes;
  auto save = [&](const std::string& name, const std::string& bytes) { std::ofstream(st / name, std::ios::binary) << bytes; };
  save("float_and_long", safetensors_bytes({{"w", at::randn({2, 3})}, {"step", at::tensor({5}, at::kLong)}}, {{"format", "pt"}}));
  save("bf16_and_empty", safetensors_bytes({{"b", at::ones({4}, at::kBFloat16)}, {"e", at::zeros({0, 2})}}));
  save("bool_u8_scalar", safetensors_bytes({{"mask", at::tensor({1, 0}, at::kByte).to(at::kBool)}, {"u", at::arange(3, at::kByte)}, {"s", at::scalar_tensor(2.5)}}));
  std::cout << "wrote " << kinds.size() << " messages to " << wire.string() << " and 3 files to " << st.string() << "\n";
  return 0;
}
