#include "algorithms/algorithm.hpp"

#include <ATen/ATen.h>

#include "algorithms/advantages.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"

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
  return training_batch(fr, gamma(), gae_lambda());
}

void Algorithm::sync_gradients(const std::vector<at::Tensor>& params) const {
  if (!gradient_hook_) return;
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  gradient_hook_(grads);
}

namespace {
core::Registry<AlgorithmEntry>& registry() {
  // IPPO and MAPPO are PPO on agent rows: the policy holds the difference (local or global critic,
  // value normalization; see models::PolicyConfig).
  static core::Registry<AlgorithmEntry> r("algorithm", [](auto& r) {
    r.add("ppo", {make_ppo, {}});
    r.add("ippo", {make_ppo, {.local_critic_only = true, .algo = "ippo"}});
    r.add("mappo", {make_ppo, {.critic = "global", .value_norm = true, .algo = "mappo"}});
    r.add("impala", {make_impala, {.algo = "impala"}});
  });
  return r;
}
}  // namespace

void register_algorithm(const std::string& name, AlgorithmEntry entry) { registry().add(name, std::move(entry)); }

std::vector<std::string> algorithm_names() { return registry().names(); }

std::unique_ptr<Algorithm> make_algorithm(const core::ConfigView& algo, models::Policy& policy) {
  return registry().at(registry().choose(algo, "name", "ppo")).make(algo, policy);
}

std::unique_ptr<models::Policy> make_policy(const core::ConfigView& root, const envs::EnvSpec& spec) {
  const std::string name = root.section("algo").get<std::string>("name", "ppo");
  const AlgorithmEntry* entry = registry().find(name);
  return models::make_policy(models::PolicyConfig::read(root.section("model"), entry ? entry->policy : models::PolicyConfig::Defaults{}), spec);
}

}  // namespace flotilla::algorithms
