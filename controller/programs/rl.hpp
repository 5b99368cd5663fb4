#pragma once
// The single-process RL program (`program: rl`): a batch of envs, a policy and an algorithm in one
// process, alternating rollouts and updates until `train.total_steps` or the stop condition.
#include <filesystem>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <memory>
#include <string>

#include "controller/run/program.hpp"

namespace flotilla::controller {

// Builds the program from an experiment's keys (env, model, algo, train, normalize, stop,
// checkpoint); throws ConfigError on a bad key.
std::unique_ptr<Program> make_rl_program(core::ConfigView root, const Experiment& experiment);

// IQL, VDN and QMIX: epsilon-greedy agents, episode replay, one process (q_program.cpp).
std::unique_ptr<Program> make_q_program(core::ConfigView root, const Experiment& experiment);

// The same program across processes, for experiments with a `workers:` list (distributed_rl.cpp).
std::unique_ptr<Program> make_distributed_rl_program(core::ConfigView root, const Experiment& experiment);

struct EvalResult {
  int episodes = 0;
  double mean_return = 0, std_return = 0, mean_length = 0;
  double win_rate = NAN;  // envs with an outcome
};
// Runs a checkpoint's policy (its own config and normalizer) for `episodes` episodes; IQL, VDN and
// QMIX checkpoints act greedily.
EvalResult evaluate_checkpoint(const std::filesystem::path& checkpoint, int episodes, bool deterministic, uint64_t seed);
// The value-based half of evaluate_checkpoint (q_program.cpp).
EvalResult evaluate_q_checkpoint(core::ConfigView root, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                 int episodes, uint64_t seed);

}  // namespace flotilla::controller
