#pragma once
// WorkerGroup: the controller's handle to the ranks of one group. `group.call(M{...}, input)`
// sends method M to the ranks its dispatch mode names, with their part of the input, and returns
// a Future whose get() collects the replies as M's collect mode says. Every wait has a timeout and
// names the worker and method it waited for; a failure of the cluster (a worker died) ends every
// pending call at once with that failure.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/batch.hpp"
#include "core/error.hpp"
#include "core/wire.hpp"
#include "runtime/codec.hpp"
#include "runtime/data.hpp"
#include "runtime/method.hpp"

namespace zmq {
class context_t;
}

namespace flotilla::runtime {

// The rows a call works on: none, a batch sent with the call, or a DataRef whose rows the callees
// fetch from the workers that hold them (the two can be joined: DataRef::join with DataRef::of).
class Input {
 public:
  Input() = default;
  Input(core::Batch batch) : data_(DataRef::of(std::move(batch))) {}  // NOLINT: a batch is an input
  Input(DataRef data) : data_(std::move(data)) {}                     // NOLINT: so is a reference
  // DpChunks keeps each run of `rows` consecutive rows (a prompt's samples, a pair) on one rank.
  Input grouped(int64_t rows) const;
  int64_t rows() const { return data_.rows(); }
  int64_t group() const { return group_; }
  const DataRef& data() const { return data_; }
  // One part per rank, in whole groups, as equal as they allow (larger ones first).
  std::vector<Input> chunks(int ranks) const;

 private:
  DataRef data_;
  int64_t group_ = 1;
};

// A call that a worker's failure ended while the cluster replaces that worker in place
// (WorkerGroup::fail_rank), or one made to it before its replacement is up: the caller may call
// the replacement once it has rejoined.
struct RankLost : Error {
  using Error::Error;
};

// One rank's reply to one call, or the failure that ended it.
struct PendingCall {
  std::mutex mutex;
  std::condition_variable done;
  bool finished = false;
  std::string error;
  std::optional<core::InMessage> reply;
  int rank = 0;
  std::string method;
  bool counted = true;  // false: a tensor-parallel follower's copy of its leader's reply (awaited, then dropped)
  bool lost = false;    // ended by the worker's failure (RankLost)
  // Waits until `deadline`; throws the worker's error (RankLost when the worker failed), or
  // TimeoutError naming worker and method.
  const core::InMessage& wait(std::chrono::steady_clock::time_point deadline, const std::string& worker,
                              std::chrono::milliseconds timeout);
  void finish(std::optional<core::InMessage> message, std::string failure, bool lost = false);
};

template <class M>
struct Reply {
  std::vector<typename M::Result> ranks;  // the result of every rank called (RankZero: rank 0's)
  core::Batch batch;                      // output rows sent back (RankZero, AllRanks)
  DataRef data;                           // output rows kept on the workers (Keep)
  const typename M::Result& result() const { return ranks.front(); }
};

class WorkerGroup;

template <class M>
class Future {
 public:
  // Waits for every rank called, each within the group's call timeout from now, and collects.
  Reply<M> get();
  // Whether every rank called has answered (or failed).
  bool ready() const {
    for (const auto& c : calls_) {
      std::lock_guard lock(c->mutex);
      if (!c->finished) return false;
    }
    return true;
  }
  // Waits until every rank called has answered or failed (up to the call timeout), so that no
  // rank is still at work when get() throws the first failure.
  Future& settle();

 private:
  friend class WorkerGroup;
  Future(WorkerGroup& group, std::vector<std::shared_ptr<PendingCall>> calls) : group_(&group), calls_(std::move(calls)) {}
  WorkerGroup* group_;
  std::vector<std::shared_ptr<PendingCall>> calls_;
};

class WorkerGroup {
 public:
  // `endpoints[r]` is rank r's RPC address; `name` the group's ("rollout"). With `tp` > 1 each run
  // of `tp` consecutive ranks is one tensor-parallel replica: they take the same rows (DpChunks
  // splits over replicas) and the same OneRank calls (call_on names the replica), and only the
  // replica's first rank's reply counts; the others' are awaited, so their errors still show.
  WorkerGroup(zmq::context_t& context, std::string name, std::vector<std::string> endpoints,
              std::chrono::milliseconds timeout = std::chrono::seconds(60), int tp = 1);
  ~WorkerGroup();
  WorkerGroup(const WorkerGroup&) = delete;
  WorkerGroup& operator=(const WorkerGroup&) = delete;

  const std::string& name() const { return name_; }
  int size() const { return static_cast<int>(endpoints_.size()); }
  int tensor_parallel() const { return tp_; }
  int replicas() const { return size() / tp_; }
  std::string worker(int rank) const { return name_ + "/" + std::to_string(rank); }
  std::chrono::milliseconds timeout() const { return timeout_; }

  template <WorkerMethod M>
  Future<M> call(const M& args, const Input& input = {}) {
    static_assert(M::spec.dispatch != Dispatch::OneRank, "a OneRank method is called with call_on(rank, ...)");
    std::vector<int> ranks;
    std::vector<Input> parts;
    std::vector<bool> counted;
    switch (M::spec.dispatch) {
      case Dispatch::OneRank:
      case Dispatch::RankZero: ranks = {0}, parts = {input}; break;
      case Dispatch::OneToAll:
        for (int r = 0; r < size(); ++r) ranks.push_back(r), parts.push_back(input);
        break;
      case Dispatch::DpChunks: {
        const std::vector<Input> chunks = input.chunks(replicas());
        for (int r = 0; r < size(); ++r) {
          ranks.push_back(r);
          parts.push_back(chunks[static_cast<size_t>(r / tp_)]);
          counted.push_back(r % tp_ == 0);
        }
        break;
      }
    }
    return send(args, ranks, parts, counted);
  }

  // A OneToAll method on one rank alone (a replacement worker's configure and start).
  template <WorkerMethod M>
  Future<M> call_rank(int rank, const M& args, const Input& input = {}) {
    static_assert(M::spec.dispatch == Dispatch::OneToAll, "call_rank is for methods every rank takes");
    if (rank < 0 || rank >= size()) throw Error("worker group " + name_ + " has no rank " + std::to_string(rank));
    return send(args, {rank}, {input});
  }

  // A OneRank method on replica `replica` (its rank, when tp is 1): every rank of the replica
  // takes it; the replica's first rank answers.
  template <WorkerMethod M>
  Future<M> call_on(int replica, const M& args, const Input& input = {}) {
    static_assert(M::spec.dispatch == Dispatch::OneRank, "call_on is for methods declared Dispatch::OneRank");
    if (replica < 0 || replica >= replicas()) throw Error("worker group " + name_ + " has no replica " + std::to_string(replica));
    std::vector<int> ranks;
    std::vector<bool> counted;
    for (int t = 0; t < tp_; ++t) ranks.push_back(replica * tp_ + t), counted.push_back(t == 0);
    return send(args, ranks, std::vector<Input>(ranks.size(), input), counted);
  }

  // Ends every pending and later call with `failure` (a worker of the cluster died).
  void fail(const std::string& failure);
  // Ends the calls pending on `rank` alone with `failure` (the worker is being replaced), and every
  // later one until rank_up() (its replacement is up, at the same address), with RankLost.
  void fail_rank(int rank, const std::string& failure);
  void rank_up(int rank);
  // Tensor bytes sent to and received from this group's workers so far (calls and pulls).
  int64_t transfer_bytes() const;
  // The reference to an object kept by `rank`.
  DataRef kept(int rank, proto::Kept::Reader kept) const;

 private:
  template <WorkerMethod M>
  Future<M> send(const M& args, const std::vector<int>& ranks, const std::vector<Input>& parts, const std::vector<bool>& counted = {}) {
    std::vector<std::shared_ptr<PendingCall>> calls;
    for (size_t i = 0; i < ranks.size(); ++i) {
      auto message = std::make_unique<core::OutMessage>("controller");
      auto req = message->envelope().initRpcRequest();
      req.setMethod(M::spec.name);
      req.setArgsType(codec::type_id<M>());
      codec::write(args, req.initArgs());
      parts[i].data().write(req.initInput(), *message);
      req.setKeep(M::spec.collect == Collect::Keep);
      calls.push_back(submit(ranks[i], std::move(message), M::spec.name, parts[i].data().local_bytes()));
      if (!counted.empty()) calls.back()->counted = counted[i];
    }
    return Future<M>(*this, std::move(calls));
  }

  struct Io;
  std::shared_ptr<PendingCall> submit(int rank, std::unique_ptr<core::OutMessage> message, const std::string& method,
                                      int64_t bytes);
  core::Batch received(const core::InMessage& in, proto::BatchMeta::Reader meta) const;
  template <class M>
  friend class Future;

  std::string name_;
  std::vector<std::string> endpoints_;
  std::chrono::milliseconds timeout_;
  int tp_ = 1;
  std::shared_ptr<Io> io_;
};

template <class M>
Reply<M> Future<M>::get() {
  const auto deadline = std::chrono::steady_clock::now() + group_->timeout();
  Reply<M> out;
  std::vector<core::Batch> rows;
  std::vector<DataRef> kept;
  for (auto& call : calls_) {
    const core::InMessage& in = call->wait(deadline, group_->worker(call->rank), group_->timeout());
    auto r = in.envelope().getRpcReply();
    if (r.getResultType() != codec::type_id<typename M::Result>())
      throw FormatError("worker " + group_->worker(call->rank) + " answered '" + M::spec.name + "' with a result of another type");
    const bool wanted = call->counted && (M::spec.collect != Collect::RankZero || call == calls_.front());
    if (wanted) out.ranks.push_back(codec::read<typename M::Result>(r.getResult()));
    if (r.getOutput().isKept()) {
      DataRef k = group_->kept(call->rank, r.getOutput().getKept());  // released here when not counted
      if (call->counted) kept.push_back(std::move(k));
    } else if (wanted) {
      rows.push_back(group_->received(in, r.getOutput().getBatch()));
    }
  }
  if (M::spec.collect == Collect::Keep) out.data = DataRef::concat(kept);
  else out.batch = concat_padded(std::move(rows));
  return out;
}

template <class M>
Future<M>& Future<M>::settle() {
  const auto deadline = std::chrono::steady_clock::now() + group_->timeout();
  for (const auto& c : calls_) {
    std::unique_lock lock(c->mutex);
    c->done.wait_until(lock, deadline, [&] { return c->finished; });
  }
  return *this;
}

}  // namespace flotilla::runtime
