#include "core/stream.hpp"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <zmq.hpp>

#include "core/error.hpp"
#include "core/wire.hpp"

namespace flotilla::core {
namespace {

class ZmqSampleReceiver final : public SampleReceiver {
 public:
  ZmqSampleReceiver(zmq::context_t& context, const std::string& bind) : socket_(context, zmq::socket_type::pull) {
    socket_.set(zmq::sockopt::rcvhwm, 64);
    try {
      socket_.bind(bind);
    } catch (const zmq::error_t& e) {
      throw Error("cannot bind the sample stream to '" + bind + "': " + e.what());
    }
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  std::optional<Samples> receive(std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      socket_.set(zmq::sockopt::rcvtimeo, static_cast<int>(std::max<int64_t>(0, left.count())));
      try {
        auto m = InMessage::receive(socket_);
        if (!m) return std::nullopt;
        auto env = m->envelope();
        if (!env.isSamples()) throw DecodeError("unexpected-type", "a sample stream got a message that is not samples");
        return Samples{m->batch(env.getSamples().getBatch()), env.getSamples().getPolicyVersion(), env.getSender().cStr()};
      } catch (const DecodeError& e) {
        drops_.record(e, "sample stream " + endpoint_);
        if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
      }
    }
  }
  std::map<std::string, int64_t> dropped() const override { return drops_.counts(); }
  std::string endpoint() const override { return endpoint_; }

 private:
  zmq::socket_t socket_;
  std::string endpoint_;
  DropCounter drops_;
};

class ZmqSampleSender final : public SampleSender {
 public:
  ZmqSampleSender(zmq::context_t& context, const std::string& endpoint, std::string name, std::chrono::milliseconds timeout)
      : socket_(context, zmq::socket_type::push), endpoint_(endpoint), name_(std::move(name)) {
    socket_.set(zmq::sockopt::sndhwm, 64);
    socket_.set(zmq::sockopt::sndtimeo, static_cast<int>(timeout.count()));
    socket_.set(zmq::sockopt::linger, 2000);
    timeout_ = timeout;
    try {
      socket_.connect(endpoint);
    } catch (const zmq::error_t& e) {
      throw Error("cannot connect the sample stream to '" + endpoint + "': " + e.what());
    }
  }
  void send(const Batch& batch, int64_t policy_version) override {
    OutMessage m(name_);
    auto samples = m.envelope().initSamples();
    samples.setPolicyVersion(policy_version);
    m.put_batch(samples.initBatch(), batch);
    if (!m.send(socket_))
      throw TimeoutError("sample stream: no consumer at '" + endpoint_ + "' took a batch within " +
                         std::to_string(timeout_.count()) + " ms");
  }

 private:
  zmq::socket_t socket_;
  std::string endpoint_, name_;
  std::chrono::milliseconds timeout_;
};

struct Queue {
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<Samples> items;
  size_t capacity;
};

class QueueSender final : public SampleSender {
 public:
  QueueSender(std::shared_ptr<Queue> q, std::string name) : q_(std::move(q)), name_(std::move(name)) {}
  void send(const Batch& batch, int64_t version) override {
    std::unique_lock lock(q_->mutex);
    if (!q_->changed.wait_for(lock, std::chrono::seconds(30), [&] { return q_->items.size() < q_->capacity; }))
      throw TimeoutError("in-process sample stream: the consumer took nothing for 30 s (queue full)");
    q_->items.push_back({batch, version, name_});
    q_->changed.notify_all();
  }

 private:
  std::shared_ptr<Queue> q_;
  std::string name_;
};

class QueueReceiver final : public SampleReceiver {
 public:
  explicit QueueReceiver(std::shared_ptr<Queue> q) : q_(std::move(q)) {}
  std::optional<Samples> receive(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(q_->mutex);
    if (!q_->changed.wait_for(lock, timeout, [&] { return !q_->items.empty(); })) return std::nullopt;
    Samples s = std::move(q_->items.front());
    q_->items.pop_front();
    q_->changed.notify_all();
    return s;
  }
  std::map<std::string, int64_t> dropped() const override { return {}; }
  std::string endpoint() const override { return "inprocess"; }

 private:
  std::shared_ptr<Queue> q_;
};

}  // namespace

std::unique_ptr<SampleReceiver> zmq_sample_receiver(zmq::context_t& context, const std::string& bind) {
  return std::make_unique<ZmqSampleReceiver>(context, bind);
}

std::unique_ptr<SampleSender> zmq_sample_sender(zmq::context_t& context, const std::string& endpoint,
                                                const std::string& sender_name, std::chrono::milliseconds send_timeout) {
  return std::make_unique<ZmqSampleSender>(context, endpoint, sender_name, send_timeout);
}

std::pair<std::unique_ptr<SampleSender>, std::unique_ptr<SampleReceiver>> inprocess_sample_stream(
    size_t capacity, const std::string& sender_name) {
  auto q = std::make_shared<Queue>();
  q->capacity = std::max<size_t>(1, capacity);
  return {std::make_unique<QueueSender>(q, sender_name), std::make_unique<QueueReceiver>(q)};
}

}  // namespace flotilla::core
