#pragma once
// Episode replay for value-based multi-agent learners (IQL, VDN, QMIX): whole episodes padded to
// the env's time limit T, as PyMARL stores them, so a sampled batch trains on full trajectories.
//
// An episode batch (core::Batch) holds, for B episodes:
//   obs [B, T+1, A, O]  state [B, T+1, S]  avail [B, T+1, A, K] (bool)
//   action [B, T, A] (int64)  reward [B, T, A]  terminated [B, T]  filled [B, T] (1 on real steps)
// Step t's next observation is at t + 1; after the last real step the entries are padding.
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/batch.hpp"

namespace at {
class Generator;
}

namespace flotilla::algorithms {

struct EpisodeShape {
  int64_t max_steps = 0;  // T
  int64_t agents = 0, obs_dim = 0, state_dim = 0, actions = 0;
};

// Builds episodes from a batch of N envs stepped together with auto-reset.
class EpisodeRecorder {
 public:
  EpisodeRecorder(EpisodeShape shape, int64_t num_envs);
  // The first observations after a reset of every env.
  void begin(const at::Tensor& obs, const at::Tensor& state, const at::Tensor& avail);
  // Records one step of every env. `done` [N] marks envs whose episode ended (their next
  // observation is final_*; obs/state/avail already belong to the next episode). Returns the
  // episodes that ended, as an episode batch (empty when none did).
  core::Batch step(const at::Tensor& action, const at::Tensor& reward, const at::Tensor& terminated,
                   const at::Tensor& done, const at::Tensor& obs, const at::Tensor& state, const at::Tensor& avail,
                   const at::Tensor& final_obs, const at::Tensor& final_state, const at::Tensor& final_avail);

 private:
  void write_first(const at::Tensor& envs, const at::Tensor& obs, const at::Tensor& state, const at::Tensor& avail);

  EpisodeShape shape_;
  int64_t num_envs_;
  at::Tensor t_;  // [N] int64, the step each env is at
  core::Batch current_;
};

// A ring buffer of episodes; the oldest are overwritten when full.
class EpisodeReplay {
 public:
  EpisodeReplay(EpisodeShape shape, int64_t capacity);
  void add(const core::Batch& episodes);
  // `batch` episodes drawn uniformly with replacement.
  core::Batch sample(int64_t batch, at::Generator& gen) const;
  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }
  int64_t episodes_added() const { return added_; }

 private:
  int64_t capacity_;
  int64_t size_ = 0, next_ = 0, added_ = 0;
  core::Batch storage_;
};

// An empty episode batch of `n` episodes with the right shapes (zeros).
core::Batch empty_episodes(const EpisodeShape& shape, int64_t n);

}  // namespace flotilla::algorithms
