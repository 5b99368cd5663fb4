#pragma once
// The per-environment half of a batched multi-agent step, the many-agent twin of env_batch.hpp:
// step env i with one action per agent, write every agent's reward, done flag, observation and
// available actions and the env's global state, and on an episode's end keep what a learner
// needs and reset in place. Sizes (agents, observation widths) are set when the batch is built,
// so the CPU loop runs env by env rather than in SIMD blocks; the same functions run one CUDA
// thread per env (multi_agent_batch.cuh).
//
// Layout, env-major (checked once, in envs/multi_agent.cpp):
//   obs, final_obs [N, A, O]   avail, final_avail [N, A, K]   reward, agent_done, episode_return [N, A]
//   global_state [N, S]   terminated, truncated, episode_length, won [N]
// Agent a of env i is row i * A + a of any [N, A, ...] buffer.
//
// A multi-agent environment type E provides (see envs/mpe/ and envs/smax/):
//   Params with `int32_t agents`; state variables are E::state_vars(params) doubles per env;
//   reset(p, StateRef, EnvRng&);
//   step(p, StateRef, AgentActions, float* reward[A], bool* agent_done[A], bool& terminated, float& won);
//   observe(p, StateRef, agent, Obs* obs)      (the agent's own width; the rest stays zero);
//   global_state(p, StateRef, const Obs* obs [A, O], O, Obs* state)  (the agents' observations,
//   just written, for states built from them);  available(p, StateRef, agent, bool* avail[K]).
// Optionally:
//   `using Obs = uint8_t;` for observations and states stored as bytes (float otherwise; the
//   spec's observation and state spaces then say dtype "uint8");
//   `using State = int8_t;` (or another arithmetic type) for state variables narrower than double,
//   with `using StateRef = kernels::StateRefOf<State>;`: fewer bytes per env step to move;
//   episode_reward(p, StateRef, agent) -> float: the part of the step's reward that counts toward
//   the episode return, for envs whose training reward adds shaping to the game's own (the
//   episode return then reports the game's reward alone).
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/env_batch.hpp"

namespace flotilla::kernels {

// The actions of one env's agents: int64 [A] (discrete) or float [A, dim] (continuous).
struct AgentActions {
  const void* p;
  int32_t dim;  // 0: discrete
  FLOTILLA_HD int64_t discrete(int agent) const { return static_cast<const int64_t*>(p)[agent]; }
  FLOTILLA_HD float continuous(int agent, int k) const { return static_cast<const float*>(p)[agent * dim + k]; }
};

// Byte-buffer helpers for env observation code: memset and memcpy on the CPU (a byte loop does not
// become one), plain loops in a CUDA thread.
FLOTILLA_HD void zero_bytes(uint8_t* p, int n) {
#if defined(__CUDA_ARCH__)
  for (int k = 0; k < n; ++k) p[k] = 0;
#else
  std::memset(p, 0, static_cast<size_t>(n));
#endif
}
FLOTILLA_HD void copy_bytes(uint8_t* to, const uint8_t* from, int n) {
#if defined(__CUDA_ARCH__)
  for (int k = 0; k < n; ++k) to[k] = from[k];
#else
  std::memcpy(to, from, static_cast<size_t>(n));
#endif
}

// E::Obs where the env declares one, float otherwise.
template <class E, class = void>
struct ObsOf {
  using type = float;
};
template <class E>
struct ObsOf<E, std::void_t<typename E::Obs>> {
  using type = typename E::Obs;
};
template <class E>
using obs_t = typename ObsOf<E>::type;

// E::State where the env declares one, double otherwise.
template <class E, class = void>
struct StateOf {
  using type = double;
};
template <class E>
struct StateOf<E, std::void_t<typename E::State>> {
  using type = typename E::State;
};
template <class E>
using state_t = typename StateOf<E>::type;

// Whether E keeps each env's variables together ([N, vars], `static constexpr bool
// kEnvMajorState = true`): for envs with many variables per env, whose CPU steps would otherwise
// touch a cache line per variable. The default is [vars, N], each variable contiguous over envs
// (coalesced in a CUDA warp).
template <class E, class = void>
struct EnvMajorState : std::false_type {};
template <class E>
struct EnvMajorState<E, std::void_t<decltype(E::kEnvMajorState)>> : std::bool_constant<E::kEnvMajorState> {};

template <class E>
FLOTILLA_HD StateRefOf<state_t<E>> state_of(const typename E::Params& p, void* state, int64_t num_envs, int64_t i) {
  if constexpr (EnvMajorState<E>::value) return {static_cast<state_t<E>*>(state) + i * E::state_vars(p), 1};
  else return {static_cast<state_t<E>*>(state) + i, num_envs};
}

template <class E, class = void>
struct HasEpisodeReward : std::false_type {};
template <class E>
struct HasEpisodeReward<E, std::void_t<decltype(E::episode_reward(std::declval<const typename E::Params&>(),
                                                                   std::declval<typename E::StateRef>(), 0))>>
    : std::true_type {};

struct MultiAgentBuffers {
  int64_t num_envs = 0;
  int32_t agents = 0, obs_dim = 0, state_dim = 0, avail_dim = 0, action_dim = 0;  // action_dim 0: discrete
  void* state = nullptr;                 // [state_vars, N] state_t<E>, struct of arrays (or [N, state_vars])
  // Observations and states are obs_t<E> (float unless the env stores bytes).
  void* obs = nullptr;                   // [N, A, O]
  void* final_obs = nullptr;             // [N, A, O], where an episode ended
  void* global_state = nullptr;          // [N, S]
  void* final_global_state = nullptr;    // [N, S], where an episode ended
  bool* avail = nullptr;                 // [N, A, K]
  bool* final_avail = nullptr;           // [N, A, K], where an episode ended
  float* reward = nullptr;               // [N, A]
  bool* agent_done = nullptr;            // [N, A]
  bool* terminated = nullptr;            // [N]
  bool* truncated = nullptr;             // [N]
  float* won = nullptr;                  // [N] 1 for a won episode, 0 otherwise (envs with an outcome)
  double* return_so_far = nullptr;       // [N, A]
  int32_t* elapsed = nullptr;            // [N]
  uint32_t* episode = nullptr;           // [N]
  float* episode_return = nullptr;       // [N, A] of the episode that just ended
  int32_t* episode_length = nullptr;     // [N]
  const void* actions = nullptr;         // int64 [N, A] or float [N, A, action_dim]
  uint64_t seed = 0;
  int32_t max_episode_steps = 0;
};

template <class E>
FLOTILLA_HD void ma_observe(const typename E::Params& p, const MultiAgentBuffers& b, int64_t i) {
  using Obs = obs_t<E>;
  const auto s = state_of<E>(p, b.state, b.num_envs, i);
  Obs* obs = static_cast<Obs*>(b.obs);
  for (int a = 0; a < b.agents; ++a) {
    const int64_t row = i * b.agents + a;
    E::observe(p, s, a, obs + row * b.obs_dim);
    E::available(p, s, a, b.avail + row * b.avail_dim);
  }
  E::global_state(p, s, obs + i * b.agents * b.obs_dim, b.obs_dim, static_cast<Obs*>(b.global_state) + i * b.state_dim);
}

template <class E>
FLOTILLA_HD void ma_reset_one(const typename E::Params& p, const MultiAgentBuffers& b, int64_t i) {
  EnvRng rng(b.seed, static_cast<uint64_t>(i), b.episode[i]);
  E::reset(p, state_of<E>(p, b.state, b.num_envs, i), rng);
  b.elapsed[i] = 0;
  for (int a = 0; a < b.agents; ++a) b.return_so_far[i * b.agents + a] = 0.0;
  ma_observe<E>(p, b, i);
}

// Steps env i; if its episode ended, keeps the final observations, state and statistics and
// starts the next episode.
template <class E>
FLOTILLA_HD void ma_step_one(const typename E::Params& p, const MultiAgentBuffers& b, int64_t i) {
  const int64_t first = i * b.agents;
  const int64_t per_env = b.action_dim == 0 ? b.agents : b.agents * b.action_dim;
  const void* actions = b.action_dim == 0 ? static_cast<const void*>(static_cast<const int64_t*>(b.actions) + i * per_env)
                                          : static_cast<const void*>(static_cast<const float*>(b.actions) + i * per_env);
  bool terminated = false;
  float won = 0.0f;
  const auto s = state_of<E>(p, b.state, b.num_envs, i);
  E::step(p, s, AgentActions{actions, b.action_dim}, b.reward + first, b.agent_done + first, terminated, won);
  const int32_t t = b.elapsed[i] + 1;
  b.elapsed[i] = t;
  b.terminated[i] = terminated;
  b.truncated[i] = t >= b.max_episode_steps;
  b.won[i] = won;
  for (int a = 0; a < b.agents; ++a) {
    if constexpr (HasEpisodeReward<E>::value) b.return_so_far[first + a] += E::episode_reward(p, s, a);
    else b.return_so_far[first + a] += b.reward[first + a];
  }
  ma_observe<E>(p, b, i);
  if (!(terminated || t >= b.max_episode_steps)) return;
  using Obs = obs_t<E>;
  const Obs* obs = static_cast<const Obs*>(b.obs);
  const Obs* state = static_cast<const Obs*>(b.global_state);
  Obs* final_obs = static_cast<Obs*>(b.final_obs);
  Obs* final_state = static_cast<Obs*>(b.final_global_state);
  for (int64_t k = 0; k < b.agents * b.obs_dim; ++k) final_obs[first * b.obs_dim + k] = obs[first * b.obs_dim + k];
  for (int k = 0; k < b.state_dim; ++k) final_state[i * b.state_dim + k] = state[i * b.state_dim + k];
  for (int64_t k = 0; k < b.agents * b.avail_dim; ++k) b.final_avail[first * b.avail_dim + k] = b.avail[first * b.avail_dim + k];
  for (int a = 0; a < b.agents; ++a) b.episode_return[first + a] = static_cast<float>(b.return_so_far[first + a]);
  b.episode_length[i] = t;
  b.episode[i] += 1;
  ma_reset_one<E>(p, b, i);
}

#if !defined(__CUDACC__)
template <class E>
void ma_cpu_step_range(const typename E::Params& p, const MultiAgentBuffers& b, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) ma_step_one<E>(p, b, i);
}

template <class E>
void ma_cpu_reset_range(const typename E::Params& p, const MultiAgentBuffers& b, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    b.episode[i] = 0;
    ma_reset_one<E>(p, b, i);
  }
}
#endif

}  // namespace flotilla::kernels
