// `flotilla bench reshard`: a model's weights moved from a training layout to a generation layout
// by worker processes over the transport, with the reshard plan and with the baseline the RLHF
// frameworks use, in the same run: bytes each moved against the plan's lower bound, and wall time.
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "actors/weights/methods.hpp"
#include "controller/cli/commands.hpp"
#include "controller/cluster/cluster.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "models/transformer.hpp"
#include "runtime/reshard.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;
using namespace actors::weights;

namespace {

struct Measured {
  double seconds = 1e30;  // the best of the repeats, wall time at the controller
  int64_t bytes = 0;      // tensor bytes received over the transport, every rank
  int64_t local_bytes = 0, buckets = 0;
  bool identical = true;
};

void add(Measured& m, const runtime::Stats& s) {
  for (const auto& [k, v] : s.values) {
    if (k == "reshard/sent_bytes") m.bytes += static_cast<int64_t>(v);
    if (k == "reshard/local_bytes") m.local_bytes += static_cast<int64_t>(v);
    if (k == "reshard/buckets") m.buckets += static_cast<int64_t>(v);
    if (k == "reshard/identical" && v != 1.0) m.identical = false;
  }
}

template <class M>
M transfer(const runtime::DataRef& kept, int64_t version, const ReshardBenchArgs& a, const std::string& mode) {
  M m;
  m.version = version;
  m.bucket_bytes = static_cast<int64_t>(a.bucket_mb * (1 << 20));
  m.window = a.window;
  m.mode = mode;
  for (const auto& h : kept.held()) {
    m.holders.push_back(h.endpoint);
    m.objects.push_back(static_cast<int64_t>(h.object));
  }
  return m;
}

std::string mb(int64_t bytes) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << static_cast<double>(bytes) / (1 << 20) << " MiB";
  return s.str();
}

}  // namespace

int bench_reshard(const ReshardBenchArgs& a) {
  const runtime::Parallel from = runtime::Parallel::parse(a.from), to = runtime::Parallel::parse(a.to);
  if (a.placement != "split" && a.placement != "colocated")
    throw ConfigError("--placement '" + a.placement + "' is not one of split, colocated");
  if (a.placement == "colocated" && to.size() > from.size())
    throw ConfigError("colocated placement puts each generation rank beside a training rank: --to " + a.to + " has " +
                      std::to_string(to.size()) + " ranks, --from " + a.from + " only " + std::to_string(from.size()));
  if (a.bucket_mb <= 0) throw ConfigError("--bucket-mb must be positive");
  // The layouts and the plan's bound, from the model's shapes (its weights stay on the workers).
  const fs::path config = fs::path(a.model) / "config.json";
  if (!fs::exists(config)) throw ConfigError(a.model + ": no config.json (is this a model directory?)");
  const models::LmConfig lc = models::LmConfig::from_json(core::read_file(config), config.string());
  std::vector<runtime::ParamInfo> params;
  {
    const models::CausalLm shapes(lc);
    params = runtime::param_infos(shapes, !a.replicated_vocab);
  }
  const runtime::Layout lf(params, from), lt(params, to);
  const std::vector<int> same = a.placement == "colocated" ? runtime::ReshardPlan::best_colocation(lf, lt) : std::vector<int>{};
  const runtime::ReshardPlan plan = runtime::ReshardPlan::make(lf, lt, same);
  const int64_t model_bytes = lf.total() * 4;

  const fs::path dir = fs::temp_directory_path() / ("flotilla-reshard-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  struct Cleanup {
    fs::path d;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } cleanup{dir};
  {
    std::ofstream yaml(dir / "config.yaml");
    yaml << "reshard:\n  model: " << fs::absolute(a.model).string() << "\n  from: \"" << a.from << "\"\n  to: \"" << a.to << "\"\n  vocab_parallel: "
         << (a.replicated_vocab ? "false" : "true") << "\n";
  }
  ClusterOptions options;
  options.call_timeout = std::chrono::minutes(10);
  options.start_timeout = std::chrono::minutes(2);
  options.heartbeat_timeout = std::chrono::seconds(30);
  const bool split = a.placement == "split";
  std::vector<WorkerSpec> workers = split ? std::vector<WorkerSpec>{{"reshard_source", from.size()}, {"reshard_dest", to.size()}}
                                          : std::vector<WorkerSpec>{{"reshard_both", from.size()}};
  if (!a.quiet)
    std::cerr << "starting " << (split ? from.size() + to.size() : from.size()) << " workers; each loads " << a.model << "\n";
  Cluster cluster(dir, "bench-reshard", workers, options);
  const std::string src = split ? "reshard_source" : "reshard_both", dst = split ? "reshard_dest" : "reshard_both";
  for (const auto& w : workers) cluster.run(w.group, runtime::Configure{core::read_file(dir / "config.yaml")});
  const runtime::DataRef shards = cluster.run(src, KeepShard{}).data;

  Measured planned, baseline;
  for (int r = 0; r < a.repeats; ++r) {
    cluster.run(dst, ResetShard{});
    Measured m;
    auto t0 = std::chrono::steady_clock::now();
    const auto reply = cluster.run(dst, transfer<PullShard>(shards, 1, a, "plan"));
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const auto& s : reply.ranks) add(m, s);
    if (m.seconds < planned.seconds) planned = m;
    planned.identical = planned.identical && m.identical;

    cluster.run(dst, ResetShard{});
    Measured b;
    t0 = std::chrono::steady_clock::now();
    const auto gathered = cluster.run(src, transfer<GatherShards>(shards, 1, a, "baseline"));
    const auto pulled = cluster.run(dst, transfer<PullShard>(gathered.data, 1, a, "baseline"));
    b.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const auto& s : gathered.ranks) add(b, s);
    for (const auto& s : pulled.ranks) add(b, s);
    if (b.seconds < baseline.seconds) baseline = b;
    baseline.identical = baseline.identical && b.identical;
  }
  const double byte_ratio = static_cast<double>(baseline.bytes) / static_cast<double>(std::max<int64_t>(planned.bytes, 1));
  const double time_ratio = baseline.seconds / planned.seconds;
  if (a.json) {
    nlohmann::ordered_json j = {{"model", a.model},
                                {"parameters", lf.total()},
                                {"from", from.str()},
                                {"to", to.str()},
                                {"placement", a.placement},
                                {"vocab_parallel", !a.replicated_vocab},
                                {"bucket_mb", a.bucket_mb},
                                {"lower_bound_bytes", plan.lower_bound() * 4},
                                {"plan_bytes", planned.bytes},
                                {"plan_local_bytes", planned.local_bytes},
                                {"plan_buckets", planned.buckets},
                                {"plan_seconds", planned.seconds},
                                {"baseline_bytes", baseline.bytes},
                                {"baseline_seconds", baseline.seconds},
                                {"byte_ratio", byte_ratio},
                                {"time_ratio", time_ratio},
                                {"identical", planned.identical && baseline.identical}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << std::fixed << std::setprecision(3) << a.model << ": " << lf.total() << " parameters (" << mb(model_bytes)
              << " float32), " << from.str() << " -> " << to.str() << ", " << a.placement << " placement, "
              << (a.replicated_vocab ? "replicated" : "vocabulary-parallel") << " embedding, best of " << a.repeats << "\n"
              << "  lower bound: " << mb(plan.lower_bound() * 4) << " over the transport\n"
              << "  reshard plan:  " << mb(planned.bytes) << " sent (" << mb(planned.local_bytes) << " within processes), "
              << planned.buckets << " buckets of <= " << a.bucket_mb << " MiB, " << planned.seconds << " s\n"
              << "  all-gather + broadcast from rank 0, per parameter: " << mb(baseline.bytes) << ", " << baseline.seconds << " s\n"
              << std::setprecision(2) << "  baseline / plan: " << byte_ratio << "x bytes, " << time_ratio << "x time\n"
              << "  destination buffers bit-identical to the model: " << (planned.identical && baseline.identical ? "yes" : "NO") << "\n";
  }
  return planned.identical && baseline.identical ? 0 : 1;
}

}  // namespace flotilla::controller
