#include "actors/rl/common.hpp"

#include <zmq.hpp>

#include <spdlog/spdlog.h>

#include "core/curve.hpp"
#include "core/error.hpp"
#include "core/name_service.hpp"
#include "core/names.hpp"
#include "core/safetensors.hpp"
#include "core/wire.hpp"
#include "runtime/layout.hpp"

namespace flotilla::actors::rl {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

MetricsPusher::MetricsPusher(zmq::context_t& context, const runtime::WorkerInfo& info)
    : socket_(std::make_unique<zmq::socket_t>(context, zmq::socket_type::push)), name_(info.name()) {
  socket_->set(zmq::sockopt::linger, 1000);
  socket_->set(zmq::sockopt::sndhwm, 1000);
  core::curve::connect(*socket_, info.metrics_to);
}

MetricsPusher::~MetricsPusher() = default;

void MetricsPusher::push(int64_t step, const core::Scalars& values) {
  core::OutMessage m(name_);
  auto metrics = m.envelope().initMetrics();
  metrics.setStep(step);
  core::write_scalars(metrics.initValues(static_cast<unsigned>(values.size())), values);
  m.send(*socket_);
}

std::string bind_endpoint(const runtime::WorkerInfo& info, const DistributedRlConfig& c, const std::string& stream) {
  // A replacement of a failed worker takes over its predecessor's address, so the peers'
  // connections come back on their own.
  const auto before = core::directory_name_service(info.name_dir)->get(core::names::stream_endpoint(info.experiment, info.trial, stream + "/" + info.name()));
  if (before) return *before;
  if (c.transport != "ipc") return "tcp://" + info.host + ":*";
  const fs::path dir = fs::path(info.name_dir).parent_path() / "sockets";
  fs::create_directories(dir);
  const std::string path = (dir / (info.role + "-" + std::to_string(info.rank) + "-" + stream)).string();
  if (path.size() > 100)
    throw ConfigError("distributed.transport ipc: the socket path '" + path + "' is too long for a Unix socket; use a shorter run directory or tcp");
  return "ipc://" + path;
}

void publish_stream(const runtime::WorkerInfo& info, const std::string& stream, const std::string& endpoint) {
  core::directory_name_service(info.name_dir)->put(core::names::stream_endpoint(info.experiment, info.trial, stream), endpoint);
}

std::string await_stream(const runtime::WorkerInfo& info, const std::string& stream, const std::string& from) {
  return core::directory_name_service(info.name_dir)->wait(core::names::stream_endpoint(info.experiment, info.trial, stream), 60s, from);
}

uint64_t action_seed(uint64_t run_seed, int actor, int slot, int64_t step) {
  // SplitMix64 over the four numbers: distinct, well-spread seeds for every request.
  uint64_t x = run_seed * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(actor) << 40) ^ (static_cast<uint64_t>(slot) << 32) ^
               static_cast<uint64_t>(step);
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return (x ^ (x >> 31)) | 1;  // never 0, which means "no seed"
}

namespace {
fs::path shard_path(const fs::path& dir, const runtime::WorkerInfo& info) {
  return dir / (info.role + "-" + std::to_string(info.rank) + ".safetensors");
}
}  // namespace

void save_shard(const fs::path& dir, const runtime::WorkerInfo& info, const NamedTensors& tensors,
                const std::map<std::string, int64_t>& counters) {
  std::map<std::string, std::string> meta = {{"format", "flotilla-shard"}};
  for (const auto& [k, v] : counters) meta[k] = std::to_string(v);
  fs::create_directories(dir);
  core::save_safetensors(shard_path(dir, info), tensors, meta);
}

Shard load_shard(const fs::path& dir, const runtime::WorkerInfo& info) {
  const fs::path path = shard_path(dir, info);
  if (!fs::exists(path)) throw ConfigError(path.string() + ": the checkpoint has no shard for worker " + info.name());
  core::TensorFile f = core::load_safetensors(path);
  Shard s{std::move(f.tensors), {}};
  for (const auto& [k, v] : f.metadata)
    if (k != "format") s.counters[k] = std::stoll(v);
  return s;
}

NamedTensors Shard::with_prefix(const std::string& prefix) const {
  NamedTensors out;
  for (const auto& [name, t] : tensors)
    if (name.rfind(prefix, 0) == 0) out.emplace_back(name.substr(prefix.size()), t);
  return out;
}

int parameter_source(int64_t elements, int trainers, int subscribers, int me) {
  const std::vector<runtime::ParamInfo> flat = {{"flat", {elements}, -1}};
  const runtime::ReshardPlan plan = runtime::ReshardPlan::make(runtime::Layout(flat, {trainers, 1, 1}),
                                                               runtime::Layout(flat, {subscribers, 1, 1}), {}, elements);
  for (const runtime::Copy& c : plan.sent())
    if (c.dst == me) return c.src;
  throw Error("the parameter plan has no source for subscriber " + std::to_string(me) + " of " + std::to_string(subscribers));
}

std::unique_ptr<core::ParameterSubscriber> subscribe_parameters(zmq::context_t& context, const runtime::WorkerInfo& info,
                                                                const DistributedRlConfig& c, int64_t elements, int subscribers) {
  const std::string trainer = "trainer/" + std::to_string(parameter_source(elements, c.count("trainer"), subscribers, info.rank));
  spdlog::debug("{} takes parameters from {}", info.name(), trainer);
  return core::zmq_parameter_subscriber(context, await_stream(info, "parameters/" + trainer, trainer));
}

}  // namespace flotilla::actors::rl
