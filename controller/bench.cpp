#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>

#include "controller/commands.hpp"
#include "envs/registry.hpp"

namespace flotilla::controller {
namespace {

// `count` batches of random valid actions, drawn before the clock starts.
std::vector<at::Tensor> random_actions(const envs::Space& space, int64_t num_envs, int count) {
  std::vector<at::Tensor> out;
  for (int i = 0; i < count; ++i) {
    switch (space.kind) {
      case envs::Space::Kind::Discrete: out.push_back(at::randint(0, space.n, {num_envs}, at::kLong)); break;
      case envs::Space::Kind::MultiDiscrete: {
        std::vector<at::Tensor> cols;
        for (int64_t n : space.nvec) cols.push_back(at::randint(0, n, {num_envs, 1}, at::kLong));
        out.push_back(at::cat(cols, 1).contiguous());
        break;
      }
      case envs::Space::Kind::Box: {
        auto low = at::tensor(space.low, at::kDouble).to(at::kFloat), high = at::tensor(space.high, at::kDouble).to(at::kFloat);
        out.push_back((at::rand({num_envs, space.numel()}) * (high - low) + low).contiguous());
        break;
      }
    }
  }
  return out;
}

}  // namespace

int bench_env(const EnvBenchArgs& args) {
  envs::EnvOptions options;
  options.num_envs = args.num_envs;
  options.threads = args.threads;
  options.backend = args.backend;
  auto env = envs::make_env(args.env, options);
  auto actions = random_actions(env->spec().action_space, args.num_envs, 16);
  env->reset(1);
  using clock = std::chrono::steady_clock;
  auto run = [&](int64_t steps) {
    const auto t0 = clock::now();
    for (int64_t s = 0; s < steps; ++s) env->step(actions[s % actions.size()]);
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  // Warm up (caches, thread wake-up), then size the measured run to about a second.
  const double warm = run(20) / 20;
  const int64_t steps = args.steps > 0 ? args.steps : std::clamp<int64_t>(static_cast<int64_t>(1.0 / std::max(warm, 1e-9)), 50, 2'000'000);
  const double seconds = run(steps);
  const double sps = static_cast<double>(steps) * args.num_envs / seconds;
  if (args.json) {
    nlohmann::ordered_json j = {{"env", args.env},         {"num_envs", args.num_envs}, {"threads", args.threads},
                                {"backend", args.backend}, {"batch_steps", steps},     {"seconds", seconds},
                                {"steps_per_second", sps}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << "env: " << args.env << "  num_envs: " << args.num_envs << "  threads: " << args.threads
              << "  backend: " << args.backend << "\n"
              << "env steps: " << steps * args.num_envs << " in " << seconds << " s (" << steps << " batch steps)\n"
              << "steps_per_second: " << static_cast<int64_t>(sps) << "\n";
  }
  return 0;
}

}  // namespace flotilla::controller
