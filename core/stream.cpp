#include "core/stream.hpp"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <zmq.hpp>

#include "core/curve.hpp"
#include "core/error.hpp"
#include "core/wire.hpp"

namespace flotilla::core {
namespace {

class ZmqSampleReceiver final : public SampleReceiver {
 public:
  ZmqSampleReceiver(zmq::context_t& context, const std::string& bind) : socket_(context, zmq::socket_type::pull) {
    socket_.set(zmq::sockopt::rcvhwm, 64);
    try {
      curve::bind(context, socket_, bind);
    } catch (const Error& e) {
      throw Error(std::string("the sample stream: ") + e.what());
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
        return Samples{m->batch(env.getSamples().getBatch()), env.getSamples().getPolicyVersion(), env.getSender().cStr(),
                       read_scalars(env.getSamples().getStats())};
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
      curve::connect(socket_, endpoint);
    } catch (const Error& e) {
      throw Error(std::string("the sample stream: ") + e.what());
    }
  }
  void send(const Batch& batch, int64_t policy_version, const Scalars& stats) override {
    OutMessage m(name_);
    auto samples = m.envelope().initSamples();
    samples.setPolicyVersion(policy_version);
    write_scalars(samples.initStats(static_cast<unsigned>(stats.size())), stats);
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
  void send(const Batch& batch, int64_t version, const Scalars& stats) override {
    std::unique_lock lock(q_->mutex);
    if (!q_->changed.wait_for(lock, std::chrono::seconds(30), [&] { return q_->items.size() < q_->capacity; }))
      throw TimeoutError("in-process sample stream: the consumer took nothing for 30 s (queue full)");
    q_->items.push_back({batch, version, name_, stats});
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

namespace flotilla::core {
namespace {

class ZmqParameterPublisher final : public ParameterPublisher {
 public:
  ZmqParameterPublisher(zmq::context_t& context, const std::string& bind, std::string name)
      : socket_(context, zmq::socket_type::pub), name_(std::move(name)) {
    socket_.set(zmq::sockopt::sndhwm, 4);
    socket_.set(zmq::sockopt::linger, 0);
    curve::bind(context, socket_, bind);
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  void publish(int64_t version, const Batch& tensors) override {
    OutMessage m(name_);
    auto p = m.envelope().initParameters();
    p.setVersion(version);
    m.put_batch(p.initBatch(), tensors);
    m.send(socket_);
  }
  std::string endpoint() const override { return endpoint_; }

 private:
  zmq::socket_t socket_;
  std::string name_, endpoint_;
};

class ZmqParameterSubscriber final : public ParameterSubscriber {
 public:
  ZmqParameterSubscriber(zmq::context_t& context, const std::string& endpoint) : socket_(context, zmq::socket_type::sub) {
    socket_.set(zmq::sockopt::subscribe, "");
    socket_.set(zmq::sockopt::rcvhwm, 4);
    socket_.set(zmq::sockopt::linger, 0);
    curve::connect(socket_, endpoint);
    endpoint_ = endpoint;
  }
  std::optional<Parameters> latest(std::chrono::milliseconds timeout) override {
    std::optional<Parameters> newest;
    socket_.set(zmq::sockopt::rcvtimeo, static_cast<int>(timeout.count()));
    while (true) {
      try {
        auto m = InMessage::receive(socket_);
        if (!m) break;
        if (!m->envelope().isParameters()) throw DecodeError("unexpected-type", "a parameter stream got another message");
        auto p = m->envelope().getParameters();
        if (!newest || p.getVersion() >= newest->version) newest = Parameters{p.getVersion(), m->batch(p.getBatch())};
      } catch (const DecodeError& e) {
        drops_.record(e, "parameter stream " + endpoint_);
      }
      socket_.set(zmq::sockopt::rcvtimeo, 0);  // after the first, take only what is already here
    }
    return newest;
  }

 private:
  zmq::socket_t socket_;
  std::string endpoint_;
  DropCounter drops_;
};

class ZmqInferenceServer final : public InferenceServer {
 public:
  ZmqInferenceServer(zmq::context_t& context, const std::string& bind, std::string name)
      : socket_(context, zmq::socket_type::router), name_(std::move(name)) {
    socket_.set(zmq::sockopt::linger, 0);
    curve::bind(context, socket_, bind);
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  std::optional<InferenceBatch> gather(int64_t max_rows, std::chrono::milliseconds max_delay,
                                       std::chrono::milliseconds idle) override {
    InferenceBatch out;
    std::vector<Batch> inputs;
    int64_t rows = 0;
    auto deadline = std::chrono::steady_clock::now() + idle;
    while (rows < max_rows) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() < 0) break;
      socket_.set(zmq::sockopt::rcvtimeo, static_cast<int>(left.count()));
      std::optional<InMessage> m;
      try {
        m = InMessage::receive(socket_, true);
        if (!m) break;
        if (!m->envelope().isInferenceRequest())
          throw DecodeError("unexpected-type", "an inference server got a message that is not a request");
        auto req = m->envelope().getInferenceRequest();
        Batch b = m->batch(req.getBatch());
        const std::string route(static_cast<const char*>(m->route().data()), m->route().size());
        if (inputs.empty()) deadline = std::chrono::steady_clock::now() + max_delay;  // the first starts the clock
        out.parts.push_back({route, req.getId(), b.size(), {req.getMinVersion(), req.getSeed()}});
        rows += b.size();
        inputs.push_back(std::move(b));
      } catch (const DecodeError& e) {
        drops_.record(e, "inference server " + name_);
      }
    }
    if (inputs.empty()) return std::nullopt;
    out.inputs = Batch::concat(inputs);
    return out;
  }
  void reply(const InferenceBatch& batch, const Batch& outputs, int64_t version) override {
    std::vector<int64_t> sizes;
    for (const auto& p : batch.parts) sizes.push_back(p.rows);
    auto pieces = outputs.split(sizes);
    for (size_t i = 0; i < batch.parts.size(); ++i) {
      OutMessage m(name_);
      auto r = m.envelope().initInferenceReply();
      r.setId(batch.parts[i].id);
      r.setPolicyVersion(version);
      m.put_batch(r.initBatch(), pieces[i]);
      zmq::message_t route(batch.parts[i].route.data(), batch.parts[i].route.size());
      m.send(socket_, &route);
    }
  }
  std::string endpoint() const override { return endpoint_; }
  std::map<std::string, int64_t> dropped() const override { return drops_.counts(); }

 private:
  zmq::socket_t socket_;
  std::string name_, endpoint_;
  DropCounter drops_;
};

class ZmqInferenceClient final : public InferenceClient {
 public:
  ZmqInferenceClient(zmq::context_t& context, const std::string& endpoint, std::string name)
      : socket_(context, zmq::socket_type::dealer), endpoint_(endpoint), name_(std::move(name)) {
    socket_.set(zmq::sockopt::linger, 0);
    curve::connect(socket_, endpoint);
  }
  uint64_t submit(const Batch& inputs, const InferenceTags& tags) override {
    const uint64_t id = ++next_id_;
    send(id, inputs, tags);
    unanswered_[id] = {inputs, tags};
    return id;
  }

  void resend() override {
    for (const auto& [id, r] : unanswered_)
      if (!early_.count(id)) send(id, r.first, r.second);
  }

  std::pair<Batch, int64_t> wait(uint64_t id, std::chrono::milliseconds timeout) override {
    if (auto it = early_.find(id); it != early_.end()) {  // arrived while waiting for another
      auto reply = std::move(it->second);
      early_.erase(it);
      unanswered_.erase(id);
      return reply;
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      socket_.set(zmq::sockopt::rcvtimeo, static_cast<int>(left.count()));
      try {
        auto in = InMessage::receive(socket_);
        if (!in) break;
        if (!in->envelope().isInferenceReply()) continue;
        auto r = in->envelope().getInferenceReply();
        std::pair<Batch, int64_t> reply{in->batch(r.getBatch()), r.getPolicyVersion()};
        if (!unanswered_.count(r.getId())) continue;  // answered already (sent twice)
        if (r.getId() == id) {
          unanswered_.erase(id);
          return reply;
        }
        early_[r.getId()] = std::move(reply);
      } catch (const DecodeError&) {
        continue;
      }
    }
    throw TimeoutError(name_ + ": no inference reply from '" + endpoint_ + "' within " + std::to_string(timeout.count()) + " ms");
  }

 private:
  zmq::socket_t socket_;
  std::string endpoint_, name_;
  void send(uint64_t id, const Batch& inputs, const InferenceTags& tags) {
    OutMessage m(name_);
    auto req = m.envelope().initInferenceRequest();
    req.setId(id);
    req.setMinVersion(tags.min_version);
    req.setSeed(tags.seed);
    m.put_batch(req.initBatch(), inputs);
    m.send(socket_);
  }

  uint64_t next_id_ = 0;
  std::map<uint64_t, std::pair<Batch, int64_t>> early_;
  std::map<uint64_t, std::pair<Batch, InferenceTags>> unanswered_;  // kept to send again
};

}  // namespace

std::unique_ptr<ParameterPublisher> zmq_parameter_publisher(zmq::context_t& context, const std::string& bind,
                                                            const std::string& sender_name) {
  return std::make_unique<ZmqParameterPublisher>(context, bind, sender_name);
}
std::unique_ptr<ParameterSubscriber> zmq_parameter_subscriber(zmq::context_t& context, const std::string& endpoint) {
  return std::make_unique<ZmqParameterSubscriber>(context, endpoint);
}
std::unique_ptr<InferenceServer> zmq_inference_server(zmq::context_t& context, const std::string& bind, const std::string& name) {
  return std::make_unique<ZmqInferenceServer>(context, bind, name);
}
std::unique_ptr<InferenceClient> zmq_inference_client(zmq::context_t& context, const std::string& endpoint,
                                                      const std::string& name) {
  return std::make_unique<ZmqInferenceClient>(context, endpoint, name);
}

}  // namespace flotilla::core
