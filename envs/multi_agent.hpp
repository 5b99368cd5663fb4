#pragma once
// MultiAgentVecEnv: N multi-agent environments of A agents each stepped together, the many-agent
// form of VecEnv (same auto-reset, final observations and episode statistics), plus per-agent
// rewards and done flags, action masks, a global state for centralized critics and the episode's
// outcome where the env has one.
//
// Layout: every per-agent tensor is env-major, [N, A, ...]; agent a of env i is row i * A + a once
// flattened. AgentLayout::check() verifies every output against that, in one place, and
// agent_rows() (the view the PPO family trains on) flattens with the same rule.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "envs/registry.hpp"
#include "envs/space.hpp"

namespace flotilla::envs {

struct AgentSpec {
  std::string name;   // e.g. "adversary_0", as PettingZoo names agents
  Space observation;  // this agent's own observation (rows are zero-padded to the widest)
  Space action;       // Discrete(n) or Box(k); all agents of an env share the kind
};

struct MultiAgentSpec {
  std::string id;       // e.g. "mpe/simple_spread"
  std::string summary;  // one line for `flotilla env list`
  std::vector<AgentSpec> agents;
  Space state;  // the global state, [S]
  int32_t max_episode_steps = 0;
  bool has_outcome = false;  // episodes are won or lost (charts/win_rate)
  // An action outside its agent's current mask is an error (turn-based games, whose masks say
  // whose turn it is), checked on the CPU with the range.
  bool strict_masks = false;

  int32_t num_agents() const { return static_cast<int32_t>(agents.size()); }
  bool discrete() const { return agents.front().action.kind == Space::Kind::Discrete; }
  int64_t obs_dim() const;    // the widest agent observation
  int64_t avail_dim() const;  // the most discrete actions of any agent (1 for continuous actions)
  int64_t action_dim() const; // 0 for discrete actions, else the widest Box
  // float32, or uint8 for envs that store observations (and states) as bytes.
  at::ScalarType obs_dtype() const;
  at::ScalarType state_dtype() const;
  // The spaces padded to the widest agent: what one agent row holds.
  Space padded_action_space() const;
};

// Env-major agent rows: the one place that says where agent a of env i lives.
struct AgentLayout {
  int64_t envs = 0, agents = 0;
  int64_t row(int64_t env, int64_t agent) const { return env * agents + agent; }
  // Throws naming the tensor when `t` is not [envs, agents, trailing...] (per_agent) or
  // [envs, trailing...] (per env).
  void check(const at::Tensor& t, const std::string& name, bool per_agent, std::vector<int64_t> trailing) const;
};

class MultiAgentVecEnv {
 public:
  MultiAgentVecEnv(MultiAgentSpec spec, int64_t num_envs, int32_t max_episode_steps);
  virtual ~MultiAgentVecEnv() = default;

  const MultiAgentSpec& spec() const { return spec_; }
  int64_t num_envs() const { return num_envs_; }
  int32_t num_agents() const { return spec_.num_agents(); }
  int32_t max_episode_steps() const { return max_episode_steps_; }
  AgentLayout layout() const { return {num_envs_, num_agents()}; }
  virtual std::string backend() const = 0;

  virtual void reset(uint64_t seed) = 0;
  // actions: int64 [N, A] (discrete) or float32 [N, A, k] (continuous, padded to the widest agent).
  // Throws naming the env, the agent and the value of an action outside that agent's space.
  void step(const at::Tensor& actions);

  // Sets env i's physical state from JSON text in the env's own terms (see each env's docs)
  // and recomputes its observations.
  virtual void set_state_json(int64_t env, const std::string& json) = 0;
  virtual std::vector<std::pair<std::string, at::Tensor>> save() const = 0;
  virtual void restore(const std::vector<std::pair<std::string, at::Tensor>>& tensors) = 0;

  const at::Tensor& obs() const { return obs_; }                        // [N, A, O] obs_dtype(), zero-padded
  const at::Tensor& avail_actions() const { return avail_; }            // [N, A, K] bool
  const at::Tensor& global_state() const { return global_state_; }      // [N, S] state_dtype()
  const at::Tensor& reward() const { return reward_; }                  // [N, A] float32
  const at::Tensor& agent_done() const { return agent_done_; }          // [N, A] bool (dead or finished)
  const at::Tensor& terminated() const { return terminated_; }          // [N] bool, all agents
  const at::Tensor& truncated() const { return truncated_; }            // [N] bool, time limit
  const at::Tensor& final_obs() const { return final_obs_; }            // [N, A, O], where an episode ended
  const at::Tensor& final_global_state() const { return final_state_; } // [N, S], where an episode ended
  const at::Tensor& final_avail_actions() const { return final_avail_; } // [N, A, K], where an episode ended
  const at::Tensor& episode_return() const { return episode_return_; }  // [N, A], where an episode ended
  const at::Tensor& episode_length() const { return episode_length_; }  // [N] int32, where an episode ended
  const at::Tensor& won() const { return won_; }                        // [N] float32 1/0, where an episode ended

 protected:
  virtual void step_checked(const at::Tensor& actions) = 0;
  // Allocates the outputs with `capacity` >= N rows (the public tensors view the first N).
  void allocate(int64_t capacity);

  MultiAgentSpec spec_;
  int64_t num_envs_;
  int32_t max_episode_steps_;
  at::Tensor obs_, avail_, final_avail_, global_state_, reward_, agent_done_, terminated_, truncated_, final_obs_, final_state_,
      episode_return_, episode_length_, won_;

 private:
  at::Tensor check_actions(const at::Tensor& actions) const;
};

using MultiAgentFactory =
    std::function<std::unique_ptr<MultiAgentVecEnv>(const EnvOptions& options, const core::ConfigView* params)>;

// Registers a multi-agent env; it is also listed with the single-agent envs, and make_env() on its
// id gives its agent rows (below).
void register_multi_agent_env(MultiAgentSpec spec, MultiAgentFactory factory);
bool is_multi_agent(const std::string& id);
// The spec with default parameters; throws ConfigError for an id that is not multi-agent.
const MultiAgentSpec& multi_agent_spec(const std::string& id);
std::unique_ptr<MultiAgentVecEnv> make_multi_agent_env(const std::string& id, const EnvOptions& options,
                                                       const core::ConfigView* params = nullptr);
std::unique_ptr<MultiAgentVecEnv> make_multi_agent_env(const core::ConfigView& env);

// The multi-agent batch seen as N * A single-agent rows (env-major), for the PPO family with
// parameters shared by all agents. A row's observation is
//   [own observation (O, zero-padded) | agent one-hot (A) | global state (S) | action mask (K)]
// (EnvSpec::layout names the parts); rewards are the agent's own; an agent row is done when its
// env's episode is; the row's episode return is the agent's.
std::unique_ptr<VecEnv> agent_rows(std::unique_ptr<MultiAgentVecEnv> env);

}  // namespace flotilla::envs
