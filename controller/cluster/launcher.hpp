#pragma once
// Where an experiment's worker processes run: `launcher: {kind: local}` (child processes of the
// controller, the default) or `launcher: {kind: slurm, ...}`. Under Slurm, `flotilla run` on a
// login node submits a batch job whose script runs the controller on the allocation's first node;
// the controller starts every worker as a job step of its own (`srun --nodes=1 --ntasks=1
// --nodelist=NODE`), so a worker's exit is heard the moment its step ends and is reported with
// its name and node, and the controller decides which node each worker runs on (groups spread
// over the nodes or packed on one). Workers bind to their node's address; the name service and
// the c10d stores live in the run directory, which must be on a file system every node shares.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/process.hpp"

namespace flotilla::core {
class ConfigView;
}

namespace flotilla::controller {

struct LauncherConfig {
  std::string kind = "local";  // local | slurm
  // slurm: the job's partition, account, time limit (sbatch --time), nodes, and options passed to
  // sbatch as they are (e.g. "--qos=high").
  std::string partition, account, time;
  int nodes = 1;
  std::vector<std::string> sbatch_args;
  // The network interface whose IPv4 address the controller and workers bind ("" = the first
  // one that is up and not loopback).
  std::string interface;
  double start_timeout_s = 120;  // from a worker's step start to its first heartbeat
  // Per worker group (`groups: [{group: trainer, cpus: 2, gpus: 1, mem_mb: 8000, placement: pack}]`,
  // by the group's name: trainer, env_actor, actor, rollout, colocated, ...).
  struct Group {
    int cpus = 1;       // per worker
    int gpus = 0;       // per worker (srun --gpus-per-task; Slurm sets CUDA_VISIBLE_DEVICES)
    int mem_mb = 0;     // per worker, 0 = the node's share
    std::string placement = "spread";  // spread: rank r on node r mod nodes; pack: the group on one node
  };
  std::map<std::string, Group> groups;

  static LauncherConfig read(const core::ConfigView& launcher);
  bool slurm() const { return kind == "slurm"; }
  Group group(const std::string& name) const;
};

// What the controller does when a worker fails (`fault:` in the experiment; `fault.groups` sets a
// group's own policy). A worker is failed when its process exits or it sends no heartbeat for
// `heartbeat_timeout_ms` (a stopped or unreachable one is then killed). `restart` replaces it:
// the same group and rank, started again at the same addresses, so its peers' connections come
// back on their own; a role whose state cannot be rebuilt from its peers (an RL trainer, an RLHF
// actor or critic, any worker of a deterministic run) instead brings the whole run back to its
// last checkpoint. `stop` ends the run with the failure, as a run without this section did.
struct FaultPolicy {
  bool restart = true;     // on_worker_failure: restart | stop
  int max_restarts = 10;   // replacements of the group's workers over the run; the next failure stops it
  double backoff_s = 1.0;  // restart_backoff_s: from the failure to starting the replacement
};
struct FaultConfig {
  int64_t heartbeat_timeout_ms = 1800;  // with a heartbeat every 200 ms: a stopped worker is found within 2 s
  FaultPolicy defaults;
  std::map<std::string, FaultPolicy> groups;
  static FaultConfig read(const core::ConfigView& fault);
  const FaultPolicy& group(const std::string& name) const;
};

namespace slurm {

// The node names of the allocation this process runs in (SLURM_JOB_NODELIST, expanded by
// scontrol); throws naming what is missing outside an allocation.
std::vector<std::string> allocation_nodes();

// Which node each rank of each group runs on: `counts` are the groups' worker counts in start
// order, `nodes` the allocation's nodes. Spread groups go round-robin from where the last group
// ended; a packed group takes the next node whole.
std::map<std::string, std::vector<std::string>> place(const LauncherConfig& c, const std::vector<std::pair<std::string, int>>& counts,
                                                      const std::vector<std::string>& nodes);

// The job step that runs one worker: srun with the group's resources on `node`, its output in
// `log`, running `program` with `args`.
core::ProcessSpec worker_step(const LauncherConfig& c, const std::string& group, const std::string& node,
                              const std::filesystem::path& log, const core::ProcessSpec& program);

// Submits `config` (a run directory's config.yaml) as a batch job that runs its controller in
// `run_dir`; returns the job id. The sbatch resources cover every node's workers plus the
// controller on the first node.
std::string submit(const LauncherConfig& c, const std::string& job_name, const std::filesystem::path& run_dir,
                   const std::vector<std::pair<std::string, int>>& counts, const std::vector<std::string>& controller_args);

// The job's state as squeue says it (PENDING, RUNNING, ...), or "" once it has left the queue.
std::string job_state(const std::string& job);
// Asks the job's controller to stop after its current step (SIGTERM to the batch script, which is
// the controller); with `now`, cancels the whole job.
void stop(const std::string& job, bool now);

}  // namespace slurm
}  // namespace flotilla::controller
