#include "envs/multi_agent.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "core/error.hpp"

namespace flotilla::envs {

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

int64_t MultiAgentSpec::obs_dim() const {
  int64_t d = 0;
  for (const auto& a : agents) d = std::max(d, a.observation.numel());
  return d;
}

int64_t MultiAgentSpec::avail_dim() const {
  int64_t k = 1;
  for (const auto& a : agents)
    if (a.action.kind == Space::Kind::Discrete) k = std::max(k, a.action.n);
  return k;
}

int64_t MultiAgentSpec::action_dim() const {
  if (discrete()) return 0;
  int64_t k = 0;
  for (const auto& a : agents) k = std::max(k, a.action.numel());
  return k;
}

namespace {
at::ScalarType dtype_of(const Space& s) { return s.dtype == "uint8" ? at::kByte : at::kFloat; }
}  // namespace

at::ScalarType MultiAgentSpec::obs_dtype() const { return dtype_of(agents.front().observation); }
at::ScalarType MultiAgentSpec::state_dtype() const { return dtype_of(state); }

Space MultiAgentSpec::padded_action_space() const {
  if (discrete()) return Space::discrete(avail_dim());
  // The widest agent's bounds; narrower agents ignore the columns past their own.
  std::vector<double> low(action_dim(), 0.0), high(action_dim(), 0.0);
  for (const auto& a : agents)
    for (int64_t k = 0; k < a.action.numel(); ++k) {
      low[k] = std::min(low[k], a.action.low[k]);
      high[k] = std::max(high[k], a.action.high[k]);
    }
  return Space::box(low, high);
}

void AgentLayout::check(const at::Tensor& t, const std::string& name, bool per_agent, std::vector<int64_t> trailing) const {
  std::vector<int64_t> want = {envs};
  if (per_agent) want.push_back(agents);
  want.insert(want.end(), trailing.begin(), trailing.end());
  if (!t.defined() || t.sizes() != at::IntArrayRef(want))
    throw Error("multi-agent layout: '" + name + "' has shape " + (t.defined() ? shape_str(t.sizes()) : "(none)") +
                ", expected " + shape_str(want) + " (env-major: " + std::to_string(envs) + " envs" +
                (per_agent ? " x " + std::to_string(agents) + " agents" : "") + ")");
}

MultiAgentVecEnv::MultiAgentVecEnv(MultiAgentSpec spec, int64_t num_envs, int32_t max_episode_steps)
    : spec_(std::move(spec)), num_envs_(num_envs), max_episode_steps_(max_episode_steps) {
  if (num_envs < 1) throw ConfigError("num_envs must be at least 1, got " + std::to_string(num_envs));
  if (max_episode_steps < 1) throw ConfigError("max_episode_steps must be at least 1");
  if (spec_.agents.empty()) throw Error(spec_.id + ": a multi-agent env needs at least one agent");
  for (const auto& a : spec_.agents)
    if (a.observation.dtype != spec_.agents.front().observation.dtype)
      throw Error(spec_.id + ": agents must all have observations of one dtype (agent '" + a.name + "' has " +
                  a.observation.dtype + ")");
  for (const auto& a : spec_.agents)
    if (a.action.is_discrete() != spec_.discrete() || a.action.kind == Space::Kind::MultiDiscrete)
      throw Error(spec_.id + ": agents must all have Discrete or all Box actions (agent '" + a.name + "' has " +
                  a.action.str() + ")");
}

void MultiAgentVecEnv::allocate(int64_t capacity) {
  const int64_t A = num_agents(), O = spec_.obs_dim(), S = spec_.state.numel(), K = spec_.avail_dim();
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto rows = [&](at::Tensor t) { return t.narrow(0, 0, num_envs_); };
  obs_ = rows(at::zeros({capacity, A, O}, f32.dtype(spec_.obs_dtype())));
  final_obs_ = rows(at::zeros({capacity, A, O}, f32.dtype(spec_.obs_dtype())));
  avail_ = rows(at::zeros({capacity, A, K}, f32.dtype(at::kBool)));
  final_avail_ = rows(at::zeros({capacity, A, K}, f32.dtype(at::kBool)));
  global_state_ = rows(at::zeros({capacity, S}, f32.dtype(spec_.state_dtype())));
  final_state_ = rows(at::zeros({capacity, S}, f32.dtype(spec_.state_dtype())));
  reward_ = rows(at::zeros({capacity, A}, f32));
  agent_done_ = rows(at::zeros({capacity, A}, f32.dtype(at::kBool)));
  episode_return_ = rows(at::zeros({capacity, A}, f32));
  terminated_ = rows(at::zeros({capacity}, f32.dtype(at::kBool)));
  truncated_ = rows(at::zeros({capacity}, f32.dtype(at::kBool)));
  episode_length_ = rows(at::zeros({capacity}, f32.dtype(at::kInt)));
  won_ = rows(at::zeros({capacity}, f32));
  // The one check of the layout every consumer relies on.
  const AgentLayout l = layout();
  l.check(obs_, "obs", true, {O});
  l.check(final_obs_, "final_obs", true, {O});
  l.check(avail_, "avail_actions", true, {K});
  l.check(final_avail_, "final_avail_actions", true, {K});
  l.check(reward_, "reward", true, {});
  l.check(agent_done_, "agent_done", true, {});
  l.check(episode_return_, "episode_return", true, {});
  l.check(global_state_, "global_state", false, {S});
  l.check(final_state_, "final_global_state", false, {S});
  for (const at::Tensor* t : {&terminated_, &truncated_, &episode_length_, &won_}) l.check(*t, "per-env flags", false, {});
}

void MultiAgentVecEnv::step(const at::Tensor& actions) { step_checked(check_actions(actions)); }

at::Tensor MultiAgentVecEnv::check_actions(const at::Tensor& actions) const {
  const std::string& id = spec_.id;
  const int64_t A = num_agents();
  if (!actions.defined()) throw Error(id + ": step() got no actions");
  std::vector<int64_t> expected = {num_envs_, A};
  if (!spec_.discrete()) expected.push_back(spec_.action_dim());
  if (actions.sizes() != at::IntArrayRef(expected))
    throw Error(id + ": actions have shape " + shape_str(actions.sizes()) + ", expected " + shape_str(expected) +
                " (envs x agents" + (spec_.discrete() ? "" : " x action width") + ")");
  const at::ScalarType want = spec_.discrete() ? at::kLong : at::kFloat;
  if (actions.scalar_type() != want)
    throw Error(id + ": actions have dtype " + std::string(c10::toString(actions.scalar_type())) + ", expected " +
                (spec_.discrete() ? "int64" : "float32"));
  if (actions.device() != obs_.device())
    throw Error(id + ": actions are on " + actions.device().str() + " but the envs run on " + obs_.device().str());
  at::Tensor a = actions.contiguous();
  if (!a.device().is_cpu()) return a;
  if (spec_.discrete()) {
    const int64_t* p = a.data_ptr<int64_t>();
    std::vector<uint64_t> n(A);  // as unsigned, one compare also rejects negative actions
    for (int64_t k = 0; k < A; ++k) n[k] = static_cast<uint64_t>(spec_.agents[k].action.n);
    bool valid = true;
    for (int64_t i = 0; i < num_envs_; ++i)
      for (int64_t k = 0; k < A; ++k) valid &= static_cast<uint64_t>(p[i * A + k]) < n[k];
    if (valid && spec_.strict_masks) {
      const at::Tensor avail = avail_.contiguous();
      const bool* m = avail.data_ptr<bool>();
      const int64_t K = spec_.avail_dim();
      for (int64_t i = 0; i < num_envs_ * A; ++i) {
        if (m[i * K + p[i]]) continue;
        std::string legal;
        for (int64_t k = 0; k < K; ++k)
          if (m[i * K + k]) legal += (legal.empty() ? "" : ", ") + std::to_string(k);
        throw Error(id + ": env " + std::to_string(i / A) + ", agent '" + spec_.agents[i % A].name + "': action " +
                    std::to_string(p[i]) + " is not legal now (legal: " + legal + ")");
      }
    }
    if (valid) return a;
    for (int64_t i = 0; i < num_envs_ * A; ++i) {
      const Space& space = spec_.agents[i % A].action;
      if (p[i] < 0 || p[i] >= space.n)
        throw Error(id + ": env " + std::to_string(i / A) + ", agent '" + spec_.agents[i % A].name + "': action " +
                    std::to_string(p[i]) + " is outside " + space.str() + " (valid: 0 to " + std::to_string(space.n - 1) + ")");
    }
    return a;
  }
  const float* p = a.data_ptr<float>();
  const int64_t k = spec_.action_dim();
  for (int64_t i = 0; i < num_envs_ * A * k; ++i)
    if (std::isnan(p[i]))
      throw Error(id + ": env " + std::to_string(i / (A * k)) + ", agent '" + spec_.agents[(i / k) % A].name +
                  "': action[" + std::to_string(i % k) + "] is NaN");
  return a;
}

// ---- Registry ----

namespace {

struct MultiAgentEntry {
  MultiAgentSpec spec;
  MultiAgentFactory factory;
};

std::map<std::string, MultiAgentEntry>& multi_agent_entries() {
  static std::map<std::string, MultiAgentEntry> map;
  return map;
}

// The agent rows' spec (see agent_rows()).
EnvSpec rows_spec(const MultiAgentSpec& m) {
  ObsLayout l;
  l.obs_dim = m.obs_dim();
  l.agents = m.num_agents();
  l.state_dim = m.state.numel();
  l.mask_dim = m.discrete() ? m.avail_dim() : 0;
  const int64_t width = l.mask_offset() + l.mask_dim;
  const double inf = std::numeric_limits<double>::infinity();
  EnvSpec s;
  s.id = m.id;
  s.summary = m.summary;
  s.observation_space = Space::box(std::vector<double>(width, -inf), std::vector<double>(width, inf));
  s.action_space = m.padded_action_space();
  s.max_episode_steps = m.max_episode_steps;
  s.layout = l;
  s.has_outcome = m.has_outcome;
  return s;
}

}  // namespace

void register_multi_agent_env(MultiAgentSpec spec, MultiAgentFactory factory) {
  const std::string id = spec.id;
  register_env(rows_spec(spec), [factory](const EnvOptions& options, const core::ConfigView* params) {
    return agent_rows(factory(options, params));
  });
  multi_agent_entries()[id] = MultiAgentEntry{std::move(spec), std::move(factory)};
}

bool is_multi_agent(const std::string& id) {
  env_specs();  // built-in envs register on first use
  return multi_agent_entries().count(id) > 0;
}

const MultiAgentSpec& multi_agent_spec(const std::string& id) {
  env_spec(id);  // a clear error for an unknown id
  auto it = multi_agent_entries().find(id);
  if (it == multi_agent_entries().end())
    throw ConfigError("env '" + id + "' is a single-agent env; a multi-agent algorithm needs one of the multi-agent "
                      "envs (flotilla env list)");
  return it->second.spec;
}

std::unique_ptr<MultiAgentVecEnv> make_multi_agent_env(const std::string& id, const EnvOptions& options,
                                                       const core::ConfigView* params) {
  multi_agent_spec(id);
  return multi_agent_entries().at(id).factory(options, params);
}

std::unique_ptr<MultiAgentVecEnv> make_multi_agent_env(const core::ConfigView& env) {
  const std::string id = env.require<std::string>("id");
  try {
    if (!is_multi_agent(id)) make_multi_agent_env(id, EnvOptions{});
  } catch (const ConfigError& e) {
    env.fail("id", e.what());
  }
  core::ConfigView params = env.section("params");
  return make_multi_agent_env(id, read_env_options(env), &params);
}

// ---- Agent rows ----

namespace {

class AgentRows final : public VecEnv {
 public:
  explicit AgentRows(std::unique_ptr<MultiAgentVecEnv> env)
      : VecEnv(rows_spec(env->spec()), env->num_envs() * env->num_agents(), env->num_envs() * env->num_agents(),
               env->max_episode_steps(), env->obs().device()),
        env_(std::move(env)) {
    const ObsLayout& l = spec_.layout;
    // The one-hot agent ids never change; set them once in both row buffers.
    at::Tensor ids = at::eye(l.agents, obs_.options()).unsqueeze(0).expand({env_->num_envs(), l.agents, l.agents});
    for (at::Tensor* t : {&obs_, &final_obs_}) per_agent(*t).narrow(2, l.obs_dim, l.agents).copy_(ids);
  }

  std::string backend() const override { return env_->backend(); }

  void reset(uint64_t seed) override {
    env_->reset(seed);
    fill(obs_, env_->obs(), env_->global_state());
    terminated_.zero_();
    truncated_.zero_();
    reward_.zero_();
  }

  void set_state(int64_t, const std::vector<double>&) override {
    throw Error(spec_.id + ": a multi-agent env takes its state as JSON (flotilla env trace --init-state)");
  }
  std::vector<double> state(int64_t) const override {
    throw Error(spec_.id + ": a multi-agent env has no flat state vector");
  }
  std::vector<std::pair<std::string, at::Tensor>> save() const override { return env_->save(); }
  void restore(const std::vector<std::pair<std::string, at::Tensor>>& tensors) override {
    env_->restore(tensors);
    fill(obs_, env_->obs(), env_->global_state());
  }

 protected:
  void step_checked(const at::Tensor& actions) override {
    const int64_t N = env_->num_envs(), A = env_->num_agents();
    env_->step(actions.dim() == 1 ? actions.view({N, A}) : actions.view({N, A, actions.size(1)}));
    fill(obs_, env_->obs(), env_->global_state());
    reward_.copy_(env_->reward().reshape({-1}));
    auto per_row = [&](const at::Tensor& env_flags) { return env_flags.unsqueeze(1).expand({N, A}).reshape({-1}); };
    terminated_.copy_(per_row(env_->terminated()));
    truncated_.copy_(per_row(env_->truncated()));
    if ((env_->terminated() | env_->truncated()).any().item<bool>()) {
      fill(final_obs_, env_->final_obs(), env_->final_global_state());
      episode_return_.copy_(env_->episode_return().reshape({-1}));
      episode_length_.copy_(per_row(env_->episode_length()));
      if (episode_won_.defined()) episode_won_.copy_(per_row(env_->won()));
    }
  }

 private:
  at::Tensor per_agent(const at::Tensor& rows) const {
    return rows.view({env_->num_envs(), env_->num_agents(), rows.size(1)});
  }

  // Writes observations, global state and action masks into agent rows (ids are already there).
  void fill(at::Tensor& rows, const at::Tensor& obs, const at::Tensor& state) const {
    const ObsLayout& l = spec_.layout;
    at::Tensor r = per_agent(rows);
    r.narrow(2, 0, l.obs_dim).copy_(obs);
    r.narrow(2, l.critic_offset() + l.agents, l.state_dim).copy_(state.unsqueeze(1).expand({-1, l.agents, -1}));
    if (l.mask_dim > 0) r.narrow(2, l.mask_offset(), l.mask_dim).copy_(env_->avail_actions());
  }

  std::unique_ptr<MultiAgentVecEnv> env_;
};

}  // namespace

std::unique_ptr<VecEnv> agent_rows(std::unique_ptr<MultiAgentVecEnv> env) {
  return std::make_unique<AgentRows>(std::move(env));
}

}  // namespace flotilla::envs
