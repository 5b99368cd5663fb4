#pragma once
// WorkerGroup: the controller's handle to the ranks of one role. call() sends a method to the
// ranks as the dispatch mode says and returns futures; collect() gathers them the same way.
// Every wait has a timeout and says which worker and method it waited for.
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "actors/worker.hpp"

namespace zmq {
class context_t;
}

namespace flotilla::actors {

enum class Dispatch {
  OneToAll,  // the same batch to every rank; collect returns every reply
  DpChunk,   // rank r gets chunk r of the batch (uneven sizes allowed); collect concatenates
  RankZero,  // rank 0 only
};

class WorkerGroup {
 public:
  // `endpoints[r]` is rank r's RPC address.
  WorkerGroup(zmq::context_t& context, std::string role, std::vector<std::string> endpoints,
              std::chrono::milliseconds timeout = std::chrono::seconds(60));
  ~WorkerGroup();
  WorkerGroup(const WorkerGroup&) = delete;
  WorkerGroup& operator=(const WorkerGroup&) = delete;

  const std::string& role() const { return role_; }
  int size() const { return static_cast<int>(endpoints_.size()); }

  // One future per rank called (all ranks, or rank 0 for RankZero). A failed call's future
  // throws an Error naming the worker, rank and method.
  std::vector<std::future<CallResult>> call(const std::string& method, const std::string& args = "",
                                            const core::Batch& batch = {}, Dispatch dispatch = Dispatch::OneToAll);
  // Rank r gets parts[r] (the caller split the batch, e.g. keeping pairs or groups together);
  // collect with DpChunk.
  std::vector<std::future<CallResult>> call_parts(const std::string& method, const std::string& args,
                                                  const std::vector<core::Batch>& parts);
  // Every rank's reply, in rank order (each within the group's timeout).
  std::vector<CallResult> collect_all(std::vector<std::future<CallResult>>& futures, const std::string& method);
  // Waits for the futures (each within the group's timeout): DpChunk concatenates the batches,
  // the other modes return rank 0's result and batch.
  CallResult collect(std::vector<std::future<CallResult>>& futures, const std::string& method, Dispatch dispatch);
  CallResult run(const std::string& method, const std::string& args = "", const core::Batch& batch = {},
                 Dispatch dispatch = Dispatch::OneToAll);

 private:
  struct Io;
  std::string role_;
  std::vector<std::string> endpoints_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<Io> io_;
};

}  // namespace flotilla::actors
