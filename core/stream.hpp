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

#include "core/batch.hpp"

namespace zmq {
class context_t;
}

namespace flotilla::core {

struct Samples {
  Batch batch;
  int64_t policy_version = 0;
  std::string sender;
};

class SampleSender {
 public:
  virtual ~SampleSender() = default;
  // Queues the batch (its tensors are not copied); throws TimeoutError naming the endpoint when
  // the consumer does not take it within the send timeout.
  virtual void send(const Batch& batch, int64_t policy_version) = 0;
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

}  // namespace flotilla::core
