#pragma once
// Cluster: the controller's view of its worker processes on this machine. It starts them (this
// executable's `worker` command), waits for each to publish its RPC address in the name service,
// builds a WorkerGroup per role, and watches them on a Boost.Asio loop: a worker that exits or
// misses heartbeats for longer than the timeout is reported by check(), naming it. On
// destruction every worker is stopped and reaped; none outlives the controller (workers also ask
// the kernel to end them if the controller dies).
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/worker_group.hpp"
#include "core/metrics.hpp"
#include "core/wire.hpp"

namespace zmq {
class socket_t;
}

namespace flotilla::controller {

struct WorkerSpec {
  std::string role;
  int count = 1;
};

struct ClusterOptions {
  std::filesystem::path executable = "/proc/self/exe";  // the flotilla binary that runs workers
  std::chrono::milliseconds heartbeat{200};
  std::chrono::milliseconds heartbeat_timeout{3000};
  std::chrono::milliseconds start_timeout{60000};
  std::chrono::milliseconds call_timeout{60000};
};

class Cluster {
 public:
  Cluster(const std::filesystem::path& run_dir, std::string experiment, const std::vector<WorkerSpec>& workers,
          ClusterOptions options = {});
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  actors::WorkerGroup& group(const std::string& role);
  // group(role).run(...), watching the workers while it waits: a worker that dies during the call
  // is reported at once, naming it, instead of after the call's timeout.
  actors::CallResult run(const std::string& role, const std::string& method, const std::string& args = "",
                         const core::Batch& batch = {}, actors::Dispatch dispatch = actors::Dispatch::OneToAll);

  // Waits for calls made with group(role).call(...), watching the workers as run() does; every
  // rank's reply in rank order.
  std::vector<actors::CallResult> wait(const std::string& role, std::vector<std::future<actors::CallResult>>& futures,
                                       const std::string& method);

  struct WorkerMetrics {
    std::string worker;
    int64_t step;
    core::Scalars values;
  };
  // Metrics rows workers pushed since the last call, waiting up to `wait` for the first.
  std::vector<WorkerMetrics> metrics(std::chrono::milliseconds wait);
  // Throws Error naming the first worker that exited or went silent.
  void check() const;
  pid_t pid(const std::string& role, int rank) const;

 private:
  struct Monitor;
  std::string experiment_, trial_;
  ClusterOptions options_;
  std::filesystem::path name_dir_;
  std::unique_ptr<Monitor> monitor_;
  std::unique_ptr<zmq::socket_t> metrics_;  // used by the controller's own thread only
  core::DropCounter drops_;
  std::map<std::string, std::unique_ptr<actors::WorkerGroup>> groups_;
};

}  // namespace flotilla::controller
