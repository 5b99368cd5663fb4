#include "algorithms/algorithm.hpp"

#include <ATen/ATen.h>

#include <map>

#include "algorithms/advantages.hpp"
#include "core/error.hpp"

namespace flotilla::algorithms {

std::unique_ptr<Algorithm> make_ppo(const core::ConfigView& algo, models::Policy& policy);     // ppo.cpp
std::unique_ptr<Algorithm> make_impala(const core::ConfigView& algo, models::Policy& policy);  // impala.cpp

core::Batch Algorithm::prepare(const core::Batch& f, models::Policy& policy) const {
  auto tm = [&](const char* name) { return f[name].transpose(0, 1).contiguous(); };
  Fragment fr;
  fr.obs = tm("obs");
  fr.action = tm("action");
  fr.log_prob = tm("log_prob");
  fr.value = tm("value");
  fr.reward = tm("reward");
  fr.terminated = tm("terminated");
  fr.truncated = tm("truncated");
  at::Tensor final_obs = tm("final_obs");
  const int64_t T = final_obs.size(0), n = final_obs.size(1);
  fr.final_value = policy.value(final_obs.reshape({T * n, -1})).reshape({T, n});
  fr.bootstrap_value = policy.value(f["bootstrap_obs"]);
  return training_batch(fr, advantage(), gamma(), gae_lambda());
}

void Algorithm::sync_gradients(const std::vector<at::Tensor>& params) const {
  if (!gradient_hook_) return;
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  gradient_hook_(grads);
}

namespace {
std::map<std::string, AlgorithmFactory>& registry() {
  // IPPO and MAPPO are PPO on agent rows: the policy holds the difference (local or global critic,
  // value normalization; see models::PolicyConfig).
  static std::map<std::string, AlgorithmFactory> r = {
      {"ppo", make_ppo}, {"ippo", make_ppo}, {"mappo", make_ppo}, {"impala", make_impala}};
  return r;
}
}  // namespace

void register_algorithm(const std::string& name, AlgorithmFactory factory) { registry()[name] = std::move(factory); }

std::vector<std::string> algorithm_names() {
  std::vector<std::string> out;
  for (const auto& [k, v] : registry()) out.push_back(k);
  return out;
}

std::unique_ptr<Algorithm> make_algorithm(const core::ConfigView& algo, models::Policy& policy) {
  const std::string name = algo.choice("name", "ppo", algorithm_names());
  return registry().at(name)(algo, policy);
}

}  // namespace flotilla::algorithms
