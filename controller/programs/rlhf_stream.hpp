#pragma once
// Asynchronous RLHF's sample stream on the controller: the groups the ledger admits
// (rlhf_ledger.hpp) generate on the rollout workers, come back, are scored and get reference
// log-probs and values, and train the version the ledger says.
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
#include "controller/programs/rlhf_ledger.hpp"
#include "runtime/group.hpp"

namespace flotilla::controller {

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

  // Worker `rank` of group `group` was replaced (Cluster::replaced): what it held is gone. Groups
  // whose rows were on a replaced rollout are generated again (the same prompt, seed and admission
  // version, so every prompt still trains once and within the staleness bound), and collections
  // a replaced reward or reference worker was scoring, or whose reference log-probs it held, are
  // scored again.
  void replaced(const std::string& group, int rank);
  // Groups take() handed out for `version` whose rows were lost before the trainer used them:
  // generated again, for the same version.
  void again(const std::vector<GroupLedger::Group>& groups, int64_t version);
  // What the stream calls when one of its calls fails: it brings back the workers being replaced
  // (calling replaced() for each) and returns how many, none when no worker failed (the error is
  // then thrown on).
  void on_loss(std::function<size_t()> recover) { recover_ = std::move(recover); }

 private:
  struct Arrival;  // one collection of finished groups, being scored
  bool pump();     // one round of polling; true when something moved
  void submit();   // the admitted groups not sent yet, to their rollout ranks
  void recover();  // in a catch block: brings back failed workers, or throws the error on
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
  std::vector<GroupLedger::Group> unsent_;  // admitted (or to generate again), not submitted yet
  std::function<size_t()> recover_;
  int64_t reward_errors_ = 0;
  Schedule recorded_;
  std::optional<Schedule> replay_;
};

}  // namespace flotilla::controller
