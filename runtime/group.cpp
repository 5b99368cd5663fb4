#include "runtime/group.hpp"

#include <spdlog/spdlog.h>

#include <deque>
#include <map>
#include <thread>
#include <zmq.hpp>

#include "core/curve.hpp"

namespace flotilla::runtime {

// ---- inputs ----

Input Input::grouped(int64_t rows) const {
  if (rows < 1) throw Error("a group has at least one row, not " + std::to_string(rows));
  if (this->rows() % rows != 0)
    throw Error(std::to_string(this->rows()) + " rows do not split into groups of " + std::to_string(rows));
  Input out = *this;
  out.group_ = rows;
  return out;
}

std::vector<Input> Input::chunks(int ranks) const {
  std::vector<int64_t> sizes = core::chunk_sizes(rows() / group_, ranks);
  std::vector<Input> out;
  int64_t begin = 0;
  for (int64_t s : sizes) {
    const int64_t end = begin + s * group_;
    Input part = *this;
    part.data_ = data_.empty() ? data_ : data_.slice(begin, end);
    out.push_back(std::move(part));
    begin = end;
  }
  return out;
}

// ---- a rank's reply ----

const core::InMessage& PendingCall::wait(std::chrono::steady_clock::time_point deadline, const std::string& worker,
                                         std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex);
  if (!done.wait_until(lock, deadline, [this] { return finished; }))
    throw TimeoutError("no reply from worker " + worker + " to '" + method + "' within " + std::to_string(timeout.count()) + " ms");
  if (lost) throw RankLost(error);
  if (!error.empty()) throw Error(error);
  return *reply;
}

void PendingCall::finish(std::optional<core::InMessage> message, std::string failure, bool lost_rank) {
  std::lock_guard lock(mutex);
  if (finished) return;
  reply = std::move(message);
  error = std::move(failure);
  lost = lost_rank;
  finished = true;
  done.notify_all();
}

// ---- the group's I/O thread ----

// Owns a DEALER per rank: callers queue messages and wake it through an inproc pair; it sends
// them and finishes pending calls and fetches as replies arrive. It is also the controller's side
// of the objects this group's workers keep (fetch, release).
struct WorkerGroup::Io final : ObjectHolder {
  zmq::context_t& context;
  std::string name;
  std::chrono::milliseconds timeout;
  std::vector<zmq::socket_t> dealers;
  zmq::socket_t wake_in, wake_out;
  std::mutex mutex;  // guards queue, pending, failure and wake_out
  std::deque<std::pair<int, std::unique_ptr<core::OutMessage>>> queue;
  std::map<uint64_t, std::shared_ptr<PendingCall>> pending;
  std::string failure;
  std::map<int, std::string> down;  // ranks being replaced, and why
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> next_id{1};
  std::atomic<int64_t> bytes{0};
  core::DropCounter drops;
  std::thread thread;

  Io(zmq::context_t& ctx, std::string n, const std::vector<std::string>& endpoints, std::chrono::milliseconds t)
      : context(ctx), name(std::move(n)), timeout(t), wake_in(ctx, zmq::socket_type::pair), wake_out(ctx, zmq::socket_type::pair) {
    // A name never used before in this process: ZeroMQ frees a closed socket's inproc name later,
    // so a group made where the last one was (the same address) could not bind it yet.
    static std::atomic<uint64_t> groups{0};
    const std::string wake = "inproc://flotilla-group-" + name + "-" + std::to_string(++groups);
    wake_in.bind(wake);
    wake_out.connect(wake);
    for (const auto& e : endpoints) {
      dealers.emplace_back(ctx, zmq::socket_type::dealer);
      dealers.back().set(zmq::sockopt::linger, 0);
      core::curve::connect(dealers.back(), e);
    }
    thread = std::thread([this] { loop(); });
  }

  ~Io() override {
    stop = true;
    wake();
    thread.join();
    fail("worker group " + name + " closed");
  }

  void wake() {
    std::lock_guard lock(mutex);
    wake_out.send(zmq::str_buffer("x"), zmq::send_flags::dontwait);
  }

  void fail(const std::string& why) {
    std::map<uint64_t, std::shared_ptr<PendingCall>> failed;
    {
      std::lock_guard lock(mutex);
      if (failure.empty()) failure = why;
      failed.swap(pending);
    }
    for (auto& [id, p] : failed) p->finish(std::nullopt, why);
  }

  void fail_rank(int rank, const std::string& why) {
    std::vector<std::shared_ptr<PendingCall>> failed;
    {
      std::lock_guard lock(mutex);
      down[rank] = why;
      for (auto it = pending.begin(); it != pending.end();) {
        if (it->second->rank != rank) {
          ++it;
          continue;
        }
        failed.push_back(std::move(it->second));
        it = pending.erase(it);
      }
    }
    for (auto& p : failed) p->finish(std::nullopt, why, true);
  }

  void rank_up(int rank) {
    std::lock_guard lock(mutex);
    down.erase(rank);
  }

  std::shared_ptr<PendingCall> send(int rank, std::unique_ptr<core::OutMessage> message, uint64_t id, std::string what) {
    auto p = std::make_shared<PendingCall>();
    p->rank = rank;
    p->method = std::move(what);
    std::lock_guard lock(mutex);
    if (!failure.empty()) {
      p->finish(std::nullopt, failure);
      return p;
    }
    if (auto it = down.find(rank); it != down.end()) {
      p->finish(std::nullopt, it->second, true);
      return p;
    }
    pending.emplace(id, p);
    queue.emplace_back(rank, std::move(message));
    wake_out.send(zmq::str_buffer("x"), zmq::send_flags::dontwait);
    return p;
  }

  void loop() {
    std::vector<zmq::pollitem_t> items;
    items.push_back({wake_in.handle(), 0, ZMQ_POLLIN, 0});
    for (auto& d : dealers) items.push_back({d.handle(), 0, ZMQ_POLLIN, 0});
    while (!stop.load()) {
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds(-1));
      if (items[0].revents & ZMQ_POLLIN) {
        zmq::message_t x;
        while (wake_in.recv(x, zmq::recv_flags::dontwait)) {
        }
      }
      std::deque<std::pair<int, std::unique_ptr<core::OutMessage>>> out;
      {
        std::lock_guard lock(mutex);
        out.swap(queue);
      }
      for (auto& [rank, msg] : out) msg->send(dealers[static_cast<size_t>(rank)]);
      for (size_t r = 0; r < dealers.size(); ++r)
        if (items[r + 1].revents & ZMQ_POLLIN) receive(dealers[r]);
    }
  }

  void receive(zmq::socket_t& dealer) {
    dealer.set(zmq::sockopt::rcvtimeo, 0);
    while (true) {
      std::optional<core::InMessage> in;
      try {
        in = core::InMessage::receive(dealer);
      } catch (const core::DecodeError& e) {
        drops.record(e, "worker group " + name);
        continue;
      }
      if (!in) return;
      uint64_t id = 0;
      std::string error;
      if (in->envelope().isRpcReply()) {
        id = in->envelope().getRpcReply().getId();
        if (!in->envelope().getRpcReply().getOk()) error = in->envelope().getRpcReply().getError().cStr();
      } else if (in->envelope().isDataReply()) {
        id = in->envelope().getDataReply().getId();
        if (!in->envelope().getDataReply().getOk()) error = in->envelope().getDataReply().getError().cStr();
      } else {
        continue;
      }
      std::shared_ptr<PendingCall> p;
      {
        std::lock_guard lock(mutex);
        auto it = pending.find(id);
        if (it == pending.end()) continue;  // a reply after its caller gave up
        p = std::move(it->second);
        pending.erase(it);
      }
      bytes += in->payload_bytes();
      p->finish(std::move(in), std::move(error));
    }
  }

  core::Batch fetch(int rank, uint64_t object, const std::vector<std::string>& fields, const RowSet& rows) override {
    auto m = std::make_unique<core::OutMessage>("controller");
    auto f = m->envelope().initDataFetch();
    const uint64_t id = next_id++;
    f.setId(id);
    f.setObject(object);
    auto names = f.initFields(static_cast<unsigned>(fields.size()));
    for (unsigned i = 0; i < fields.size(); ++i) names.set(i, fields[i]);
    rows.write(f.initRows());
    const std::string worker = name + "/" + std::to_string(rank);
    auto p = send(rank, std::move(m), id, "fetching rows");
    const core::InMessage& in = p->wait(std::chrono::steady_clock::now() + timeout, worker, timeout);
    return in.batch(in.envelope().getDataReply().getBatch());
  }

  void release(int rank, uint64_t object) override {
    auto m = std::make_unique<core::OutMessage>("controller");
    m->envelope().initDataRelease().initObjects(1).set(0, object);
    std::lock_guard lock(mutex);
    if (stop.load() || !failure.empty() || down.count(rank)) return;  // a replacement never held it
    queue.emplace_back(rank, std::move(m));
    wake_out.send(zmq::str_buffer("x"), zmq::send_flags::dontwait);
  }
};

WorkerGroup::WorkerGroup(zmq::context_t& context, std::string name, std::vector<std::string> endpoints,
                         std::chrono::milliseconds timeout, int tp)
    : name_(std::move(name)), endpoints_(std::move(endpoints)), timeout_(timeout), tp_(tp) {
  if (endpoints_.empty()) throw ConfigError("worker group '" + name_ + "' has no ranks");
  if (tp_ < 1 || size() % tp_ != 0)
    throw ConfigError("worker group '" + name_ + "' has " + std::to_string(size()) + " ranks, not a whole number of tensor-parallel replicas of " +
                      std::to_string(tp_));
  io_ = std::make_shared<Io>(context, name_, endpoints_, timeout_);
}

WorkerGroup::~WorkerGroup() = default;

std::shared_ptr<PendingCall> WorkerGroup::submit(int rank, std::unique_ptr<core::OutMessage> message,
                                                 const std::string& method, int64_t bytes) {
  const uint64_t id = io_->next_id++;
  message->envelope().getRpcRequest().setId(id);
  io_->bytes += bytes;
  return io_->send(rank, std::move(message), id, method);
}

core::Batch WorkerGroup::received(const core::InMessage& in, proto::BatchMeta::Reader meta) const {
  return in.batch(meta);
}

void WorkerGroup::fail(const std::string& failure) { io_->fail(failure); }
void WorkerGroup::fail_rank(int rank, const std::string& failure) { io_->fail_rank(rank, failure); }
void WorkerGroup::rank_up(int rank) { io_->rank_up(rank); }

int64_t WorkerGroup::transfer_bytes() const { return io_->bytes.load(); }

DataRef WorkerGroup::kept(int rank, proto::Kept::Reader k) const {
  auto object = std::make_shared<KeptObject>();
  object->holder = std::static_pointer_cast<ObjectHolder>(io_);
  object->rank = rank;
  object->worker = worker(rank);
  object->endpoint = endpoints_[static_cast<size_t>(rank)];
  object->id = k.getObject();
  object->rows = k.getRows();
  for (auto f : k.getFields()) object->fields.emplace_back(f.cStr());
  return DataRef(std::move(object));
}

}  // namespace flotilla::runtime
