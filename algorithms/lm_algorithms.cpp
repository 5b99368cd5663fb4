#include "algorithms/lm_algorithms.hpp"

namespace flotilla::algorithms {

core::Registry<LmAlgorithm>& lm_algorithms() {
  using Step = LmAlgorithm::Step;
  static core::Registry<LmAlgorithm> r("algorithm", [](auto& r) {
    r.add("sft", {.step = Step::Supervised, .data = "sft", .loss = "sft", .lr = 1e-3});
    r.add("reward_model", {.step = Step::Pairs, .data = "preference", .val_data = "preference", .loss = "bradley_terry",
                           .lr = 1e-3, .head = "reward"});
    r.add("dpo", {.step = Step::Pairs, .data = "preference", .loss = "dpo", .reference = true});
    r.add("ppo", {.estimator = "gae", .critic = true, .kl_in = "reward"});
    r.add("grpo", {.estimator = "grpo", .group_size = 4, .min_group = 2});
    r.add("rloo", {.estimator = "rloo", .group_size = 4, .min_group = 2});
    r.add("reinforce_pp", {.estimator = "reinforce_pp", .kl_in = "reward"});
    r.add("online_dpo", {.loss = "dpo", .group_size = 4, .min_group = 2, .reference = true, .pairs_from_groups = true});
  });
  return r;
}

}  // namespace flotilla::algorithms
