#pragma once
// VecEnv: N environments stepped together into tensors the env owns (shape [N, ...]), with
// auto-reset: an env whose episode ends is reset inside step(), its last observation kept in
// final_obs() and its episode return and length reported, so a learner can bootstrap truncated
// episodes and not terminated ones.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "envs/space.hpp"

namespace flotilla::envs {

// The parts of an observation row of a multi-agent env seen as agent rows (envs/multi_agent.hpp);
// all zero for single-agent envs, whose whole row is the observation.
struct ObsLayout {
  int64_t obs_dim = 0;     // [0, obs_dim): the agent's own observation
  int64_t agents = 0;      // [obs_dim, obs_dim + agents): the agent's one-hot id
  int64_t state_dim = 0;   // then the global state
  int64_t mask_dim = 0;    // then the action mask, 1 where available (0: no mask)
  bool multi_agent() const { return agents > 0; }
  int64_t actor_dim() const { return obs_dim + agents; }          // what a decentralized policy reads
  int64_t critic_offset() const { return obs_dim; }               // agent id + global state
  int64_t critic_dim() const { return agents + state_dim; }
  int64_t mask_offset() const { return obs_dim + agents + state_dim; }
};

struct EnvSpec {
  std::string id;        // Gymnasium's id, e.g. "CartPole-v1"
  std::string summary;   // one line for `flotilla env list`
  Space observation_space;
  Space action_space;
  int32_t max_episode_steps = 0;
  std::vector<std::string> state_layout;  // the physical state, in Gymnasium's env.unwrapped.state order
  ObsLayout layout{};        // multi-agent envs as agent rows only
  bool has_outcome = false;  // episodes are won or lost: episode_won() is filled
};

// Episodes that ended at one step, for statistics.
struct FinishedEpisodes {
  std::vector<double> returns, lengths, wins;  // wins only for envs with an outcome
  void append(const FinishedEpisodes& more);
};

// Episodes that ended where `done` [N] is set. `agents` > 1 means the N rows are env-major agent
// rows (a multi-agent env's): an env's episode counts once, with its agents' mean return.
FinishedEpisodes finished_episodes(const at::Tensor& done, const at::Tensor& episode_return,
                                   const at::Tensor& episode_length, const at::Tensor& won, int64_t agents);

// Checkpoint helpers shared by the batched env types: a batch's buffers by name, plus its seed.
// The tensors are handles: copying into a const one writes the buffer it shares.
using NamedBuffers = std::vector<std::pair<std::string, const at::Tensor*>>;
// A copy of the buffers (with the seed), so the env may step on while the copy is written.
std::vector<std::pair<std::string, at::Tensor>> save_buffers(const NamedBuffers& buffers, uint64_t seed);
// Copies each saved tensor into its buffer; a missing one, or one of another shape or dtype, is a
// FormatError naming it and `env_id`. Returns the saved seed, if there is one.
std::optional<uint64_t> restore_buffers(const std::string& env_id, const std::vector<std::pair<std::string, at::Tensor>>& saved,
                                        const NamedBuffers& buffers);

class VecEnv {
 public:
  // Output tensors get `capacity` >= num_envs rows; the public ones are views of the first num_envs.
  VecEnv(EnvSpec spec, int64_t num_envs, int64_t capacity, int32_t max_episode_steps, const at::Device& device);
  virtual ~VecEnv() = default;

  const EnvSpec& spec() const { return spec_; }
  int64_t num_envs() const { return num_envs_; }
  int32_t max_episode_steps() const { return max_episode_steps_; }
  virtual std::string backend() const = 0;

  // Starts a new episode in every env. Env i draws from its own stream keyed by (seed, i), so
  // trajectories do not depend on the thread count or the backend.
  virtual void reset(uint64_t seed) = 0;
  // Steps every env with `actions` ([N] int64 for Discrete, [N, k] int64 for MultiDiscrete,
  // [N, k] float32 for Box). Throws naming the env index and value of an invalid action.
  void step(const at::Tensor& actions);
  // Box actions clipped to the space's bounds, as Gymnasium's ClipAction does (a policy's
  // Gaussian samples are unbounded); other actions are returned as they are.
  at::Tensor clip_actions(const at::Tensor& actions) const;

  // Sets env i's physical state (spec().state_layout order) and recomputes its observation.
  virtual void set_state(int64_t env, const std::vector<double>& state) = 0;
  virtual std::vector<double> state(int64_t env) const = 0;

  // Everything needed to continue exactly where the batch is (states, step counts, random-stream
  // positions, current observations), for checkpoints.
  virtual std::vector<std::pair<std::string, at::Tensor>> save() const = 0;
  virtual void restore(const std::vector<std::pair<std::string, at::Tensor>>& tensors) = 0;

  // Outputs of the last reset() or step(); overwritten by the next call.
  const at::Tensor& obs() const { return obs_; }                  // [N, obs...] float32
  const at::Tensor& reward() const { return reward_; }            // [N] float32
  const at::Tensor& terminated() const { return terminated_; }    // [N] bool
  const at::Tensor& truncated() const { return truncated_; }      // [N] bool
  const at::Tensor& final_obs() const { return final_obs_; }      // [N, obs...], where an episode ended
  const at::Tensor& episode_return() const { return episode_return_; }  // [N] float32, where an episode ended
  const at::Tensor& episode_length() const { return episode_length_; }  // [N] int32, where an episode ended
  const at::Tensor& episode_won() const { return episode_won_; }  // [N] float32 1/0 where an episode ended (has_outcome)

 protected:
  // Called with actions already checked: right dtype, shape, range, no NaN, contiguous.
  virtual void step_checked(const at::Tensor& actions) = 0;

  EnvSpec spec_;
  int64_t num_envs_;
  int32_t max_episode_steps_;
  at::Tensor obs_, reward_, terminated_, truncated_, final_obs_, episode_return_, episode_length_, episode_won_;
  at::Tensor action_low_, action_high_;  // Box spaces only

 private:
  at::Tensor check_actions(const at::Tensor& actions) const;
};

}  // namespace flotilla::envs
