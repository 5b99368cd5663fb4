// The workers of `flotilla bench reshard`: a model's weights in a training layout on the source
// ranks, moved to a generation layout on the destination ranks, by the reshard plan or by the
// baseline the RLHF frameworks use (each parameter all-gathered over the training ranks, then
// sent whole from training rank 0 to every generation rank). Roles: reshard_source and
// reshard_dest (their own processes), reshard_both (a process hosts one source rank and at most
// one destination rank, placed where the layouts have the most in common).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <limits>

#include "actors/weights/methods.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"
#include "models/transformer.hpp"
#include "runtime/reshard.hpp"
#include "runtime/worker.hpp"

namespace flotilla::actors::weights {
namespace {

using runtime::Fetcher;
using runtime::Interval;
using runtime::Layout;

class BenchRole final : public runtime::Role {
 public:
  BenchRole(const runtime::WorkerInfo& info, std::string hosts) : Role(info), hosts_(std::move(hosts)) {}

  void configure(const core::ConfigView& root) override {
    const core::ConfigView s = root.section("reshard");
    at::set_num_threads(1);
    models::CausalLm model = models::CausalLm::load(s.require<std::string>("model"));
    const auto params = runtime::param_infos(model, s.get<bool>("vocab_parallel", true));
    from_ = std::make_unique<Layout>(params, runtime::Parallel::parse(s.require<std::string>("from")));
    to_ = std::make_unique<Layout>(params, runtime::Parallel::parse(s.require<std::string>("to")));
    const int rank = info().rank;
    std::vector<int> same;
    if (hosts_ == "both") {
      same = runtime::ReshardPlan::best_colocation(*from_, *to_);
      for (int d = 0; d < to_->ranks(); ++d)
        if (same[static_cast<size_t>(d)] == rank) dst_ = d;
    } else if (hosts_ == "dest") {
      dst_ = rank;
    }
    if (hosts_ != "dest") {
      if (rank >= from_->ranks()) throw ConfigError("source rank " + std::to_string(rank) + " is not in layout " + from_->parallel().str());
      src_ = rank;
      buffer_ = runtime::local_buffer(model, *from_, src_);
    }
    if (dst_ >= 0) {
      expected_ = runtime::checksum(runtime::local_buffer(model, *to_, dst_));
      into_ = at::empty({to_->local_size(dst_)}, at::kFloat);
      plan_ = std::make_unique<runtime::ReshardPlan>(runtime::ReshardPlan::make(*from_, *to_, same));
    }
  }

  void add_methods(runtime::Methods& m) override {
    m.on<KeepShard>([this](const KeepShard&) {
      if (src_ < 0) throw Error("this worker hosts no source rank");
      core::Batch b;
      b.set("flat", buffer_);
      b.meta()["version"] = "1";
      return runtime::Output<runtime::Version>{{1}, b};
    });
    m.on<ResetShard>([this](const ResetShard&) {
      if (into_.defined()) into_.fill_(std::numeric_limits<float>::quiet_NaN());
      return runtime::Void{};
    });
    m.on<PullShard>([this](const PullShard& p) {
      if (dst_ < 0) return runtime::Stats{};
      runtime::Transfer t;
      if (p.mode == "plan") {
        std::vector<runtime::ShardSource> sources;
        for (size_t i = 0; i < p.holders.size(); ++i) sources.push_back({p.holders[i], static_cast<uint64_t>(p.objects.at(i))});
        t = runtime::receive(*plan_, dst_, sources, p.version, into_, {p.bucket_bytes, static_cast<int>(p.window)}, Fetcher::current());
      } else if (p.mode == "baseline") {
        t = whole_parameters(p);
      } else {
        throw ConfigError("transfer mode '" + p.mode + "' is not one of plan, baseline");
      }
      const bool same = runtime::checksum(into_) == expected_;
      return runtime::Stats{{{"reshard/seconds", t.seconds},
                             {"reshard/sent_bytes", static_cast<double>(t.sent_bytes)},
                             {"reshard/local_bytes", static_cast<double>(t.local_bytes)},
                             {"reshard/buckets", static_cast<double>(t.buckets)},
                             {"reshard/identical", same ? 1.0 : 0.0}}};
    });
    m.on<GatherShards>([this](const GatherShards& g) { return gather(g); });
  }

 private:
  // The baseline's first half on a source rank: each parameter in turn, its pieces asked of every
  // other source rank at once (an all-gather per parameter); the whole model is kept.
  runtime::Output<runtime::Stats> gather(const GatherShards& g) {
    if (src_ < 0) throw Error("this worker hosts no source rank");
    const auto t0 = std::chrono::steady_clock::now();
    at::Tensor whole = at::empty({from_->total()}, at::kFloat);
    int64_t received = 0;
    for (size_t i = 0; i < from_->params().size(); ++i) {
      const int64_t begin = from_->offset(i), end = begin + from_->params()[i].numel();
      std::vector<Fetcher::RangeRequest> requests;
      std::vector<std::vector<Interval>> runs;
      for (int r = 0; r < from_->ranks(); ++r) {
        std::vector<Interval> mine = from_->runs_within(r, begin, end);
        if (mine.empty()) continue;
        if (r == src_) {
          for (const auto& iv : mine) whole.narrow(0, iv.global, iv.length).copy_(buffer_.narrow(0, iv.local, iv.length));
          continue;
        }
        Fetcher::RangeRequest q{g.holders.at(static_cast<size_t>(r)), static_cast<uint64_t>(g.objects.at(static_cast<size_t>(r))), {"flat"}, {}};
        for (const auto& iv : mine) q.ranges.emplace_back(iv.local, iv.local + iv.length);
        requests.push_back(std::move(q));
        runs.push_back(std::move(mine));
      }
      Fetcher::current().fetch_ranges(requests, 1, [&](size_t k, const core::Batch& b) {
        const at::Tensor got = b["flat"];
        int64_t pos = 0;
        for (const auto& iv : runs[k]) {
          whole.narrow(0, iv.global, iv.length).copy_(got.narrow(0, pos, iv.length));
          pos += iv.length;
        }
        received += got.numel() * static_cast<int64_t>(sizeof(float));
      });
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    core::Batch b;
    b.set("flat", whole);
    b.meta()["version"] = std::to_string(g.version);
    return {runtime::Stats{{{"reshard/seconds", seconds}, {"reshard/sent_bytes", static_cast<double>(received)}}}, b};
  }

  // The baseline's second half on a destination rank: each parameter whole from holders[0], one
  // after another, this rank's slice copied out of it.
  runtime::Transfer whole_parameters(const PullShard& p) {
    const auto t0 = std::chrono::steady_clock::now();
    runtime::Transfer t;
    for (size_t i = 0; i < to_->params().size(); ++i) {
      const int64_t begin = to_->offset(i), end = begin + to_->params()[i].numel();
      const std::vector<Interval> mine = to_->runs_within(dst_, begin, end);
      if (mine.empty()) continue;
      Fetcher::RangeRequest q{p.holders.at(0), static_cast<uint64_t>(p.objects.at(0)), {"flat"}, {{begin, end}}};
      Fetcher::current().fetch_ranges({q}, 1, [&](size_t, const core::Batch& b) {
        const at::Tensor got = b["flat"];
        for (const auto& iv : mine) into_.narrow(0, iv.local, iv.length).copy_(got.narrow(0, iv.global - begin, iv.length));
        const int64_t bytes = got.numel() * static_cast<int64_t>(sizeof(float));
        (q.holder == Fetcher::current().endpoint() ? t.local_bytes : t.sent_bytes) += bytes;
        ++t.buckets;
      });
    }
    t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return t;
  }

  std::string hosts_;
  std::unique_ptr<Layout> from_, to_;
  std::unique_ptr<runtime::ReshardPlan> plan_;
  int src_ = -1, dst_ = -1;
  at::Tensor buffer_, into_;
  uint64_t expected_ = 0;
};

}  // namespace

void add_roles(core::Registry<runtime::RoleFactory>& roles) {
  for (const std::string h : {"source", "dest", "both"})
    roles.add("reshard_" + h, [h](const runtime::WorkerInfo& i) { return std::make_unique<BenchRole>(i, h); });
}

}  // namespace flotilla::actors::weights
