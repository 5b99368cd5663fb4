#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <algorithm>
#include <ctime>
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "controller/commands.hpp"
#include "controller/experiment.hpp"
#include "core/fs.hpp"
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

namespace {
double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}
}  // namespace

int bench_train(const TrainBenchArgs& args) {
  char stamp[32];
  std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  const std::filesystem::path root = std::filesystem::path(args.out_dir) / stamp;
  std::vector<double> steps, seconds;
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  int solved = 0;
  for (int k = 0; k < args.seeds; ++k) {
    const int seed = args.first_seed + k;
    std::vector<std::string> overrides = args.overrides;
    overrides.push_back("seed=" + std::to_string(seed));
    overrides.push_back("run.dir=" + (root / ("seed-" + std::to_string(seed))).string());
    LoadedExperiment loaded = load_experiment(args.config, overrides);
    RunOptions options;
    options.progress = ProgressMode::Quiet;
    const int code = run_experiment(loaded, options);
    auto summary = nlohmann::json::parse(core::read_file(root / ("seed-" + std::to_string(seed)) / "summary.json"));
    const bool ok = summary.value("exit_reason", "") == "stop_condition";
    nlohmann::ordered_json row = {{"seed", seed}, {"exit_reason", summary.value("exit_reason", "")}};
    if (ok) {
      ++solved;
      steps.push_back(summary["solved_at_step"].get<double>());
      seconds.push_back(summary["solved_at_time_s"].get<double>());
      row["solved_at_step"] = steps.back();
      row["solved_at_time_s"] = seconds.back();
    } else {
      row["last_step"] = summary.value("last_step", 0);
      row["recent_mean_return"] = summary.value("recent_mean_return", NAN);
    }
    rows.push_back(row);
    if (!args.json) {
      std::cout << "seed " << seed << ": ";
      if (ok) std::cout << "solved at step " << static_cast<int64_t>(steps.back()) << " after " << std::fixed
                        << std::setprecision(2) << seconds.back() << " s\n";
      else std::cout << summary.value("exit_reason", "?") << " without meeting the stop condition (exit code " << code << ")\n";
    }
  }
  if (args.json) {
    nlohmann::ordered_json out = {{"config", args.config}, {"seeds", args.seeds}, {"solved", solved},
                                  {"median_steps", median(steps)}, {"median_seconds", median(seconds)}, {"runs", rows},
                                  {"run_dirs", root.string()}};
    std::cout << out.dump() << "\n";
  } else {
    std::cout << "solved: " << solved << "/" << args.seeds << "  runs in " << root.string() << "\n"
              << "median_steps_to_solve: " << static_cast<int64_t>(median(steps)) << "\n"
              << "median_seconds_to_solve: " << std::fixed << std::setprecision(2) << median(seconds) << "\n";
  }
  return solved == args.seeds ? 0 : 1;
}

}  // namespace flotilla::controller
