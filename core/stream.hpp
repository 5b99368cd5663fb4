#pragma once
// Sample streams: batches of experience from producers (env actors) to consumers (trainers,
// buffers), each tagged with the policy version that produced it. One interface, interchangeable
// transports: ZeroMQ PUSH/PULL (TCP on loopback or a host, or IPC) and an in-process queue.
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/batch.hpp"
#include "core/metrics.hpp"

namespace zmq {
class context_t;
}

namespace flotilla::core {

struct Samples {
  Batch batch;
  int64_t policy_version = 0;
  std::string sender;
  Scalars stats;  // travels with the batch (e.g. the episodes that ended in it)
};

class SampleSender {
 public:
  virtual ~SampleSender() = default;
  // Queues the batch (its tensors are not copied); throws TimeoutError naming the endpoint when
  // the consumer does not take it within the send timeout.
  virtual void send(const Batch& batch, int64_t policy_version, const Scalars& stats = {}) = 0;
};

class SampleReceiver {
 public:
  virtual ~SampleReceiver() = default;
  // The next batch, or nullopt after `timeout`. Malformed messages are dropped and counted.
  virtual std::optional<Samples> receive(std::chrono::milliseconds timeout) = 0;
  // Dropped messages by kind (transport/dropped_<kind>).
  virtual std::map<std::string, int64_t> dropped() const = 0;
  // Where senders connect.
  virtual std::string endpoint() const = 0;
};

// Binds a PULL socket ("tcp://127.0.0.1:*" picks a free port; "ipc:///path").
std::unique_ptr<SampleReceiver> zmq_sample_receiver(zmq::context_t& context, const std::string& bind);
// Connects a PUSH socket to `endpoint`.
std::unique_ptr<SampleSender> zmq_sample_sender(zmq::context_t& context, const std::string& endpoint,
                                                const std::string& sender_name,
                                                std::chrono::milliseconds send_timeout = std::chrono::seconds(30));
// A bounded in-process queue with the same semantics.
std::pair<std::unique_ptr<SampleSender>, std::unique_ptr<SampleReceiver>> inprocess_sample_stream(
    size_t capacity, const std::string& sender_name = "inprocess");

// ---- parameters: PUB -> SUB, versioned ----

struct Parameters {
  int64_t version = 0;
  Batch tensors;  // one row per parameter is not required: each field is a whole parameter
};

class ParameterPublisher {
 public:
  virtual ~ParameterPublisher() = default;
  virtual void publish(int64_t version, const Batch& tensors) = 0;
  virtual std::string endpoint() const = 0;
};

class ParameterSubscriber {
 public:
  virtual ~ParameterSubscriber() = default;
  // The newest parameters that arrived since the last call (older ones are skipped), waiting up
  // to `timeout` for one; nullopt when none came.
  virtual std::optional<Parameters> latest(std::chrono::milliseconds timeout) = 0;
};

std::unique_ptr<ParameterPublisher> zmq_parameter_publisher(zmq::context_t& context, const std::string& bind,
                                                            const std::string& sender_name);
std::unique_ptr<ParameterSubscriber> zmq_parameter_subscriber(zmq::context_t& context, const std::string& endpoint);

// ---- inference: DEALER -> ROUTER, batched on the server ----

// What a request asks of the server beyond its inputs.
struct InferenceTags {
  int64_t min_version = 0;  // parameters at least this new (a lockstep run's next fragment)
  uint64_t seed = 0;        // sample with this seed, so the actions do not depend on batching; 0: any
};

class InferenceClient {
 public:
  virtual ~InferenceClient() = default;
  // Sends `inputs` and returns at once with the request's id.
  virtual uint64_t submit(const Batch& inputs, const InferenceTags& tags = {}) = 0;
  // The reply to request `id` and its policy version; throws TimeoutError naming the server.
  virtual std::pair<Batch, int64_t> wait(uint64_t id, std::chrono::milliseconds timeout) = 0;
  // Sends every request not answered yet again (the server was replaced and lost them); a second
  // reply to a request is dropped.
  virtual void resend() = 0;
  std::pair<Batch, int64_t> infer(const Batch& inputs, std::chrono::milliseconds timeout) {
    return wait(submit(inputs), timeout);
  }
};

// Requests gathered into one batch, and where each one's rows go back.
struct InferenceBatch {
  Batch inputs;
  struct Part {
    std::string route;
    uint64_t id;
    int64_t rows;
    InferenceTags tags;
  };
  std::vector<Part> parts;
};

class InferenceServer {
 public:
  virtual ~InferenceServer() = default;
  // Gathers requests until `max_rows` rows are waiting or `max_delay` has passed since the first
  // (waiting up to `idle` for a first one); nullopt when none came.
  virtual std::optional<InferenceBatch> gather(int64_t max_rows, std::chrono::milliseconds max_delay,
                                               std::chrono::milliseconds idle) = 0;
  // Splits `outputs` (rows in the order of the gathered inputs) back to the requesters.
  virtual void reply(const InferenceBatch& batch, const Batch& outputs, int64_t policy_version) = 0;
  virtual std::string endpoint() const = 0;
  virtual std::map<std::string, int64_t> dropped() const = 0;
};

std::unique_ptr<InferenceServer> zmq_inference_server(zmq::context_t& context, const std::string& bind,
                                                      const std::string& name);
std::unique_ptr<InferenceClient> zmq_inference_client(zmq::context_t& context, const std::string& endpoint,
                                                      const std::string& name);

}  // namespace flotilla::core
