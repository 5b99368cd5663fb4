#pragma once
// The bookkeeping of asynchronous RLHF's sample stream: which prompt groups are admitted (under
// the staleness bound, algorithms/staleness.hpp), which rollout rank generates each and with what
// seed, which have finished, and which train the next version.
//
// Groups are numbered in admission order. Group g belongs to training step g / batch + 1 and is
// prompt p = g % batch of that step: it goes to the rollout rank whose data-parallel chunk of the
// step's batch holds p, with seed `base + step + p' * n` (p' its position in that chunk), as the
// synchronous Generate call seeds the same prompt. With max_staleness 0 a step's groups are
// admitted together, once the weights of the version they train are out, so the stream generates
// exactly what the synchronous dataflow generates.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "actors/lm/data.hpp"
#include "actors/lm/methods.hpp"
#include "algorithms/staleness.hpp"
#include "runtime/group.hpp"

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

// The stream itself, on the controller: admitted groups go to their rollout rank's continuous
// generation (rollout.submit); finished groups come back by long-polling each rank
// (rollout.collect) and are scored, and get reference log-probs and critic values, at once, a
// collection at a time; take() hands the trainer a batch when the ledger allows one. The rows
// stay on the workers; the controller pulls scores, lengths and versions.
class SampleStream {
 public:
  struct Roles {
    runtime::WorkerGroup* rollout = nullptr;
    runtime::WorkerGroup* reward = nullptr;
    runtime::WorkerGroup* ref = nullptr;     // when the algorithm uses a reference
    runtime::WorkerGroup* critic = nullptr;  // when it trains a critic
  };
  // A batch for the trainer: rows in admission order (`tokens`, `response_mask`,
  // `rollout_log_prob`, `token_version`, and `ref_log_prob`, `values` as the roles give them),
  // their `scores` and `lengths` (`response_length`, `truncated`, `last`), and the groups.
  struct Taken {
    runtime::DataRef rows;
    at::Tensor scores;
    core::Batch lengths;
    std::vector<GroupLedger::Group> groups;
    double waited_s = 0;  // how long take() waited for it
    double reward_s = 0;  // the longest scoring of its collections, from collection to scores
    double ref_s = 0;     // the same for reference log-probs
    // async/staleness_mean, _max and _hist/K: the trainer's `version` minus each group's oldest
    // token's version.
    core::Scalars staleness(int64_t version) const;
  };

  SampleStream(Roles roles, GroupLedger ledger, const actors::lm::Dataset& train, actors::lm::Sampler& sampler,
               actors::lm::Submit sampling, std::chrono::milliseconds timeout);
  ~SampleStream();

  // Submits the groups the ledger admits at `version`.
  void admit(int64_t version);
  // Waits for the batch that trains `version`; throws TimeoutError naming what it waited for.
  Taken take(int64_t version);
  // Waits until nothing is generating or being scored (before a checkpoint).
  void drain();

  // The finished groups not yet trained, every field of their rows plus `scores`, `group` and
  // `oldest_version`, written to `file` (safetensors) for a checkpoint (after drain(); nothing
  // when there are none); and the same rows back into a new stream whose ledger was restored from
  // the same checkpoint.
  void save_ready(const std::filesystem::path& file) const;
  void restore_ready(const std::filesystem::path& file);

  GroupLedger& ledger() { return ledger_; }
  // What this run did so far (recorded as it goes), and a schedule to follow instead of timing:
  // each rollout rank r counts its engine steps from from_steps[r].
  Schedule& schedule() { return recorded_; }
  // The schedule recorded so far, to `file` (RUN_DIR/schedule.json: what async.schedule takes to
  // repeat this run).
  void save_schedule(const std::filesystem::path& file) const;
  // The schedule the rollouts follow, if any.
  const Schedule* following() const { return replay_ ? &*replay_ : nullptr; }
  void follow(const Schedule& s, const std::vector<int64_t>& from_steps);
  // Responses scored 0 because the reward command failed, so far.
  int64_t reward_errors() const { return reward_errors_; }

 private:
  struct Arrival;  // one collection of finished groups, being scored
  bool pump();     // one round of polling; true when something moved
  bool poll(size_t rank);
  std::unique_ptr<Arrival> arrival_of(const runtime::DataRef& rows) const;  // its groups, read from the rows
  std::unique_ptr<Arrival> merge_held() const;
  void issue(Arrival& a);  // scoring, reference, values
  bool complete(Arrival& a, std::chrono::steady_clock::time_point now);
  void wait_until(const std::function<bool()>& done, const std::string& what);
  std::string state_str() const;

  Roles roles_;
  GroupLedger ledger_;
  const actors::lm::Dataset& train_;
  actors::lm::Sampler& sampler_;
  actors::lm::Submit sampling_;
  std::chrono::milliseconds timeout_;
  std::vector<std::optional<runtime::Future<actors::lm::CollectGroups>>> polls_;  // one per rollout rank
  std::vector<std::unique_ptr<Arrival>> arrivals_;
  std::vector<std::unique_ptr<Arrival>> held_;  // synchronous: collected, waiting for the rest of the step
  int64_t reward_errors_ = 0;
  Schedule recorded_;
  std::optional<Schedule> replay_;
};

}  // namespace flotilla::controller
