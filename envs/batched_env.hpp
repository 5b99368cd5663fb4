#pragma once
// BatchedEnv<E>: the one implementation of batching, threading, auto-reset, episode statistics
// and seeding, for any environment type E written as in envs/classic/ (state, reset, step and
// observe on one env). Include it only where an env is registered.
#include <ATen/ATen.h>

#include <memory>

#include "core/error.hpp"
#include "core/slice_pool.hpp"
#include "envs/batched_env_hooks.hpp"
#include "envs/registry.hpp"
#include "kernels/env_batch.hpp"

namespace flotilla::envs {

template <class E>
class BatchedEnv final : public VecEnv {
 public:
  BatchedEnv(const EnvSpec& spec, typename E::Params params, const EnvOptions& options)
      : VecEnv(spec, options.num_envs, kernels::padded_envs(options.num_envs),
               options.max_episode_steps > 0 ? options.max_episode_steps : spec.max_episode_steps,
               device_for(spec, options)),
        capacity_(kernels::padded_envs(options.num_envs)),
        params_(params),
        cuda_(options.backend == "cuda") {
    auto opts = obs_.options();
    state_ = at::zeros({E::kStateDim, capacity_}, opts.dtype(at::kDouble));
    return_so_far_ = at::zeros({capacity_}, opts.dtype(at::kDouble));
    elapsed_ = at::zeros({capacity_}, opts.dtype(at::kInt));
    episode_ = at::zeros({capacity_}, opts.dtype(at::kInt));
    // The padding envs step with a fixed valid action; the real rows are copied in each step.
    const Space& a = spec_.action_space;
    std::vector<int64_t> action_shape = {capacity_};
    if (a.kind != Space::Kind::Discrete) action_shape.push_back(a.numel());
    if (a.kind == Space::Kind::Box) {
      actions_ = at::tensor(std::vector<double>(a.low.begin(), a.low.end()), opts.dtype(at::kDouble))
                     .to(at::kFloat)
                     .expand(action_shape)
                     .contiguous();
    } else {
      actions_ = at::zeros(action_shape, opts.dtype(at::kLong));
    }
    if (!cuda_) pool_ = std::make_unique<core::SlicePool>(options.threads);
  }

  std::string backend() const override { return cuda_ ? "cuda" : "cpu"; }

  void reset(uint64_t seed) override {
    seed_ = seed;
    kernels::EnvBuffers b = buffers(nullptr);
    terminated_.zero_();
    truncated_.zero_();
    reward_.zero_();
    if (cuda_) return CudaHooks<E>::reset(params_, b);
    pool_->run(capacity_, [&](int64_t begin, int64_t end) { kernels::cpu_reset_range<E>(params_, b, begin, end); });
  }

  void set_state(int64_t env, const std::vector<double>& values) override {
    check_env(env);
    if (static_cast<int>(values.size()) != E::kStateDim) {
      std::string layout;
      for (const auto& n : spec_.state_layout) layout += (layout.empty() ? "" : ", ") + n;
      throw ConfigError(spec_.id + ": a state has " + std::to_string(E::kStateDim) + " values [" + layout + "], got " +
                        std::to_string(values.size()));
    }
    at::Tensor host = state_.cpu();
    for (int k = 0; k < E::kStateDim; ++k) host[k][env] = values[k];
    state_.copy_(host);
    at::Tensor obs = obs_.cpu().contiguous();
    double* s = host.data_ptr<double>();
    E::observe(params_, kernels::StateRef{s + env, capacity_}, kernels::ObsRef{obs.data_ptr<float>() + env * E::kObsDim, 1});
    obs_.copy_(obs);
  }

  std::vector<double> state(int64_t env) const override {
    check_env(env);
    at::Tensor host = state_.cpu();
    std::vector<double> out(E::kStateDim);
    for (int k = 0; k < E::kStateDim; ++k) out[k] = host[k][env].template item<double>();
    return out;
  }

  std::vector<std::pair<std::string, at::Tensor>> save() const override { return save_buffers(saved(), seed_); }

  void restore(const std::vector<std::pair<std::string, at::Tensor>>& tensors) override {
    if (auto seed = restore_buffers(spec_.id, tensors, saved())) seed_ = *seed;
  }

 protected:
  void step_checked(const at::Tensor& actions) override {
    actions_.narrow(0, 0, num_envs_).copy_(actions);
    kernels::EnvBuffers b = buffers(actions_.data_ptr());
    if (cuda_) return CudaHooks<E>::step(params_, b);
    pool_->run(capacity_ / kernels::kCpuBlock, [&](int64_t first_block, int64_t end_block) {
      kernels::cpu_step_blocks<E>(params_, b, first_block, end_block, num_envs_);
    });
  }

 private:
  static at::Device device_for(const EnvSpec& spec, const EnvOptions& options) {
    if (options.backend == "cpu") return at::Device(at::kCPU);
    if (options.backend != "cuda")
      throw ConfigError(spec.id + ": backend must be 'cpu' or 'cuda', got '" + options.backend + "'");
    if (!CudaHooks<E>::step)
      throw ConfigError(spec.id + ": this build has no CUDA kernels for this env (built without CUDA, or the env "
                                  "has no install_cuda_env call in a .cu file)");
    if (!at::hasCUDA())
      throw ConfigError(spec.id + ": backend 'cuda' needs a GPU and a libtorch built with CUDA; this machine "
                                  "or libtorch has neither (use backend 'cpu')");
    return at::Device(at::kCUDA);
  }

  // What a checkpoint keeps of the batch.
  NamedBuffers saved() const {
    return {{"env.state", &state_}, {"env.return_so_far", &return_so_far_}, {"env.elapsed", &elapsed_},
            {"env.episode", &episode_}, {"env.obs", &obs_}};
  }

  void check_env(int64_t env) const {
    if (env < 0 || env >= num_envs_)
      throw Error(spec_.id + ": env index " + std::to_string(env) + " is outside 0 to " + std::to_string(num_envs_ - 1));
  }

  kernels::EnvBuffers buffers(const void* actions) const {
    kernels::EnvBuffers b;
    b.num_envs = capacity_;
    b.state = state_.data_ptr<double>();
    b.obs = obs_.data_ptr<float>();
    b.final_obs = final_obs_.data_ptr<float>();
    b.reward = reward_.data_ptr<float>();
    b.terminated = terminated_.data_ptr<bool>();
    b.truncated = truncated_.data_ptr<bool>();
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

  int64_t capacity_;  // num_envs rounded up to whole CPU blocks
  typename E::Params params_;
  bool cuda_;
  uint64_t seed_ = 0;
  at::Tensor state_, return_so_far_, elapsed_, episode_, actions_;
  std::unique_ptr<core::SlicePool> pool_;
};

// Registers E under spec.id; `read_params` reads E::Params from an experiment's env.params.
template <class E>
void register_batched_env(EnvSpec spec, std::function<typename E::Params(const core::ConfigView&)> read_params = {}) {
  EnvSpec copy = spec;
  register_env(std::move(spec), [copy, read_params](const EnvOptions& options, const core::ConfigView* params) {
    typename E::Params p{};
    if (params && read_params) p = read_params(*params);
    return std::unique_ptr<VecEnv>(std::make_unique<BatchedEnv<E>>(copy, p, options));
  });
}

}  // namespace flotilla::envs

// Registers a user's env type from its own source file (compiled into the executable):
//   FLOTILLA_REGISTER_ENV(MyEnv, my_env_spec(), read_my_params);
#define FLOTILLA_REGISTER_ENV_CAT2(a, b) a##b
#define FLOTILLA_REGISTER_ENV_CAT(a, b) FLOTILLA_REGISTER_ENV_CAT2(a, b)
#define FLOTILLA_REGISTER_ENV(Type, ...)                                                \
  static const bool FLOTILLA_REGISTER_ENV_CAT(flotilla_env_registered_, __LINE__) = [] { \
    ::flotilla::envs::register_batched_env<Type>(__VA_ARGS__);                          \
    return true;                                                                        \
  }()
