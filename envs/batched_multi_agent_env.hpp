#pragma once
// BatchedMultiAgentEnv<E>: batching, threads, auto-reset, statistics and seeding for any
// multi-agent env type E written as kernels/multi_agent_batch.hpp describes. Include it only
// where an env is registered.
#include <ATen/ATen.h>

#include <memory>

#include "core/error.hpp"
#include "core/slice_pool.hpp"
#include "envs/batched_env_hooks.hpp"
#include "envs/multi_agent.hpp"
#include "kernels/multi_agent_batch.hpp"

namespace flotilla::envs {

template <class E>
class BatchedMultiAgentEnv final : public MultiAgentVecEnv {
 public:
  BatchedMultiAgentEnv(const MultiAgentSpec& spec, typename E::Params params, const EnvOptions& options)
      : MultiAgentVecEnv(spec, options.num_envs,
                         options.max_episode_steps > 0 ? options.max_episode_steps : spec.max_episode_steps),
        capacity_(options.num_envs),
        params_(params),
        cuda_(options.backend == "cuda") {
    if (options.backend != "cpu" && options.backend != "cuda")
      throw ConfigError(spec_.id + ": backend must be 'cpu' or 'cuda', got '" + options.backend + "'");
    if (cuda_ && (!MultiAgentCudaHooks<E>::step || !at::hasCUDA()))
      throw ConfigError(spec_.id + ": backend 'cuda' needs a build with CUDA, a GPU and a libtorch built with CUDA; "
                                   "this machine or build lacks one (use backend 'cpu')");
    using Obs = kernels::obs_t<E>;
    using State = kernels::state_t<E>;
    if (spec_.obs_dtype() != c10::CppTypeToScalarType<Obs>::value || spec_.state_dtype() != spec_.obs_dtype())
      throw Error(spec_.id + ": the spec's observation and state dtypes must both be the env type's (" +
                  std::string(c10::toString(c10::CppTypeToScalarType<Obs>::value)) + ")");
    allocate(capacity_);
    dims_.num_envs = capacity_;
    dims_.agents = num_agents();
    dims_.obs_dim = static_cast<int32_t>(spec_.obs_dim());
    dims_.state_dim = static_cast<int32_t>(spec_.state.numel());
    dims_.avail_dim = static_cast<int32_t>(spec_.avail_dim());
    dims_.action_dim = static_cast<int32_t>(spec_.action_dim());
    auto opts = obs_.options();
    const auto state_type = opts.dtype(c10::CppTypeToScalarType<State>::value);
    state_ = kernels::EnvMajorState<E>::value ? at::zeros({capacity_, E::state_vars(params_)}, state_type)
                                               : at::zeros({E::state_vars(params_), capacity_}, state_type);
    return_so_far_ = at::zeros({capacity_, num_agents()}, opts.dtype(at::kDouble));
    elapsed_ = at::zeros({capacity_}, opts.dtype(at::kInt));
    episode_ = at::zeros({capacity_}, opts.dtype(at::kInt));
    if (!cuda_) pool_ = std::make_unique<core::SlicePool>(options.threads);
  }

  std::string backend() const override { return cuda_ ? "cuda" : "cpu"; }

  void reset(uint64_t seed) override {
    seed_ = seed;
    kernels::MultiAgentBuffers b = buffers(nullptr);
    terminated_.zero_();
    truncated_.zero_();
    reward_.zero_();
    agent_done_.zero_();
    if (cuda_) return MultiAgentCudaHooks<E>::reset(params_, b);
    pool_->run(capacity_, [&](int64_t begin, int64_t end) { kernels::ma_cpu_reset_range<E>(params_, b, begin, end); });
  }

  void set_state_json(int64_t env, const std::string& json) override {
    if (env < 0 || env >= num_envs_)
      throw Error(spec_.id + ": env index " + std::to_string(env) + " is outside 0 to " + std::to_string(num_envs_ - 1));
    at::Tensor host = state_.cpu().contiguous();
    E::set_state_json(params_, kernels::state_of<E>(params_, host.data_ptr(), capacity_, env), json);
    state_.copy_(host);
    // Observations from the new state, computed on the CPU for this one env.
    at::Tensor obs = obs_.cpu().contiguous(), avail = avail_.cpu().contiguous(), gs = global_state_.cpu().contiguous();
    kernels::MultiAgentBuffers b = buffers(nullptr);
    b.state = host.data_ptr();
    b.obs = obs.data_ptr();
    b.avail = avail.data_ptr<bool>();
    b.global_state = gs.data_ptr();
    kernels::ma_observe<E>(params_, b, env);
    obs_.copy_(obs);
    avail_.copy_(avail);
    global_state_.copy_(gs);
  }

  std::vector<std::pair<std::string, at::Tensor>> save() const override { return save_buffers(saved(), seed_); }

  void restore(const std::vector<std::pair<std::string, at::Tensor>>& tensors) override {
    auto seed = restore_buffers(spec_.id, tensors, saved());
    if (!seed) throw FormatError(spec_.id + ": the checkpoint has no 'env.seed'");
    seed_ = *seed;
  }

 protected:
  void step_checked(const at::Tensor& actions) override {
    kernels::MultiAgentBuffers b = buffers(actions.data_ptr());
    if (cuda_) return MultiAgentCudaHooks<E>::step(params_, b);
    pool_->run(num_envs_, [&](int64_t begin, int64_t end) { kernels::ma_cpu_step_range<E>(params_, b, begin, end); });
  }

 private:
  NamedBuffers saved() const {
    return {{"env.state", &state_},   {"env.return_so_far", &return_so_far_}, {"env.elapsed", &elapsed_},
            {"env.episode", &episode_}, {"env.obs", &obs_}, {"env.avail", &avail_},
            {"env.global_state", &global_state_}};
  }

  kernels::MultiAgentBuffers buffers(const void* actions) const {
    kernels::MultiAgentBuffers b = dims_;  // sizes, worked out once from the spec
    b.state = state_.data_ptr();
    b.obs = obs_.data_ptr();
    b.final_obs = final_obs_.data_ptr();
    b.global_state = global_state_.data_ptr();
    b.final_global_state = final_state_.data_ptr();
    b.avail = avail_.data_ptr<bool>();
    b.final_avail = final_avail_.data_ptr<bool>();
    b.reward = reward_.data_ptr<float>();
    b.agent_done = agent_done_.data_ptr<bool>();
    b.terminated = terminated_.data_ptr<bool>();
    b.truncated = truncated_.data_ptr<bool>();
    b.won = won_.data_ptr<float>();
    b.return_so_far = return_so_far_.data_ptr<double>();
    b.elapsed = elapsed_.data_ptr<int32_t>();
    b.episode = reinterpret_cast<uint32_t*>(episode_.data_ptr<int32_t>());
    b.episode_return = episode_return_.data_ptr<float>();
    b.episode_length = episode_length_.data_ptr<int32_t>();
    b.actions = actions;
    b.seed = seed_;
    b.max_episode_steps = max_episode_steps_;
    return b;
  }

  int64_t capacity_;
  kernels::MultiAgentBuffers dims_;
  typename E::Params params_;
  bool cuda_;
  uint64_t seed_ = 0;
  at::Tensor state_, return_so_far_, elapsed_, episode_;
  std::unique_ptr<core::SlicePool> pool_;
};

}  // namespace flotilla::envs
