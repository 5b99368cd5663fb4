#pragma once
// Which prompt groups asynchronous RLHF's sample stream admits (under the staleness bound,
// algorithms/staleness.hpp), which rollout rank generates each and with what seed, which have
// finished, and which train the next version; and the schedule a run records of when each group
// started and each weight sync landed.
//
// Groups are numbered in admission order. Group g belongs to training step g / batch + 1 and is
// prompt p = g % batch of that step: it goes to the rollout rank whose data-parallel chunk of the
// step's batch holds p, with seed `base + step + p' * n` (p' its position in that chunk), as the
// synchronous Generate call seeds the same prompt. With max_staleness 0 a step's groups are
// admitted together, once the weights of the version they train are out, so the stream generates
// exactly what the synchronous dataflow generates.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "actors/lm/methods.hpp"
#include "algorithms/staleness.hpp"

namespace flotilla::controller {

// A run's schedule: where each group started (rollout rank and engine step), before which engine
// step each weight sync landed on each rollout, and which groups trained each version. Every run
// records one (RUN_DIR/schedule.json); a run with `async.deterministic` and `async.schedule`
// follows one, and then generates and trains as the recorded run did, bit for bit.
struct Schedule {
  std::map<int64_t, std::pair<int64_t, int64_t>> starts;  // group -> (rank, engine step)
  std::map<int64_t, std::vector<int64_t>> syncs;          // version -> engine step, per rollout rank
  std::map<int64_t, std::vector<int64_t>> trained;        // version -> its groups, in admission order
  // Versions at which the stream drained for a checkpoint: the groups in flight then finished
  // under the weights they had, and the next sync landed after them.
  std::set<int64_t> drains;

  nlohmann::json to_json() const;
  static Schedule from_json(const nlohmann::json& j, const std::string& source);
  // What rollout `rank` follows, counting engine steps from `from_step`.
  actors::lm::Follow follow(int rank, int64_t from_step) const;
};

class GroupLedger {
 public:
  struct Group {
    int64_t id = 0, example = 0, admitted = 0, rank = 0;
    uint64_t seed = 0;
    int64_t oldest = -1;  // the version of its oldest token, once finished
  };

  // `batch` prompts per step, `n` samples each, over `ranks` rollout workers; at most
  // `max_inflight` groups generating at once (0: as the bound allows); `base` the run's seed base.
  GroupLedger(algorithms::Staleness bound, int64_t n, int ranks, int64_t max_inflight, uint64_t base);

  // Admits the groups the bound and the in-flight cap allow while the trainer is at `version`;
  // `examples(k)` draws the next k example indices. Returns them, in admission order.
  std::vector<Group> admit(int64_t version, const std::function<std::vector<int64_t>(int64_t)>& examples);
  // Group `id` finished; `oldest` is the policy version of its oldest token.
  void finished(int64_t id, int64_t oldest);
  // The groups that train `version` (as Staleness::pick chooses, by admission version), removed
  // from the ledger; empty when no batch can be taken yet.
  std::vector<Group> take(int64_t version);
  // Exactly the groups `ids` (a schedule's), once all have finished; else empty.
  std::vector<Group> take_ids(const std::vector<int64_t>& ids);
  // Groups whose rows were lost, generating again: finished ones (back from ready) or ones
  // taken for a batch the trainer did not use; their admission version stays.
  void again(const std::vector<Group>& groups);
  // The same for groups of this ledger (running, or ready: back to running), by id; returns them.
  std::vector<Group> again(const std::set<int64_t>& ids);
  // The groups generating (or being scored), by id.
  std::vector<Group> generating() const {
    std::vector<Group> out;
    for (const auto& [id, g] : running_) out.push_back(g);
    return out;
  }
  // The rollout rank group `id` generates on.
  int64_t rank_of(int64_t id) const { return place(id, 0, 0).rank; }

  int64_t submitted() const { return next_; }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t ready() const { return static_cast<int64_t>(ready_.size()); }
  const algorithms::Staleness& bound() const { return bound_; }

  // The admission counter and the finished groups, for a checkpoint; nothing may be generating
  // (a checkpoint waits for the stream to drain, and the program saves the finished samples).
  nlohmann::json state() const;
  void restore(const nlohmann::json& s);

 private:
  Group place(int64_t id, int64_t example, int64_t version) const;

  algorithms::Staleness bound_;
  int64_t n_, max_inflight_;
  int ranks_;
  uint64_t base_;
  int64_t next_ = 0;                 // groups admitted so far (the next group's id)
  std::map<int64_t, Group> running_;  // by id
  std::vector<Group> ready_;          // finished, in admission order
};

}  // namespace flotilla::controller
