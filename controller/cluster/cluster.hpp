#pragma once
// Cluster: the controller's view of its worker processes. It starts them (this executable's
// `worker` command, through core::Process: a child process, or under Slurm the srun of a job step
// that runs it on its node, controller/cluster/launcher.hpp), learns each one's address from its
// first heartbeat, builds a WorkerGroup per group, and watches them on a Boost.Asio event loop:
// a worker that exits is reported the moment the kernel says so, one that misses heartbeats for
// longer than the timeout when its timer fires. Either way every pending call on every group ends
// at once with an error naming the worker, and check() throws it. On destruction every worker is
// stopped and reaped; none outlives the controller (workers also ask the kernel to end them if
// the controller dies).
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "controller/cluster/launcher.hpp"
#include "core/metrics.hpp"
#include "runtime/group.hpp"

namespace flotilla::controller {

struct WorkerSpec {
  std::string group;
  int count = 1;
  int tp = 1;  // ranks per tensor-parallel replica (runtime::WorkerGroup)
};

// A worker's failure, as check() throws it. `restore`: the group's policy is restart, but the
// role's state cannot be rebuilt in place, so the run goes back to its last checkpoint.
struct WorkerFailure : Error {
  WorkerFailure(const std::string& what, std::string group, int rank, bool restore)
      : Error(what), group(std::move(group)), rank(rank), restore(restore) {}
  std::string group;
  int rank = 0;
  bool restore = false;
  std::chrono::steady_clock::time_point detected = std::chrono::steady_clock::now();
};

// A failed worker whose replacement is up (it sent its first heartbeat): the program configures
// and starts it, then calls Cluster::rejoined (also after bringing a run back to its checkpoint).
struct Replacement {
  std::string group;
  int rank = 0;
  std::string why;  // the failure
  std::chrono::steady_clock::time_point detected;
};

// Every group named under launcher.groups and fault.groups must be one of the run's `groups`;
// throws ConfigError naming the section and the group.
void check_named_groups(const std::vector<std::string>& groups, const LauncherConfig& launcher, const FaultConfig& fault);

struct ClusterOptions {
  std::filesystem::path executable = "/proc/self/exe";  // the flotilla binary that runs workers
  std::chrono::milliseconds heartbeat{200};
  std::chrono::milliseconds heartbeat_timeout{3000};
  std::chrono::milliseconds start_timeout{60000};
  std::chrono::milliseconds call_timeout{60000};
  LauncherConfig launcher;  // kind slurm: every worker a job step of the allocation this runs in
  FaultConfig fault;        // what a worker's failure does, per group
  std::set<std::string> replaceable;  // groups whose failed workers are replaced in place
  std::map<std::string, int> restarts;  // by group: those used already (by an earlier cluster of the run)
  // Brought back to a checkpoint after a failure: a worker that fails while this cluster starts
  // brings it back again (the group's restarts permitting), where at the run's first start it
  // stops the run.
  bool restoring = false;
};

class Cluster {
 public:
  Cluster(const std::filesystem::path& run_dir, std::string experiment, const std::vector<WorkerSpec>& workers,
          ClusterOptions options = {});
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  runtime::WorkerGroup& group(const std::string& name);
  // Calls M on group `name` and waits for the reply.
  template <runtime::WorkerMethod M>
  runtime::Reply<M> run(const std::string& name, const M& args, const runtime::Input& input = {}) {
    return group(name).call(args, input).get();
  }

  struct WorkerMetrics {
    std::string worker;
    int64_t step;
    core::Scalars values;
  };
  // Metrics rows workers pushed since the last call, waiting up to `wait` for the first; returns
  // at once when a worker fails (check() then throws) or wake() is called.
  std::vector<WorkerMetrics> metrics(std::chrono::milliseconds wait);
  // Ends a metrics() wait, e.g. on Ctrl-C.
  void wake();
  // Throws WorkerFailure naming the first worker that exited or went silent and was not replaced.
  void check() const;
  // Replacements that came up since the last call (metrics() also returns when one does).
  std::vector<Replacement> replaced();
  // The program has configured and started `r`: logged, and written to RUN_DIR/faults.jsonl.
  void rejoined(const Replacement& r);
  // Worker failures so far (replaced or not), and replacements not rejoined yet.
  int64_t failures() const;
  // The latest failure of a worker being replaced in place, while its replacement has not
  // rejoined or for `window` after: a call of the program's that ended on it, at a point where the
  // program does not retry (starting, restoring), explains the error that ended the run.
  std::optional<WorkerFailure> recent_replacement(std::chrono::seconds window) const;
  // Connections the run's sockets refused (CURVE): the workers' and this process's.
  int64_t refused() const;
  int replacing() const;
  // Restarts used by group (fault.max_restarts bounds each), including options.restarts.
  std::map<std::string, int> restarts() const;
  pid_t pid(const std::string& group, int rank) const;
  // Tensor bytes sent to and received from every worker group so far.
  int64_t transfer_bytes() const;

 private:
  struct Monitor;
  std::string experiment_, trial_;
  ClusterOptions options_;
  std::filesystem::path name_dir_;
  std::unique_ptr<Monitor> monitor_;
  std::map<std::string, std::unique_ptr<runtime::WorkerGroup>> groups_;
};

// The restarts of one run across its clusters (bringing a run back to its last checkpoint builds
// a new cluster): what each group has used, and the failure the run is coming back from.
class RunRestarts {
 public:
  // Runs `attempt` until it returns. When a worker's failure ended it and the fault policy restores
  // from it, waits the group's backoff, then `restore` brings the program back to its last
  // checkpoint and `attempt` runs again; any other error is thrown on.
  template <class Attempt, class Restore>
  auto run(const FaultConfig& fault, Attempt attempt, Restore restore) {
    while (true) {
      std::optional<WorkerFailure> f;
      try {
        return attempt();
      } catch (const WorkerFailure& e) {
        f = e;
      } catch (const Error& e) {
        // A call that a worker's failure ended throws that failure as a plain Error: the cluster
        // it came from said which (Scope). One that a replaced worker's failure ended where the
        // program does not retry (while it starts or restores) brings the run back to its
        // checkpoint too; an error with no failure behind it ends the run.
        f = std::exchange(failure_, std::nullopt);
        if (auto r = std::exchange(replaced_, std::nullopt); !f && r)
          f = WorkerFailure(std::string(e.what()) == r->what() ? r->what() : std::string(r->what()) + ", and then: " + e.what(),
                            r->group, r->rank, true);
        if (!f) throw;
      }
      failure_.reset();
      replaced_.reset();
      if (!f->restore) throw *f;
      back_to_checkpoint(*f, fault);
      restore();
    }
  }
  // A new cluster of the run: it starts from the restarts used so far, and on destruction hands
  // back its count (construct after the Cluster, so it goes first).
  struct Scope {
    Scope(RunRestarts& r, Cluster& c) : restarts(r), cluster(c) {}
    ~Scope() {
      restarts.used_ = cluster.restarts();
      try {
        cluster.check();
      } catch (const WorkerFailure& f) {
        restarts.failure_ = f;
        return;
      }
      restarts.replaced_ = cluster.recent_replacement(std::chrono::seconds(30));
    }
    RunRestarts& restarts;
    Cluster& cluster;
  };
  void prepare(ClusterOptions& options) const {
    options.restarts = used_;
    options.restoring = restored_.has_value();
  }
  // The cluster's workers run again: a restore is logged as the failed worker's return.
  void up(Cluster& cluster);
  int total(const Cluster& cluster) const;

 private:
  void back_to_checkpoint(const WorkerFailure& f, const FaultConfig& fault);
  std::map<std::string, int> used_;
  std::optional<Replacement> restored_;
  std::optional<WorkerFailure> failure_;  // the one that ended the last cluster
  std::optional<WorkerFailure> replaced_;  // its latest replaced worker's, when none ended it
};

}  // namespace flotilla::controller
