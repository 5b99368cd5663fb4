#pragma once
// A rollout's continuous generation, for the RLHF dataflow. Prompts queued by Submit start as
// soon as the rollout holds weights of the version they were admitted at (never older); the
// engine keeps its batch full; each prompt's group of samples, once all are done, waits for
// Collect. A weight sync lands between two engine steps, and the sequences in flight then go on
// with the new weights ("continue"), go on with their KV cache recomputed under them
// ("recompute"), or start again from the prompt ("abort").
//
// Engine steps are counted. Each group reports the step it started at and each sync the step it
// landed before, so a run's schedule can be recorded; a rollout given a schedule (follow())
// starts every group and lands every sync at its recorded step, which makes the generation repeat
// bit for bit.
//
// A tensor-parallel replica's ranks run one engine in lockstep (Lockstep): before each step the
// replica's first rank (the leader) tells the others what the step admits, how a sync restarts
// the sequences in flight, and which weights version it runs; a follower takes the same prompts
// (the controller sends them to every rank of the replica), waits for them and for those
// weights, and steps with it. Only the leader publishes groups.
#include <ATen/core/Tensor.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "actors/lm/config.hpp"
#include "actors/lm/methods.hpp"
#include "actors/lm/rollout.hpp"
#include "core/batch.hpp"
#include "runtime/lifecycle.hpp"

namespace flotilla::actors::lm {

struct Lockstep {
  bool leader = true;
  // The leader's tensor into every rank's, in place (a collective of the replica's ranks that
  // nothing else uses). An idle leader sends a heartbeat every `heartbeat`, so a follower's wait
  // never outlasts the collective's timeout.
  std::function<void(at::Tensor&)> broadcast;
  std::chrono::milliseconds heartbeat{10000};
};

class RolloutStream {
 public:
  // `lockstep`: this rank's part in a tensor-parallel replica (null: a replica of one rank).
  RolloutStream(RolloutWeights& weights, const RlhfConfig& config, runtime::Lifecycle& life, const Lockstep* lockstep = nullptr);
  ~RolloutStream();

  // Queues the prompts of `rows` (the Submit method's input).
  void submit(const Submit& s, const core::Batch& rows);
  // The groups finished since the last call, as rows; waits up to `wait` for one.
  core::Batch collect(std::chrono::milliseconds wait);
  // Counts engine steps from `f.from_step` and, when it carries a schedule, follows it.
  void follow(const Follow& f);
  // Before a sync of `version` takes the weights: with a schedule, waits until the generation has
  // reached the step the sync landed before in the recorded run.
  void await_turn(int64_t version);
  // Marks how the sequences in flight take the weights a sync just installed (called with
  // weights.mutex held, so between two engine steps); returns how many were in flight and the
  // step the weights land before.
  struct Landed {
    int64_t inflight = 0, step = 0;
  };
  Landed on_update(const std::string& mode);
  // The generation loop: runs until the worker stops.
  void run();
  // Wakes the loop and every waiting call (new weights, or the worker is stopping).
  void wake();
  core::Scalars counters() const;

 private:
  struct Prompt {
    std::vector<int32_t> tokens;
    int64_t group = 0, example = 0, admitted = 0, start_step = -1;
    uint64_t seed = 0;
    models::SamplingParams sampling;
    int n = 1;
    int64_t width = 0;
  };
  // A group in the engine: its samples as they finish, and what a restart must resubmit.
  struct Running {
    Prompt prompt;
    std::vector<Sample> done;     // by sample index
    std::vector<bool> finished;
    std::vector<Sample> partial;  // what an unfinished sample has generated before a restart
    std::vector<int> slot;        // the engine request's sample k is this group's slot[k]
    int attempt = 0;
    std::string restart;          // a sync's recompute or abort, applied after this step
  };

  bool wait_for_work();                            // false when the worker stops
  bool ready_to_step() const;                      // with mutex_ held
  // The prompts that start at this step (the groups named, for a follower); returns their groups.
  std::vector<int64_t> admit(models::GenerationEngine& engine, const std::vector<int64_t>* named = nullptr);
  void mirror();                                   // a follower's loop
  void start(models::GenerationEngine& engine, Running& r, const std::vector<int>& samples, bool resume);
  // Takes the engine's finished samples into their groups; returns the groups now whole, to be
  // published (after the engine goes, when it has nothing left to generate: whoever collects the
  // groups next may need the memory its KV cache holds, a colocated update for one).
  std::vector<Running> finish(models::GenerationEngine& engine, std::vector<models::Generation> gens);
  void finish_step(std::unique_ptr<models::GenerationEngine>& engine, bool stepped);
  // Applies a recompute or abort (the pending one, or a follower's `given`); returns it.
  std::string restart_inflight(models::GenerationEngine& engine, const std::string* given = nullptr);
  void send_header(int64_t kind, int64_t version, const std::string& action, const std::vector<int64_t>& groups);
  void publish(Running& r);                        // a whole group, to the collectors

  RolloutWeights& weights_;
  const RlhfConfig& c_;
  runtime::Lifecycle& life_;
  const Lockstep* lockstep_;
  mutable std::mutex mutex_;  // everything below except running_
  std::condition_variable work_, finished_, stepped_;
  std::deque<Prompt> inbox_;
  std::vector<core::Batch> done_;
  std::string action_;                  // "" or the pending on_update mode (recompute, abort)
  int64_t step_ = 0;                    // engine steps so far (the next step's index)
  bool replay_ = false;                 // following a recorded schedule
  std::map<int64_t, std::vector<int64_t>> starts_;  // replay: step -> the groups that start before it
  std::map<int64_t, int64_t> sync_at_;  // replay: version -> the step its weights land before
  std::map<int64_t, Running> running_;  // by group id; the loop's own
  int64_t tokens_ = 0, groups_done_ = 0, inflight_ = 0;
  double idle_s_ = 0;
};

}  // namespace flotilla::actors::lm
