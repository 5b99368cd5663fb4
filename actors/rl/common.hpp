#pragma once
// What the RL roles (env actor, policy worker, trainer, buffer) share: their methods, pushing
// metrics to the controller, where their streams listen, checkpoint shards, and the seeds of a
// deterministic run's actions.
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "actors/rl/config.hpp"
#include "core/metrics.hpp"
#include "core/stream.hpp"
#include "runtime/method.hpp"
#include "runtime/worker.hpp"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace flotilla::actors::rl {

using runtime::Collect;
using runtime::Dispatch;
using runtime::MethodSpec;

// The trainers publish their parameters once, so policy workers and inline actors can start.
inline constexpr MethodSpec kPublish{"trainer.publish", Dispatch::OneToAll, Collect::AllRanks};
using Publish = runtime::NoArgs<kPublish, runtime::Version>;

// A policy worker was replaced: an env actor that asks it sends its unanswered requests again
// (the replacement has the same address; what the failed one held is gone).
inline constexpr MethodSpec kResend{"inference.resend", Dispatch::OneToAll, Collect::AllRanks, "control"};
using Resend = runtime::NoArgs<kResend>;

// A checkpoint shard: a trainer's state at version `step` (it is paused there), an env actor's at
// the fragment boundary `step` (deterministic runs; else its newest), into `dir`; and loading it
// back before start.
inline constexpr MethodSpec kSaveShard{"shard.save", Dispatch::OneToAll, Collect::AllRanks, "control"};
inline constexpr MethodSpec kLoadShard{"shard.load", Dispatch::OneToAll, Collect::AllRanks};
using SaveShard = runtime::DirectoryMethod<kSaveShard>;
using LoadShard = runtime::DirectoryMethod<kLoadShard>;

// Sends metrics rows to the controller (PUSH; never blocks the worker).
class MetricsPusher {
 public:
  MetricsPusher(zmq::context_t& context, const runtime::WorkerInfo& info);
  ~MetricsPusher();
  void push(int64_t step, const core::Scalars& values);

 private:
  std::unique_ptr<zmq::socket_t> socket_;
  std::string name_;
};

// Where a worker's stream listens: TCP on the worker's host, or an IPC socket in the run
// directory when `distributed.transport: ipc` (one machine only); a replacement of a failed
// worker binds its predecessor's address (its entry "<stream>/<worker>" in the name service).
std::string bind_endpoint(const runtime::WorkerInfo& info, const DistributedRlConfig& c, const std::string& stream);
// The name-service address of a stream ("samples/trainer/0"), published or awaited.
void publish_stream(const runtime::WorkerInfo& info, const std::string& stream, const std::string& endpoint);
std::string await_stream(const runtime::WorkerInfo& info, const std::string& stream, const std::string& from);

// The trainer rank whose parameter stream subscriber `me` of `subscribers` reads: the reshard
// plan (runtime/layout.hpp) from the trainers' layout, where each of the data-parallel ranks
// holds the whole flat vector of `elements`, to the subscribers', where each needs it whole, with
// the vector as one piece. Every subscriber receives the parameters once and the trainers share
// the sending evenly (rather than trainer 0 sending to all).
int parameter_source(int64_t elements, int trainers, int subscribers, int me);
// The subscription to that trainer's stream ("parameters/trainer/R").
std::unique_ptr<core::ParameterSubscriber> subscribe_parameters(zmq::context_t& context, const runtime::WorkerInfo& info,
                                                                const DistributedRlConfig& c, int64_t elements, int subscribers);

// The seed of the actions an actor samples at `step` of env batch `slot`: a deterministic run's
// actions do not depend on which requests a policy worker batched together.
uint64_t action_seed(uint64_t run_seed, int actor, int slot, int64_t step);

// A worker's checkpoint shard: `<dir>/<role>-<rank>.safetensors` with counters in its metadata.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;
void save_shard(const std::filesystem::path& dir, const runtime::WorkerInfo& info, const NamedTensors& tensors,
                const std::map<std::string, int64_t>& counters);
struct Shard {
  NamedTensors tensors;
  std::map<std::string, int64_t> counters;
  // The tensors whose names start with `prefix`, with it taken off.
  NamedTensors with_prefix(const std::string& prefix) const;
};
Shard load_shard(const std::filesystem::path& dir, const runtime::WorkerInfo& info);

}  // namespace flotilla::actors::rl
