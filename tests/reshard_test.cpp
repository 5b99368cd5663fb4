// Layouts and reshard plans, checked element by element against a reference built with tensor
// slicing: what each rank holds, and that a plan writes every destination element exactly once,
// sends nothing a destination's process already holds, sends exactly the lower bound and shares
// the sending among replicas. Then the plan run by worker processes over the transport, and
// `flotilla bench reshard`.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <numeric>
#include <random>
#include <set>

#include "actors/weights/methods.hpp"
#include "controller/cluster/cluster.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "runtime/layout.hpp"
#include "runtime/reshard.hpp"
#include "support/cli.hpp"
#include "support/error_of.hpp"
#include "support/temp_dir.hpp"
#include "support/tiny_lm.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using runtime::Layout;
using runtime::Parallel;
using runtime::ParamInfo;
using runtime::ReshardPlan;

namespace {

// The global offset of every local element of `rank`, from the layout's runs.
std::vector<int64_t> expand(const Layout& l, int rank) {
  std::vector<int64_t> out(static_cast<size_t>(l.local_size(rank)), -1);
  for (const auto& iv : l.held(rank))
    for (int64_t i = 0; i < iv.length; ++i) out.at(static_cast<size_t>(iv.local + i)) = iv.global + i;
  return out;
}

// The same, from first principles: each parameter's elements numbered globally, its tensor-
// parallel slice taken with chunk(), the slices concatenated and cut to the rank's fsdp chunk.
std::vector<int64_t> reference(const std::vector<ParamInfo>& params, Parallel p, int rank) {
  std::vector<at::Tensor> parts;
  int64_t offset = 0;
  for (const auto& q : params) {
    at::Tensor t = at::arange(offset, offset + q.numel(), at::kLong).view(q.shape);
    offset += q.numel();
    if (p.tp > 1 && q.tp_dim >= 0) t = t.chunk(p.tp, q.tp_dim)[static_cast<size_t>(p.tp_rank(rank))];
    parts.push_back(t.contiguous().view({-1}));
  }
  const at::Tensor slice = at::cat(parts);
  const int64_t chunk = (slice.numel() + p.fsdp - 1) / p.fsdp;
  const int64_t begin = std::min(slice.numel(), p.fsdp_rank(rank) * chunk), end = std::min(slice.numel(), begin + chunk);
  const at::Tensor mine = slice.slice(0, begin, end).contiguous();
  return {mine.data_ptr<int64_t>(), mine.data_ptr<int64_t>() + mine.numel()};
}

std::vector<ParamInfo> random_model(std::mt19937& rng) {
  std::uniform_int_distribution<int> count(1, 6), unit(1, 5), kind(0, 3);
  std::vector<ParamInfo> params;
  const int n = count(rng);
  for (int i = 0; i < n; ++i) {
    ParamInfo p;
    p.name = std::to_string(i);
    switch (kind(rng)) {
      case 0: p.shape = {unit(rng) + 2}; break;                                    // a norm: replicated
      case 1: p.shape = {4 * unit(rng)}, p.tp_dim = 0; break;                       // a bias
      case 2: p.shape = {4 * unit(rng), unit(rng) + 1}, p.tp_dim = 0; break;        // column-parallel
      default: p.shape = {unit(rng) + 1, 4 * unit(rng)}, p.tp_dim = 1; break;       // row-parallel
    }
    params.push_back(p);
  }
  return params;
}

Parallel random_parallel(std::mt19937& rng) {
  static const std::vector<Parallel> all = [] {
    std::vector<Parallel> v;
    for (int dp : {1, 2, 3})
      for (int fsdp : {1, 2, 3, 4})
        for (int tp : {1, 2, 4})
          if (dp * fsdp * tp <= 8) v.push_back({dp, fsdp, tp});
    return v;
  }();
  return all[std::uniform_int_distribution<size_t>(0, all.size() - 1)(rng)];
}

// Runs the plan on buffers whose every element is its global offset; checks what the plan claims.
void check_plan(const Layout& from, const Layout& to, const std::vector<int>& same, int64_t grain) {
  const ReshardPlan plan = ReshardPlan::make(from, to, same, grain);
  std::vector<std::vector<int64_t>> src, dst, writes;
  for (int s = 0; s < from.ranks(); ++s) src.push_back(expand(from, s));
  for (int d = 0; d < to.ranks(); ++d) {
    dst.emplace_back(static_cast<size_t>(to.local_size(d)), -1);
    writes.emplace_back(static_cast<size_t>(to.local_size(d)), 0);
  }
  auto apply = [&](const runtime::Copy& c) {
    for (int64_t i = 0; i < c.length; ++i) {
      dst.at(static_cast<size_t>(c.dst)).at(static_cast<size_t>(c.dst_offset + i)) =
          src.at(static_cast<size_t>(c.src)).at(static_cast<size_t>(c.src_offset + i));
      ++writes[static_cast<size_t>(c.dst)][static_cast<size_t>(c.dst_offset + i)];
    }
  };
  for (const auto& c : plan.local()) {
    CHECK(same.at(static_cast<size_t>(c.dst)) == c.src);  // a local copy comes from the rank in its process
    apply(c);
  }
  int64_t needed = 0;  // elements no rank in the destination's process holds, counted one by one
  for (const auto& c : plan.sent()) apply(c);
  for (int d = 0; d < to.ranks(); ++d) {
    const int mine = same.empty() ? -1 : same[static_cast<size_t>(d)];
    std::set<int64_t> there;
    if (mine >= 0) there = {src[static_cast<size_t>(mine)].begin(), src[static_cast<size_t>(mine)].end()};
    const std::vector<int64_t> want = expand(to, d);
    for (size_t i = 0; i < want.size(); ++i) {
      REQUIRE(writes[static_cast<size_t>(d)][i] == 1);
      REQUIRE(dst[static_cast<size_t>(d)][i] == want[i]);
      if (!there.count(want[i])) ++needed;
    }
    for (const auto& c : plan.sent())
      if (c.dst == d && mine >= 0)
        for (int64_t i = 0; i < c.length; ++i) REQUIRE(!there.count(src[static_cast<size_t>(c.src)][static_cast<size_t>(c.src_offset + i)]));
  }
  CHECK(plan.sent_elements() == needed);
  CHECK(plan.lower_bound() == needed);
  int64_t load = 0;
  for (int64_t l : plan.load()) load += l;
  CHECK(load == plan.sent_elements());
  // Buckets hold the sent copies, none larger than asked.
  int64_t bucketed = 0;
  for (int d = 0; d < to.ranks(); ++d)
    for (int s = 0; s < from.ranks(); ++s)
      for (const auto& b : plan.buckets(d, s, 7)) {
        int64_t n = 0;
        for (const auto& c : b) n += c.length;
        CHECK(n <= 7);
        bucketed += n;
      }
  CHECK(bucketed == plan.sent_elements());
}

}  // namespace

TEST_CASE("a layout holds each rank's tensor-parallel slice cut to its fsdp chunk, as tensor slicing does") {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const auto params = random_model(rng);
    const Parallel p = random_parallel(rng);
    const Layout l(params, p);
    for (int r = 0; r < l.ranks(); ++r) REQUIRE(expand(l, r) == reference(params, p, r));
  }
}

TEST_CASE("layout degrees are parsed with errors naming the bad part") {
  const Parallel p = Parallel::parse("dp=2,tp=4");
  CHECK(p.dp == 2);
  CHECK(p.fsdp == 1);
  CHECK(p.tp == 4);
  CHECK(p.size() == 8);
  CHECK(p.str() == "dp=2,tp=4");
  CHECK(Parallel::parse("").size() == 1);
  CHECK(test::error_of([] { Parallel::parse("pp=2"); }).find("'pp=2' is not dp=N, fsdp=N or tp=N") != std::string::npos);
  CHECK(test::error_of([] { Parallel::parse("tp=x"); }).find("needs a whole number") != std::string::npos);
  CHECK(test::error_of([] { Parallel::parse("fsdp=0"); }).find("fsdp must be at least 1") != std::string::npos);
  const std::vector<ParamInfo> odd = {{"model.layers.0.mlp.down_proj.weight", {4, 6}, 1}};
  CHECK(test::error_of([&] { Layout(odd, {1, 1, 4}); }).find("down_proj.weight: dimension 1 (6) does not split over tp=4") !=
        std::string::npos);
}

TEST_CASE("reshard plans over random pairs of layouts send exactly the lower bound, each element once") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    CAPTURE(trial);
    const auto params = random_model(rng);
    const Layout from(params, random_parallel(rng)), to(params, random_parallel(rng));
    std::vector<int> same;
    if (trial % 3 != 0) {  // colocated: some destination ranks share a process with a source rank
      std::vector<int> sources(static_cast<size_t>(from.ranks()));
      std::iota(sources.begin(), sources.end(), 0);
      std::shuffle(sources.begin(), sources.end(), rng);
      for (int d = 0; d < to.ranks(); ++d) same.push_back(d < from.ranks() && rng() % 4 ? sources[static_cast<size_t>(d)] : -1);
    }
    check_plan(from, to, same, 1 + static_cast<int64_t>(rng() % 64));
  }
}

TEST_CASE("tp=4 to two tp=2 replicas on the same four ranks moves a quarter of the model per rank") {
  const std::vector<ParamInfo> params = {{"a", {8, 6}, 0}, {"b", {6, 8}, 1}, {"c", {16}, 0}};
  const Layout from(params, Parallel::parse("tp=4")), to(params, Parallel::parse("dp=2,tp=2"));
  const int64_t M = from.total();
  // Generation rank 1 (the second half) lives beside training rank 2, which holds a quarter of it.
  const std::vector<int> beside = ReshardPlan::best_colocation(from, to);
  CHECK(beside == std::vector<int>{0, 2, 1, 3});
  const ReshardPlan colocated = ReshardPlan::make(from, to, beside);
  CHECK(colocated.sent_elements() == M);  // 4 ranks x M/4, not 3M/4 each
  CHECK(colocated.local_elements() == M);
  CHECK(ReshardPlan::make(from, to, {0, 1, 2, 3}).sent_elements() == 3 * M / 2);  // a worse placement moves more
  const ReshardPlan split = ReshardPlan::make(from, to);
  CHECK(split.sent_elements() == 2 * M);  // two replicas, each of the whole model
  // Two replicas of the model as the source: the copies come from both.
  const Layout replicated(params, Parallel::parse("dp=2"));
  const ReshardPlan shared = ReshardPlan::make(replicated, to, {}, 8);
  CHECK(shared.load()[0] > 0);
  CHECK(shared.load()[1] > 0);
}

TEST_CASE("senders that hold the same runs share the sending within one grain") {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 100; ++trial) {
    const auto params = random_model(rng);
    const int replicas = 2 + static_cast<int>(rng() % 3);
    const Layout from(params, {replicas, 1, 1}), to(params, random_parallel(rng));
    const int64_t grain = 1 + static_cast<int64_t>(rng() % 16);
    const ReshardPlan plan = ReshardPlan::make(from, to, {}, grain);
    const auto [lo, hi] = std::minmax_element(plan.load().begin(), plan.load().end());
    CHECK(*hi - *lo <= grain);
  }
}

TEST_CASE("a reshard plan between different models or with a bad colocation is refused") {
  const Layout a({{"w", {4, 4}, 0}}, {}), b({{"w", {4, 2}, 0}}, {});
  CHECK(test::error_of([&] { ReshardPlan::make(a, b); }).find("different models") != std::string::npos);
  CHECK(test::error_of([&] { ReshardPlan::make(a, a, {0, 1}); }).find("one colocation entry per destination rank") != std::string::npos);
  CHECK(test::error_of([&] { ReshardPlan::make(a, a, {3}); }).find("colocated source rank 3") != std::string::npos);
}

namespace {

// A tiny model on disk and a cluster of reshard workers loading it with the two layouts.
struct ReshardWorkers {
  test::TempDir dir;
  runtime::Layout from, to;
  std::unique_ptr<controller::Cluster> cluster;
  std::string src, dst;

  ReshardWorkers(const std::string& f, const std::string& t, bool colocated)
      : from(params(), Parallel::parse(f)), to(params(), Parallel::parse(t)) {
    test::spread_model("qwen3", false).save(dir.path() / "model");
    std::ofstream(dir.path() / "config.yaml") << "reshard:\n  model: " << (dir.path() / "model").string() << "\n  from: \"" << f
                                              << "\"\n  to: \"" << t << "\"\n";
    controller::ClusterOptions o;
    o.executable = FLOTILLA_TEST_CLI;
    o.heartbeat_timeout = std::chrono::milliseconds(5000);
    o.call_timeout = std::chrono::milliseconds(60000);
    src = colocated ? "reshard_both" : "reshard_source";
    dst = colocated ? "reshard_both" : "reshard_dest";
    std::vector<controller::WorkerSpec> w = {{src, from.ranks()}};
    if (!colocated) w.push_back({dst, to.ranks()});
    cluster = std::make_unique<controller::Cluster>(dir.path() / "run", "reshard-test", w, o);
    for (const auto& g : w) cluster->run(g.group, runtime::Configure{core::read_file(dir.path() / "config.yaml")});
  }
  static std::vector<ParamInfo> params() { return runtime::param_infos(test::spread_model("qwen3", false)); }

  actors::weights::PullShard pull(const runtime::DataRef& kept, int64_t version, int64_t bucket_bytes) const {
    actors::weights::PullShard p;
    p.version = version;
    p.bucket_bytes = bucket_bytes;
    for (const auto& h : kept.held()) p.holders.push_back(h.endpoint), p.objects.push_back(static_cast<int64_t>(h.object));
    return p;
  }
  static double total(const runtime::Reply<actors::weights::PullShard>& r, const std::string& name) {
    double sum = 0;
    for (const auto& s : r.ranks)
      for (const auto& [k, v] : s.values)
        if (k == name) sum += v;
    return sum;
  }
};

}  // namespace

TEST_CASE("worker processes move weights from fsdp=4 to two tp=2 replicas bit-identical, sending the lower bound") {
  ReshardWorkers w("fsdp=4", "dp=2,tp=2", false);
  const runtime::DataRef shards = w.cluster->run(w.src, actors::weights::KeepShard{}).data;
  REQUIRE(shards.held().size() == 4);
  const int64_t bound = ReshardPlan::make(w.from, w.to).lower_bound() * 4;
  for (int64_t bucket : {int64_t{32} << 20, int64_t{4096}}) {  // one bucket per source, and many
    CAPTURE(bucket);
    w.cluster->run(w.dst, actors::weights::ResetShard{});
    const auto r = w.cluster->run(w.dst, w.pull(shards, 1, bucket));
    CHECK(ReshardWorkers::total(r, "reshard/identical") == 4);
    CHECK(ReshardWorkers::total(r, "reshard/sent_bytes") == bound);
    CHECK(ReshardWorkers::total(r, "reshard/buckets") >= (bucket == 4096 ? static_cast<double>(bound) / 4096 : 4.0));
  }
  // Weights of another version are refused, naming the source and both versions.
  const std::string err = test::error_of([&] { w.cluster->run(w.dst, w.pull(shards, 2, 1 << 20)); });
  CHECK(err.find("holds weights of version 1, not 2") != std::string::npos);
  CHECK(err.find("source rank") != std::string::npos);
}

TEST_CASE("colocated workers copy what their own process holds and receive the rest") {
  ReshardWorkers w("dp=2,tp=2", "tp=4", true);
  const runtime::DataRef shards = w.cluster->run(w.src, actors::weights::KeepShard{}).data;
  w.cluster->run(w.dst, actors::weights::ResetShard{});
  const auto r = w.cluster->run(w.dst, w.pull(shards, 1, 1 << 20));
  const auto plan = ReshardPlan::make(w.from, w.to, ReshardPlan::best_colocation(w.from, w.to));
  CHECK(ReshardWorkers::total(r, "reshard/identical") == 4);
  CHECK(ReshardWorkers::total(r, "reshard/sent_bytes") == plan.lower_bound() * 4);
  CHECK(ReshardWorkers::total(r, "reshard/local_bytes") == plan.local_elements() * 4);
  CHECK(plan.local_elements() > 0);
}

TEST_CASE("bench reshard prints the plan's bytes at the lower bound, below the baseline's, and bad layouts are named") {
  test::TempDir dir;
  test::spread_model("qwen3").save(dir.path() / "model");
  const auto r = test::run_cli(FLOTILLA_TEST_CLI, {"bench", "reshard", "--model", (dir.path() / "model").string(), "--from", "fsdp=2",
                                                   "--to", "tp=2", "--repeats", "1", "--json", "-q"}, dir.path());
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["plan_bytes"] == j["lower_bound_bytes"]);
  CHECK(j["identical"] == true);
  CHECK(j["byte_ratio"].get<double>() > 1.5);
  CHECK(j["baseline_bytes"].get<int64_t>() > j["plan_bytes"].get<int64_t>());
  const auto bad = test::run_cli(FLOTILLA_TEST_CLI, {"bench", "reshard", "--model", (dir.path() / "model").string(), "--from", "pp=2"},
                                 dir.path());
  CHECK(bad.code != 0);
  CHECK(test::contains(bad.err, "layout 'pp=2': 'pp=2' is not dp=N, fsdp=N or tp=N"));
  const auto more = test::run_cli(FLOTILLA_TEST_CLI, {"bench", "reshard", "--model", (dir.path() / "model").string(), "--from", "tp=2",
                                                      "--to", "tp=4", "--placement", "colocated"}, dir.path());
  CHECK(more.code != 0);
  CHECK(test::contains(more.err, "colocated placement puts each generation rank beside a training rank"));
}
