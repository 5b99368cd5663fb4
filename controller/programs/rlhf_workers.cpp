#include "controller/programs/rlhf_workers.hpp"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <numeric>

#include "core/error.hpp"

namespace flotilla::controller {

using namespace actors::lm;

std::vector<WorkerSpec> RlhfWorkers::specs() const {
  std::vector<WorkerSpec> specs;
  std::string layout, roles;
  for (const auto& g : c_.workers) {
    specs.push_back({g.role, g.count, g.parallel.tp});
    layout += (layout.empty() ? "" : ", ") + std::to_string(g.count) + " " + g.role;
    if (g.parallel.size() > 1) layout += " (" + g.parallel.str() + ")";
  }
  for (const auto& r : c_.roles) roles += (roles.empty() ? "" : " ") + r;
  spdlog::info("{}: {} placement, roles {}; starting workers: {}", c_.algo, c_.placement, roles, layout);
  return specs;
}

std::set<std::string> RlhfWorkers::replaceable() const {
  std::set<std::string> out;
  // A run that repeats a recorded schedule counts each rollout's engine steps from its start.
  if (c_.placement != "split" || !c_.async.schedule.empty()) return out;
  for (const auto& g : c_.workers)
    if ((g.role == "rollout" || g.role == "reward" || g.role == "ref") && g.parallel.tp == 1) out.insert(g.role);
  return out;
}

ClusterOptions RlhfWorkers::options(const RunRestarts& restarts, double call_timeout_s) const {
  ClusterOptions options;
  options.launcher = experiment_.launcher;
  options.call_timeout = std::chrono::milliseconds(static_cast<int64_t>(call_timeout_s * 1000));
  options.heartbeat_timeout = std::chrono::milliseconds(experiment_.fault.heartbeat_timeout_ms);
  options.fault = experiment_.fault;
  options.replaceable = replaceable();
  restarts.prepare(options);
  return options;
}

std::vector<runtime::Status> RlhfWorkers::rollout_replicas_polled() {
  runtime::WorkerGroup& g = group("rollout");
  const auto all = g.call(runtime::Poll{}).get().ranks;
  std::vector<runtime::Status> out;
  for (size_t r = 0; r < all.size(); r += static_cast<size_t>(g.tensor_parallel())) out.push_back(all[r]);
  return out;
}

std::vector<Synced> RlhfWorkers::sync_weights(int64_t version, std::optional<int> rank) {
  SyncWeights sync{.version = version, .on_update = c_.async.on_update, .holders = {}, .objects = {}};
  runtime::DataRef published;
  if (c_.placement == "split") {
    auto w = group("actor").call(PublishWeights{}).get();
    for (size_t r = 0; r < w.ranks.size(); ++r)
      if (w.ranks[r].version != version)
        throw Error("the rollout needs weights of version " + std::to_string(version) + "; actor rank " + std::to_string(r) +
                    " has version " + std::to_string(w.ranks[r].version));
    published = w.data;
    for (const auto& h : published.held()) {
      sync.holders.push_back(h.endpoint);
      sync.objects.push_back(static_cast<int64_t>(h.object));
    }
  }
  runtime::WorkerGroup& rollout = group("rollout");
  return (rank ? rollout.call_rank(*rank, sync) : rollout.call(sync)).get().ranks;
}

core::Scalars RlhfWorkers::held_out(const Dataset& val, size_t n, int32_t eos, int64_t version) {
  if (c_.family.pair_eval()) {
    std::vector<SequenceRow> rows;
    for (size_t i = 0; i < n; ++i) {
      rows.push_back({&val.examples[i].prompt, &val.examples[i].chosen});
      rows.push_back({&val.examples[i].prompt, &val.examples[i].rejected});
    }
    const runtime::Input pairs = runtime::Input(sequence_batch(rows).select({"tokens", "last"})).grouped(2);
    const at::Tensor s = group("actor").call(RewardHeadScores{}, pairs).get().batch["scores"];
    return {{"val/accuracy", (s.slice(0, 0, {}, 2) > s.slice(0, 1, {}, 2)).to(at::kDouble).mean().item<double>()}};
  }
  std::vector<int64_t> indices(n);
  std::iota(indices.begin(), indices.end(), 0);
  const Generate g{.n = 1, .temperature = 0.0, .top_p = c_.top_p, .top_k = c_.top_k, .seed = 0, .stop = {eos}, .width = 0};
  auto answers = group("rollout").call(g, runtime::Input(prompt_batch(val, indices))).get();
  for (const auto& v : answers.ranks)
    if (v.version != version)
      throw Error("a rollout worker generated with weights of version " + std::to_string(v.version) + ", not " + std::to_string(version));
  const runtime::DataRef& samples = answers.data;
  const runtime::Input rows(samples.select({"tokens", "last", "response_length", "example"}));
  const at::Tensor s = group("reward").call(Score{"val", true}, rows).get().batch["scores"].to(at::kFloat);
  const at::Tensor length = samples.pull({"response_length"})["response_length"].to(at::kDouble);
  return {{"val/accuracy", (s > 0.5).to(at::kDouble).mean().item<double>()}, {"val/response_length", length.mean().item<double>()}};
}

std::vector<Replacement> RlhfWorkers::bring_back(int64_t version) {
  std::vector<Replacement> back;
  while (true) {
    cluster_->check();
    for (const Replacement& r : cluster_->replaced()) {
      runtime::WorkerGroup& g = cluster_->group(r.group);
      g.call_rank(r.rank, runtime::Configure{config_}).get();
      g.call_rank(r.rank, runtime::Start{}).get();
      if (r.group == c_.group_of("rollout")) sync_weights(version, r.rank);
      cluster_->rejoined(r);
      back.push_back(r);
    }
    if (cluster_->replacing() == 0) return back;
    cluster_->metrics(std::chrono::milliseconds(100));  // returns early when a replacement is up
  }
}

}  // namespace flotilla::controller
