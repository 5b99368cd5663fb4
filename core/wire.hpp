#pragma once
// The wire format between Flotilla processes: a multipart ZeroMQ message whose first frame is a
// Cap'n Proto Envelope (core/proto/messages.capnp) and whose other frames are tensor bytes.
// Tensors are neither copied on send (a frame keeps a reference to the tensor's storage) nor on
// receive (a tensor keeps a reference to its frame).
#include <ATen/core/Tensor.h>
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "core/batch.hpp"
#include "core/error.hpp"
#include "core/metrics.hpp"
#include "messages.capnp.h"

namespace flotilla::core {

// A message that could not be decoded; `kind` groups them for counting: truncated,
// bad-envelope, bad-version, bad-tensor.
class DecodeError : public FormatError {
 public:
  DecodeError(std::string kind, const std::string& what) : FormatError(what), kind_(std::move(kind)) {}
  const std::string& kind() const { return kind_; }

 private:
  std::string kind_;
};

class OutMessage {
 public:
  explicit OutMessage(const std::string& sender);
  proto::Envelope::Builder envelope() { return envelope_; }
  // Describes `batch` in `meta` and queues its tensors as frames (moved to CPU, made contiguous).
  void put_batch(proto::BatchMeta::Builder meta, const Batch& batch);
  // Sends every frame, after `route` when given (to a ROUTER peer). False when the socket's send
  // timeout passed before the first frame was queued.
  bool send(zmq::socket_t& socket, const zmq::message_t* route = nullptr);

 private:
  capnp::MallocMessageBuilder builder_;
  proto::Envelope::Builder envelope_;
  std::vector<at::Tensor> tensors_;
};

class InMessage {
 public:
  // Reads one message (waiting up to the socket's receive timeout: nullopt when none came). A
  // malformed message is consumed whole and reported as DecodeError.
  static std::optional<InMessage> receive(zmq::socket_t& socket, bool routed = false);
  // The message these frames make (the envelope first, then the tensor frames), as receive()
  // checks it; DecodeError when malformed.
  static InMessage decode(std::vector<std::shared_ptr<zmq::message_t>> frames);
  proto::Envelope::Reader envelope() const { return envelope_; }
  // The batch a BatchMeta describes; its tensors share memory with the received frames.
  Batch batch(proto::BatchMeta::Reader meta) const;
  // The ROUTER identity the message came from (routed receives only).
  const zmq::message_t& route() const { return *route_; }
  // Bytes of the tensor frames (all but the envelope).
  int64_t payload_bytes() const;

 private:
  std::shared_ptr<zmq::message_t> route_;
  std::vector<std::shared_ptr<zmq::message_t>> frames_;  // frame 0 is the envelope
  kj::Array<capnp::word> aligned_;                          // the envelope, when its frame was unaligned
  std::shared_ptr<capnp::FlatArrayMessageReader> reader_;
  proto::Envelope::Reader envelope_;
};

// Named numbers into a message (a Metrics row, the stats of Samples), and back.
void write_scalars(capnp::List<proto::Scalar>::Builder list, const Scalars& values);
Scalars read_scalars(capnp::List<proto::Scalar>::Reader list);

// Counts dropped messages per kind and logs the first of each kind, so a bad peer cannot flood
// the log; the counts feed the transport/dropped_<kind> metrics.
class DropCounter {
 public:
  void record(const DecodeError& e, const std::string& where);
  std::map<std::string, int64_t> counts() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, int64_t> counts_;
};

}  // namespace flotilla::core
