#include "algorithms/episode_replay.hpp"

#include <ATen/ATen.h>

#include "core/error.hpp"

namespace flotilla::algorithms {

core::Batch empty_episodes(const EpisodeShape& s, int64_t n) {
  const int64_t T = s.max_steps;
  core::Batch b;
  b.set("obs", at::zeros({n, T + 1, s.agents, s.obs_dim}, at::kFloat));
  b.set("state", at::zeros({n, T + 1, s.state_dim}, at::kFloat));
  b.set("avail", at::zeros({n, T + 1, s.agents, s.actions}, at::kBool));
  b.set("action", at::zeros({n, T, s.agents}, at::kLong));
  b.set("reward", at::zeros({n, T, s.agents}, at::kFloat));
  b.set("terminated", at::zeros({n, T}, at::kFloat));
  b.set("filled", at::zeros({n, T}, at::kFloat));
  return b;
}

EpisodeRecorder::EpisodeRecorder(EpisodeShape shape, int64_t num_envs)
    : shape_(shape), num_envs_(num_envs), t_(at::zeros({num_envs}, at::kLong)), current_(empty_episodes(shape, num_envs)) {
  if (shape.max_steps < 1) throw Error("episode recorder: the env needs a time limit (max_episode_steps)");
}

void EpisodeRecorder::write_first(const at::Tensor& envs, const at::Tensor& obs, const at::Tensor& state,
                                  const at::Tensor& avail) {
  for (const char* name : {"obs", "state", "avail", "action", "reward", "terminated", "filled"})
    current_[name].index_fill_(0, envs, 0);
  at::Tensor zero = at::zeros_like(envs);
  current_["obs"].index_put_({envs, zero}, obs.index_select(0, envs));
  current_["state"].index_put_({envs, zero}, state.index_select(0, envs));
  current_["avail"].index_put_({envs, zero}, avail.index_select(0, envs));
  t_.index_fill_(0, envs, 0);
}

void EpisodeRecorder::begin(const at::Tensor& obs, const at::Tensor& state, const at::Tensor& avail) {
  write_first(at::arange(num_envs_, at::kLong), obs, state, avail);
}

core::Batch EpisodeRecorder::step(const at::Tensor& action, const at::Tensor& reward, const at::Tensor& terminated,
                                  const at::Tensor& done, const at::Tensor& obs, const at::Tensor& state,
                                  const at::Tensor& avail, const at::Tensor& final_obs, const at::Tensor& final_state,
                                  const at::Tensor& final_avail) {
  const at::Tensor all = at::arange(num_envs_, at::kLong);
  if ((t_ >= shape_.max_steps).any().item<bool>())
    throw Error("episode recorder: an episode ran past the env's time limit of " + std::to_string(shape_.max_steps) +
                " steps");
  current_["action"].index_put_({all, t_}, action);
  current_["reward"].index_put_({all, t_}, reward);
  current_["terminated"].index_put_({all, t_}, terminated.to(at::kFloat));
  current_["filled"].index_put_({all, t_}, at::ones({num_envs_}, at::kFloat));
  // The step's next observation: the env's current one, or its final one where the episode ended.
  const at::Tensor d = done.to(at::kBool);
  auto pick = [&](const at::Tensor& now, const at::Tensor& fin) {
    at::Tensor mask = d;
    for (int64_t k = 1; k < now.dim(); ++k) mask = mask.unsqueeze(-1);
    return at::where(mask, fin, now);
  };
  const at::Tensor next = t_ + 1;
  current_["obs"].index_put_({all, next}, pick(obs, final_obs));
  current_["state"].index_put_({all, next}, pick(state, final_state));
  current_["avail"].index_put_({all, next}, pick(avail, final_avail));
  t_ = next;
  if (!d.any().item<bool>()) return {};
  const at::Tensor ended = d.nonzero().squeeze(1);
  core::Batch finished = current_.index(ended);
  write_first(ended, obs, state, avail);
  return finished;
}

EpisodeReplay::EpisodeReplay(EpisodeShape shape, int64_t capacity)
    : capacity_(capacity), storage_(empty_episodes(shape, capacity)) {
  if (capacity < 1) throw ConfigError("the episode replay needs a capacity of at least 1 episode");
}

void EpisodeReplay::add(const core::Batch& episodes) {
  for (int64_t i = 0; i < episodes.size(); ++i) {
    for (const std::string& name : storage_.names()) {
      if (!episodes.contains(name)) throw Error("episode replay: an added batch has no field '" + name + "'");
      storage_[name][next_].copy_(episodes[name][i]);
    }
    next_ = (next_ + 1) % capacity_;
    size_ = std::min(size_ + 1, capacity_);
    ++added_;
  }
}

core::Batch EpisodeReplay::sample(int64_t batch, at::Generator& gen) const {
  if (size_ == 0) throw Error("episode replay: sampling from an empty buffer");
  at::Tensor idx = at::randint(size_, {batch}, gen, at::TensorOptions().dtype(at::kLong));
  return storage_.index(idx);
}

}  // namespace flotilla::algorithms
