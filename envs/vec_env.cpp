#include "envs/vec_env.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <sstream>

#include "core/error.hpp"

namespace flotilla::envs {

VecEnv::VecEnv(EnvSpec spec, int64_t num_envs, int64_t capacity, int32_t max_episode_steps, const at::Device& device)
    : spec_(std::move(spec)), num_envs_(num_envs), max_episode_steps_(max_episode_steps) {
  if (num_envs < 1) throw ConfigError("num_envs must be at least 1, got " + std::to_string(num_envs));
  if (max_episode_steps < 1) throw ConfigError("max_episode_steps must be at least 1");
  std::vector<int64_t> obs_shape = {capacity};
  for (int64_t d : spec_.observation_space.shape) obs_shape.push_back(d);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  auto rows = [&](at::Tensor t) { return t.narrow(0, 0, num_envs); };
  obs_ = rows(at::zeros(obs_shape, f32));
  final_obs_ = rows(at::zeros(obs_shape, f32));
  reward_ = rows(at::zeros({capacity}, f32));
  episode_return_ = rows(at::zeros({capacity}, f32));
  terminated_ = rows(at::zeros({capacity}, f32.dtype(at::kBool)));
  truncated_ = rows(at::zeros({capacity}, f32.dtype(at::kBool)));
  episode_length_ = rows(at::zeros({capacity}, f32.dtype(at::kInt)));
  if (spec_.has_outcome) episode_won_ = rows(at::zeros({capacity}, f32));
  const Space& a = spec_.action_space;
  if (a.kind == Space::Kind::Box) {
    action_low_ = at::tensor(a.low, at::kDouble).to(f32);
    action_high_ = at::tensor(a.high, at::kDouble).to(f32);
  }
}

void FinishedEpisodes::append(const FinishedEpisodes& more) {
  returns.insert(returns.end(), more.returns.begin(), more.returns.end());
  lengths.insert(lengths.end(), more.lengths.begin(), more.lengths.end());
  wins.insert(wins.end(), more.wins.begin(), more.wins.end());
}

FinishedEpisodes finished_episodes(const at::Tensor& done, const at::Tensor& episode_return, const at::Tensor& episode_length,
                                   const at::Tensor& won, int64_t agents) {
  FinishedEpisodes out;
  at::Tensor d = done, ret = episode_return, len = episode_length, w = won;
  if (agents > 1) {  // one entry per env: its first row's flags, its agents' mean return
    const int64_t envs = d.size(0) / agents;
    d = d.view({envs, agents}).select(1, 0);
    ret = ret.reshape({envs, agents}).to(at::kDouble).mean(1);
    len = len.view({envs, agents}).select(1, 0);
    if (w.defined()) w = w.view({envs, agents}).select(1, 0);
  }
  if (!d.any().item<bool>()) return out;
  at::Tensor idx = d.nonzero().squeeze(1);
  auto values = [&](const at::Tensor& t) {
    at::Tensor v = t.index_select(0, idx).to(at::kDouble).contiguous();
    return std::vector<double>(v.data_ptr<double>(), v.data_ptr<double>() + v.numel());
  };
  out.returns = values(ret);
  out.lengths = values(len);
  if (w.defined()) out.wins = values(w);
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> save_buffers(const NamedBuffers& buffers, uint64_t seed) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, t] : buffers) out.emplace_back(name, t->to(at::kCPU, /*non_blocking=*/false, /*copy=*/true));  // a snapshot, not a view
  out.emplace_back("env.seed", at::full({1}, static_cast<int64_t>(seed), at::kLong));
  return out;
}

std::optional<uint64_t> restore_buffers(const std::string& env_id, const std::vector<std::pair<std::string, at::Tensor>>& saved,
                                        const NamedBuffers& buffers) {
  auto find = [&](const std::string& name) -> const at::Tensor* {
    for (const auto& [n, t] : saved)
      if (n == name) return &t;
    return nullptr;
  };
  for (const auto& [name, into] : buffers) {
    const at::Tensor* t = find(name);
    if (!t) throw FormatError(env_id + ": the checkpoint has no '" + name + "'");
    if (t->sizes() != into->sizes() || t->scalar_type() != into->scalar_type())
      throw FormatError(env_id + ": saved '" + name + "' does not fit this batch (another num_envs?)");
    into->copy_(*t);
  }
  if (const at::Tensor* seed = find("env.seed")) return static_cast<uint64_t>(seed->item<int64_t>());
  return std::nullopt;
}

at::Tensor VecEnv::clip_actions(const at::Tensor& actions) const {
  if (!action_low_.defined()) return actions;
  return at::max(at::min(actions, action_high_), action_low_).contiguous();
}

void VecEnv::step(const at::Tensor& actions) { step_checked(check_actions(actions)); }

at::Tensor VecEnv::check_actions(const at::Tensor& actions) const {
  const Space& space = spec_.action_space;
  const std::string id = spec_.id;
  if (!actions.defined()) throw Error(id + ": step() got no actions");
  std::vector<int64_t> expected = {num_envs_};
  if (space.kind != Space::Kind::Discrete) expected.insert(expected.end(), space.shape.begin(), space.shape.end());
  auto shape_str = [](at::IntArrayRef s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  };
  if (actions.sizes() != at::IntArrayRef(expected))
    throw Error(id + ": actions have shape " + shape_str(actions.sizes()) + ", expected " + shape_str(expected) +
                " for " + std::to_string(num_envs_) + " envs with action space " + space.str());
  const at::ScalarType want = space.dtype == "int64" ? at::kLong : at::kFloat;
  if (actions.scalar_type() != want)
    throw Error(id + ": actions have dtype " + std::string(c10::toString(actions.scalar_type())) + ", expected " +
                space.dtype + " for action space " + space.str());
  if (actions.device() != obs_.device())
    throw Error(id + ": actions are on " + actions.device().str() + " but the envs run on " + obs_.device().str());
  at::Tensor a = actions.contiguous();
  if (!a.device().is_cpu()) return a;  // a GPU batch is checked on the GPU by the caller's policy

  if (space.kind == Space::Kind::Box) {
    const float* p = a.data_ptr<float>();
    const int64_t k = space.numel();
    for (int64_t i = 0; i < num_envs_ * k; ++i) {
      if (std::isnan(p[i])) {
        throw Error(id + ": env " + std::to_string(i / k) + ": action[" + std::to_string(i % k) +
                    "] is NaN (action space " + space.str() + ")");
      }
    }
    return a;
  }
  const int64_t* p = a.data_ptr<int64_t>();
  if (space.kind == Space::Kind::Discrete) {
    bool bad = false;
    for (int64_t i = 0; i < num_envs_; ++i) bad |= (p[i] < 0) | (p[i] >= space.n);  // branch-free scan
    if (bad) {
      for (int64_t i = 0; i < num_envs_; ++i)
        if (p[i] < 0 || p[i] >= space.n)
          throw Error(id + ": env " + std::to_string(i) + ": action " + std::to_string(p[i]) + " is outside " +
                      space.str() + " (valid: 0 to " + std::to_string(space.n - 1) + ")");
    }
    return a;
  }
  const int64_t k = static_cast<int64_t>(space.nvec.size());
  for (int64_t i = 0; i < num_envs_ * k; ++i) {
    const int64_t n = space.nvec[i % k];
    if (p[i] < 0 || p[i] >= n)
      throw Error(id + ": env " + std::to_string(i / k) + ": action[" + std::to_string(i % k) + "] = " +
                  std::to_string(p[i]) + " is outside 0 to " + std::to_string(n - 1) + " (" + space.str() + ")");
  }
  return a;
}

}  // namespace flotilla::envs
