#pragma once
// The RLHF program's workers (controller/programs/rlhf.cpp): the groups that host its roles, the
// weight sync from the actor to the rollouts, and the replacement in place of the workers whose
// state the run can rebuild. In split placement a failed rollout, reward or reference worker
// (one of a group without tensor parallelism, in a run that does not repeat a recorded schedule)
// is started again: configured, started, and a rollout given the actor's current weights. The
// actor and critic hold what they trained, so their failure (and any failure of a colocated
// worker) brings the run back to its last checkpoint instead (RunRestarts).
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "actors/lm/config.hpp"
#include "actors/lm/data.hpp"
#include "actors/lm/methods.hpp"
#include "controller/cluster/cluster.hpp"
#include "controller/run/program.hpp"

namespace flotilla::controller {

class RlhfWorkers {
 public:
  RlhfWorkers(const actors::lm::RlhfConfig& c, const Experiment& e) : c_(c), experiment_(e) {}

  // The groups to start (logged), and the cluster's options: `restarts` says what an earlier
  // cluster of the run used.
  std::vector<WorkerSpec> specs() const;
  ClusterOptions options(const RunRestarts& restarts, double call_timeout_s) const;
  // The groups whose failed workers are replaced in place.
  std::set<std::string> replaceable() const;

  // The cluster the program runs on now, and the config its workers take; none between clusters.
  void attach(Cluster* cluster, std::string config) { cluster_ = cluster, config_ = std::move(config); }
  Cluster& cluster() { return *cluster_; }
  runtime::WorkerGroup& group(const std::string& role) { return cluster_->group(c_.group_of(role)); }
  // The status of each rollout replica (a tensor-parallel replica's ranks step in lockstep; its
  // first rank speaks for it).
  std::vector<runtime::Status> rollout_replicas_polled();
  // Every rollout rank (or `rank` alone) to the actor's `version`: in split placement each actor
  // rank keeps its buffer of the new weights and each rollout rank pulls its slice from them
  // (worker to worker, by the reshard plan between the two layouts); the buffers go when the sync
  // is done. A colocated rollout generates with the actor's weights.
  std::vector<actors::lm::Synced> sync_weights(int64_t version, std::optional<int> rank = std::nullopt);
  // `val/accuracy` on the first `n` examples of `val`: of the reward head on preference pairs
  // (chosen scored above rejected), or of greedy answers (stopping at `eos`) checked by the task's
  // own rule whatever the training reward, with `val/response_length`. The rollouts must have
  // generated with the actor's `version`.
  core::Scalars held_out(const actors::lm::Dataset& val, size_t n, int32_t eos, int64_t version);

  // Waits for the workers being replaced and brings each replacement in, its rollout at the
  // actor's `version`; returns them (none when no worker failed). A failure the cluster does not
  // replace throws WorkerFailure.
  std::vector<Replacement> bring_back(int64_t version);

 private:
  const actors::lm::RlhfConfig& c_;
  const Experiment& experiment_;
  Cluster* cluster_ = nullptr;
  std::string config_;
};

}  // namespace flotilla::controller
