#pragma once
// How old the samples a trainer learns from may be. A sample's staleness is the trainer's version
// when it trains on the sample minus the version of the policy that made it (its oldest token's).
// The bound is kept by construction: work starts only while `submitted < (max + version + 1) *
// batch` (AReaL's admission rule), and a batch is taken, oldest units first, only when what it
// leaves behind can still be trained in time (a unit admitted at version a trains version a + max
// at the latest). Used by asynchronous RLHF and by the distributed RL trainer.
#include <cstdint>
#include <string>
#include <vector>

namespace flotilla::algorithms {

class Staleness {
 public:
  static constexpr int64_t kUnbounded = -1;
  // `max` versions (kUnbounded: no bound); `batch` units (prompts, fragments) per trainer version.
  Staleness(int64_t max, int64_t batch);

  bool bounded() const { return max_ >= 0; }
  int64_t max() const { return max_; }
  int64_t batch() const { return batch_; }
  // How many more units may start while the trainer is at `version` and `submitted` have started.
  int64_t admissible(int64_t version, int64_t submitted) const;
  // Whether a unit made at version `made` may still train the trainer at version `version`.
  bool fresh(int64_t made, int64_t version) const;
  // The units that train `version`: positions in `ready` (the admission versions of the finished
  // units, in admission order), the oldest first, `batch` in all. Empty when the batch cannot be
  // made yet: fewer than `batch` are ready, or a unit still running (`running`: their admission
  // versions) would be left with more old units than the later batches can take before they
  // become too stale (a due unit still running, at the least).
  std::vector<size_t> pick(const std::vector<int64_t>& ready, const std::vector<int64_t>& running, int64_t version) const;
  // "2", or "unbounded".
  std::string str() const;

 private:
  int64_t max_, batch_;
};

}  // namespace flotilla::algorithms
