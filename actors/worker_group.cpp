#include "actors/worker_group.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <zmq.hpp>

#include "core/error.hpp"
#include "core/wire.hpp"

namespace flotilla::actors {

// The IO thread owns every socket: callers hand it encoded requests through a queue and wake it
// through an inproc socket; it sends them and fulfils promises as replies arrive.
struct WorkerGroup::Io {
  zmq::context_t& context;
  std::vector<zmq::socket_t> dealers;
  zmq::socket_t wake_in, wake_out;
  std::mutex mutex;  // guards queue, pending and wake_out
  std::deque<std::pair<int, std::unique_ptr<core::OutMessage>>> queue;
  std::map<uint64_t, std::promise<CallResult>> pending;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> next_id{1};
  core::DropCounter drops;
  std::thread thread;
  std::string role;

  Io(zmq::context_t& ctx, const std::string& r, const std::vector<std::string>& endpoints)
      : context(ctx), wake_in(ctx, zmq::socket_type::pair), wake_out(ctx, zmq::socket_type::pair), role(r) {
    const std::string wake = "inproc://flotilla-group-" + r + "-" + std::to_string(reinterpret_cast<uintptr_t>(this));
    wake_in.bind(wake);
    wake_out.connect(wake);
    for (const auto& e : endpoints) {
      dealers.emplace_back(ctx, zmq::socket_type::dealer);
      dealers.back().set(zmq::sockopt::linger, 0);
      dealers.back().connect(e);
    }
    thread = std::thread([this] { loop(); });
  }

  ~Io() {
    stop = true;
    {
      std::lock_guard lock(mutex);
      wake_out.send(zmq::str_buffer("x"), zmq::send_flags::dontwait);
    }
    thread.join();
    for (auto& [id, p] : pending) p.set_exception(std::make_exception_ptr(Error("worker group " + role + " closed")));
  }

  void loop() {
    std::vector<zmq::pollitem_t> items;
    items.push_back({wake_in.handle(), 0, ZMQ_POLLIN, 0});
    for (auto& d : dealers) items.push_back({d.handle(), 0, ZMQ_POLLIN, 0});
    while (!stop.load()) {
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds(200));
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
      for (auto& [rank, msg] : out) msg->send(dealers[rank]);
      for (size_t r = 0; r < dealers.size(); ++r) {
        if (!(items[r + 1].revents & ZMQ_POLLIN)) continue;
        dealers[r].set(zmq::sockopt::rcvtimeo, 0);
        while (true) {
          std::optional<core::InMessage> in;
          try {
            in = core::InMessage::receive(dealers[r]);
          } catch (const core::DecodeError& e) {
            drops.record(e, "worker group " + role);
            continue;
          }
          if (!in) break;
          if (!in->envelope().isRpcReply()) continue;
          auto reply = in->envelope().getRpcReply();
          std::promise<CallResult> promise;
          {
            std::lock_guard lock(mutex);
            auto it = pending.find(reply.getId());
            if (it == pending.end()) continue;  // a reply after its caller gave up
            promise = std::move(it->second);
            pending.erase(it);
          }
          if (reply.getOk()) {
            try {
              promise.set_value(CallResult{reply.getResult().cStr(), in->batch(reply.getBatch())});
            } catch (const core::DecodeError& e) {
              promise.set_exception(std::make_exception_ptr(Error(role + " sent a reply that does not decode: " + e.what())));
            }
          } else {
            promise.set_exception(std::make_exception_ptr(Error(reply.getError().cStr())));
          }
        }
      }
    }
  }

  std::future<CallResult> submit(int rank, const std::string& method, const std::string& args, const core::Batch& batch) {
    auto msg = std::make_unique<core::OutMessage>("controller");
    auto req = msg->envelope().initRpcRequest();
    const uint64_t id = next_id++;
    req.setId(id);
    req.setMethod(method);
    req.setArgs(args);
    msg->put_batch(req.initBatch(), batch);
    std::promise<CallResult> promise;
    std::future<CallResult> future = promise.get_future();
    std::lock_guard lock(mutex);
    pending.emplace(id, std::move(promise));
    queue.emplace_back(rank, std::move(msg));
    wake_out.send(zmq::str_buffer("x"), zmq::send_flags::dontwait);
    return future;
  }
};

WorkerGroup::WorkerGroup(zmq::context_t& context, std::string role, std::vector<std::string> endpoints,
                         std::chrono::milliseconds timeout)
    : role_(std::move(role)), endpoints_(std::move(endpoints)), timeout_(timeout) {
  if (endpoints_.empty()) throw ConfigError("worker group '" + role_ + "' has no ranks");
  io_ = std::make_unique<Io>(context, role_, endpoints_);
}

WorkerGroup::~WorkerGroup() = default;

std::vector<std::future<CallResult>> WorkerGroup::call(const std::string& method, const std::string& args,
                                                       const core::Batch& batch, Dispatch dispatch) {
  std::vector<std::future<CallResult>> out;
  switch (dispatch) {
    case Dispatch::RankZero: out.push_back(io_->submit(0, method, args, batch)); break;
    case Dispatch::OneToAll:
      for (int r = 0; r < size(); ++r) out.push_back(io_->submit(r, method, args, batch));
      break;
    case Dispatch::DpChunk: {
      auto parts = batch.chunk(size());  // uneven: sizes differ by at most one
      for (int r = 0; r < size(); ++r) out.push_back(io_->submit(r, method, args, parts[r]));
      break;
    }
  }
  return out;
}

std::vector<std::future<CallResult>> WorkerGroup::call_parts(const std::string& method, const std::string& args,
                                                             const std::vector<core::Batch>& parts) {
  if (static_cast<int>(parts.size()) != size())
    throw Error("'" + method + "' for " + role_ + ": " + std::to_string(parts.size()) + " parts for " +
                std::to_string(size()) + " ranks");
  std::vector<std::future<CallResult>> out;
  for (int r = 0; r < size(); ++r) out.push_back(io_->submit(r, method, args, parts[static_cast<size_t>(r)]));
  return out;
}

std::vector<CallResult> WorkerGroup::collect_all(std::vector<std::future<CallResult>>& futures, const std::string& method) {
  std::vector<CallResult> results;
  for (size_t r = 0; r < futures.size(); ++r) {
    if (futures[r].wait_for(timeout_) != std::future_status::ready)
      throw TimeoutError("no reply from worker " + role_ + "/" + std::to_string(r) + " to '" + method + "' within " +
                         std::to_string(timeout_.count()) + " ms");
    results.push_back(futures[r].get());  // rethrows the worker's error, which names it
  }
  return results;
}

CallResult WorkerGroup::collect(std::vector<std::future<CallResult>>& futures, const std::string& method, Dispatch dispatch) {
  std::vector<CallResult> results = collect_all(futures, method);
  if (dispatch != Dispatch::DpChunk) return results.front();
  std::vector<core::Batch> parts;
  for (auto& r : results) parts.push_back(std::move(r.batch));
  return CallResult{results.front().result, core::Batch::concat(parts)};
}

CallResult WorkerGroup::run(const std::string& method, const std::string& args, const core::Batch& batch, Dispatch dispatch) {
  auto futures = call(method, args, batch, dispatch);
  return collect(futures, method, dispatch);
}

}  // namespace flotilla::actors
