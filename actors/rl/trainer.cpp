// The trainer: takes one fragment from each of its env actors, turns them into an update, and
// publishes the new parameters (each data-parallel rank to its share of the subscribers).
// Data-parallel trainers average their gradients over c10d. Each update's row (losses, the
// episodes that ended in its fragments, env steps consumed) goes to the controller, which merges
// the ranks' rows of one version.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <map>
#include <zmq.hpp>

#include "actors/rl/common.hpp"
#include "algorithms/algorithm.hpp"
#include "algorithms/staleness.hpp"
#include "core/error.hpp"
#include "core/stream.hpp"
#include "runtime/collective.hpp"

namespace flotilla::actors::rl {
namespace {
using namespace std::chrono_literals;

class Trainer final : public runtime::Role {
 public:
  using Role::Role;

  void configure(const core::ConfigView& root) override {
    c_ = DistributedRlConfig::read(root);
    at::set_num_threads(c_.deterministic ? 1 : c_.threads("trainer"));
    at::manual_seed(c_.seed);  // every process starts from the same weights
    policy_ = algorithms::make_policy(root, c_.env);
    algo_ = algorithms::make_algorithm(root.section("algo"), *policy_);
    samples_ = core::zmq_sample_receiver(context_, bind_endpoint(info(), c_, "samples"));
    publish_stream(info(), "samples/" + info().name(), samples_->endpoint());
    // Every rank holds the same parameters and publishes them to the subscribers the parameter
    // plan gives it (parameter_source).
    params_ = core::zmq_parameter_publisher(context_, bind_endpoint(info(), c_, "parameters"), info().name());
    publish_stream(info(), "parameters/" + info().name(), params_->endpoint());
    if (info().world_size > 1) {
      // Data-parallel ranks average their gradients with a Gloo all-reduce before each step.
      collective_ = std::make_unique<runtime::Collective>(std::filesystem::path(info().name_dir).parent_path() / "trainer.c10d",
                                                          info().rank, info().world_size);
      algo_->set_gradient_hook([this](const std::vector<at::Tensor>& grads) { collective_->allreduce_mean(grads); });
    }
    // Actor a ships to trainer a % K (through buffer a % B when there are buffers).
    for (int a = 0; a < c_.count("env_actor"); ++a)
      if (a % info().world_size == info().rank) actors_.push_back(a);
    if (actors_.empty())
      throw ConfigError("trainer " + info().name() + " would get no fragments: use at least as many env actors as trainers");
    metrics_ = std::make_unique<MetricsPusher>(context_, info());
    staleness_ = algorithms::Staleness(c_.max_staleness, static_cast<int64_t>(actors_.size()));
  }

  void add_methods(runtime::Methods& m) override {
    m.on<Publish>([this](const Publish&) {
      publish();
      return runtime::Version{version_};
    });
    m.on<SaveShard>([this](const SaveShard& s) {
      if (version_ != s.step)
        throw Error("trainer " + info().name() + " is at version " + std::to_string(version_.load()) + ", not " + std::to_string(s.step));
      NamedTensors t;
      for (const auto& [name, p] : policy_->named_parameters()) t.emplace_back("policy." + name, p.detach().clone());
      for (auto& x : algo_->state()) t.emplace_back("algo." + x.first, x.second);
      t.emplace_back("rng", gen_.get_state());
      save_shard(s.dir, info(), t, {{"version", version_}, {"trained", trained_}, {"env_steps", env_steps_}});
      return runtime::Version{version_};
    });
    m.on<LoadShard>([this](const LoadShard& l) {
      Shard s = load_shard(l.dir, info());
      policy_->load(s.with_prefix("policy."));
      algo_->load(s.with_prefix("algo."));
      for (const auto& [name, t] : s.tensors)
        if (name == "rng") gen_.set_state(t);
      version_ = s.counters.at("version");
      trained_ = s.counters.at("trained");
      env_steps_ = s.counters.at("env_steps");
      return runtime::Version{version_};
    });
  }

  void start() override {
    loop_.start(info().name(), life(), [this] { train(); });
  }
  void stop() override { loop_.join(); }
  core::Scalars counters() const override {
    return {{"version", static_cast<double>(version_.load())}, {"env_steps", static_cast<double>(env_steps_.load())}};
  }

 private:
  void publish() {
    if (params_) params_->publish(version_, flat());
  }
  core::Batch flat() const {
    core::Batch b;
    b.set("flat", policy_->flat());
    return b;
  }

  struct Collected {
    std::vector<core::Samples> fragments;
    core::Scalars episodes;  // of every fragment received, trained on or not
    int64_t oldest = 0;
  };

  // One fragment from each of this trainer's actors (any fragment fresh enough, or, in a
  // deterministic run, exactly one per actor made with the current version, in actor order).
  Collected collect() {
    Collected got;
    got.oldest = version_;
    auto last_publish = std::chrono::steady_clock::now();
    while (got.fragments.size() < actors_.size() && life().checkpoint()) {
      auto s = samples_->receive(200ms);
      // A subscriber that joined late missed the last parameters: send them again now and then.
      if (std::chrono::steady_clock::now() - last_publish > 1s) {
        publish();
        last_publish = std::chrono::steady_clock::now();
      }
      if (!s) continue;
      ++received_;
      if (!first_time(*s)) {
        ++duplicates_;
        continue;
      }
      for (const auto& kv : s->stats)
        if (kv.first.rfind("episode/", 0) == 0 || kv.first == "env_steps") got.episodes.push_back(kv);
      const bool stale = c_.deterministic ? s->policy_version != version_ : !staleness_.fresh(s->policy_version, version_);
      const bool repeat = c_.deterministic && std::any_of(got.fragments.begin(), got.fragments.end(),
                                                          [&](const core::Samples& f) { return f.sender == s->sender; });
      if (stale || repeat) {
        ++stale_;  // on-policy updates must not learn from fragments made by parameters too old
        continue;
      }
      got.oldest = std::min(got.oldest, s->policy_version);
      got.fragments.push_back(std::move(*s));
    }
    if (c_.deterministic)
      std::sort(got.fragments.begin(), got.fragments.end(), [](const auto& a, const auto& b) {
        return a.sender.size() != b.sender.size() ? a.sender.size() < b.sender.size() : a.sender < b.sender;
      });
    return got;
  }

  // Whether a fragment is new: each actor incarnation's fragments come in order over one stream,
  // so one whose index is not past the last taken from it was taken already (a replay buffer
  // sends fragments again on purpose).
  bool first_time(const core::Samples& s) {
    if (c_.buffer_mode == "replay") return true;
    double incarnation = -1, index = -1;
    for (const auto& [k, v] : s.stats) {
      if (k == "fragment/incarnation") incarnation = v;
      if (k == "fragment/index") index = v;
    }
    if (index < 0) return true;
    const std::string key = s.sender + "@" + std::to_string(static_cast<int64_t>(incarnation));
    auto [it, fresh] = last_index_.emplace(key, static_cast<int64_t>(index));
    if (fresh) return true;
    if (static_cast<int64_t>(index) <= it->second) return false;
    it->second = static_cast<int64_t>(index);
    return true;
  }

  void train() {
    while (life().checkpoint()) {
      Collected got = collect();
      if (!every_rank(got.fragments.size() == actors_.size())) break;  // stopping
      std::vector<core::Batch> batches;
      for (const auto& f : got.fragments) batches.push_back(algo_->prepare(f.batch, *policy_));
      const core::Batch batch = core::Batch::concat(batches);
      const auto t0 = std::chrono::steady_clock::now();
      core::Scalars row = algo_->update(batch, std::min(1.0, static_cast<double>(trained_) / c_.total_steps), gen_);
      trained_ += batch.size();
      int64_t steps = 0;
      core::Scalars episodes;
      for (const auto& [k, v] : got.episodes) {
        if (k == "env_steps") steps += static_cast<int64_t>(v);
        else episodes.emplace_back(k, v);
      }
      ++version_;
      publish();
      row.push_back({"perf/policy_lag", static_cast<double>(version_ - 1 - got.oldest)});
      row.push_back({"perf/stale_fragments_dropped", static_cast<double>(stale_)});
      row.push_back({"perf/fragments_received", static_cast<double>(received_)});
      row.push_back({"perf/duplicate_fragments", static_cast<double>(duplicates_)});
      row.push_back({"timing_s/update", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
      row.push_back({"trainer/version", static_cast<double>(version_.load())});
      row.insert(row.end(), episodes.begin(), episodes.end());
      env_steps_ += steps;
      metrics_->push(env_steps_, row);
      // No update past train.total_steps, however late the controller's stop arrives.
      if (run_env_steps() >= c_.total_steps) break;
    }
  }

  // Whether `ready` holds on every data-parallel rank: all of them update or none does, so no
  // rank is left waiting in a gradient all-reduce the others never join.
  bool every_rank(bool ready) {
    if (!collective_) return ready;
    at::Tensor count = at::full({1}, ready ? 1 : 0, at::kLong);
    collective_->all_reduce(count);
    return count.item<int64_t>() == collective_->size();
  }

  // The run's env steps so far, the same on every rank: each counts the fragments of its own
  // actors, stale ones too, so the ranks' counts differ and must be summed (a rank stopping on a
  // count of its own would leave the others in the next all-reduce).
  int64_t run_env_steps() {
    if (!collective_) return env_steps_;
    at::Tensor total = at::full({1}, env_steps_.load(), at::kLong);
    collective_->all_reduce(total);
    return total.item<int64_t>();
  }

  DistributedRlConfig c_;
  zmq::context_t context_{1};
  std::unique_ptr<models::Policy> policy_;
  std::unique_ptr<algorithms::Algorithm> algo_;
  std::unique_ptr<core::SampleReceiver> samples_;
  std::unique_ptr<core::ParameterPublisher> params_;
  std::unique_ptr<MetricsPusher> metrics_;
  std::unique_ptr<runtime::Collective> collective_;
  std::vector<int> actors_;
  algorithms::Staleness staleness_{1, 1};
  at::Generator gen_ = at::make_generator<at::CPUGeneratorImpl>(12345);
  std::atomic<int64_t> version_{0}, env_steps_{0};
  int64_t trained_ = 0, stale_ = 0, received_ = 0, duplicates_ = 0;
  std::map<std::string, int64_t> last_index_;  // by actor incarnation: the last fragment taken
  runtime::Loop loop_;  // last: joined before the sockets above go away
};

}  // namespace

runtime::RoleFactory trainer_role() {
  return [](const runtime::WorkerInfo& i) { return std::make_unique<Trainer>(i); };
}

}  // namespace flotilla::actors::rl
