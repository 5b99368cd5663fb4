#include "actors/rl_roles.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <deque>
#include <functional>
#include <random>
#include <filesystem>
#include <thread>
#include <zmq.hpp>

#include "actors/collective.hpp"
#include "algorithms/advantages.hpp"
#include "algorithms/algorithm.hpp"
#include "core/error.hpp"
#include "core/name_service.hpp"
#include "core/names.hpp"
#include "core/stream.hpp"
#include "core/wire.hpp"
#include "envs/registry.hpp"
#include "models/policy.hpp"

namespace flotilla::actors {
using namespace std::chrono_literals;

RunConfig::RunConfig(const std::string& yaml)
    : config(std::make_unique<core::Config>(core::ConfigTree::load_string(yaml, "the run's config"))) {}

MetricsPusher::MetricsPusher(zmq::context_t& context, const WorkerInfo& info)
    : socket_(std::make_unique<zmq::socket_t>(context, zmq::socket_type::push)), name_(info.name()) {
  auto names = core::directory_name_service(info.name_dir);
  socket_->set(zmq::sockopt::linger, 1000);
  socket_->set(zmq::sockopt::sndhwm, 1000);
  socket_->connect(names->wait(core::names::controller(info.experiment, info.trial, "metrics"), 60s, "the controller"));
}

MetricsPusher::~MetricsPusher() = default;

void MetricsPusher::push(int64_t step, const core::Scalars& values) {
  core::OutMessage m(name_);
  auto metrics = m.envelope().initMetrics();
  metrics.setStep(step);
  auto list = metrics.initValues(static_cast<unsigned>(values.size()));
  for (unsigned i = 0; i < values.size(); ++i) {
    list[i].setName(values[i].first);
    list[i].setValue(values[i].second);
  }
  m.send(*socket_);
}

namespace {

// A role's entry in the run's `workers:` list: how many ranks (0: none) and their threads.
struct RoleEntry {
  int count = 0;
  int threads = 1;
};
RoleEntry role_entry(const core::ConfigView& root, const std::string& role) {
  for (auto w : root.list("workers"))
    if (w.get<std::string>("role", "") == role) return {w.get<int>("count", 1), w.get<int>("threads", 1)};
  return {};
}

void set_threads(const core::ConfigView& root, const std::string& role) {
  at::set_num_threads(role_entry(root, role).threads);
}

// What every RL role builds from the config: the env's spaces and a policy initialized from the
// run's seed, so every process starts from the same weights.
std::unique_ptr<models::Policy> make_policy(const core::ConfigView& root) {
  const envs::EnvSpec spec = envs::env_spec(root.section("env"));
  at::manual_seed(static_cast<uint64_t>(root.get<int64_t>("seed", 1)));
  return models::make_policy(root, spec);
}

// Where a worker's stream listens: TCP on the worker's host, or an IPC socket in the run
// directory when `distributed.transport: ipc` (one machine only).
std::string bind_endpoint(const WorkerInfo& info, const core::ConfigView& root, const std::string& stream) {
  if (root.section("distributed").get<std::string>("transport", "tcp") != "ipc") return "tcp://" + info.host + ":*";
  std::filesystem::path dir = std::filesystem::path(info.name_dir).parent_path() / "sockets";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / (info.role + "-" + std::to_string(info.rank) + "-" + stream)).string();
  if (path.size() > 100)
    throw ConfigError("distributed.transport ipc: the socket path '" + path +
                      "' is too long for a Unix socket; use a shorter run directory or tcp");
  return "ipc://" + path;
}

core::Batch flat_parameters(const models::Policy& policy) {
  core::Batch b;
  b.set("flat", policy.flat());
  return b;
}

// A thread that runs `body` until the role is destroyed; an exception is logged and ends the
// process, so the controller sees the worker die and names it.
class Loop {
 public:
  template <class F>
  void start(const std::string& who, const Role& role, F body) {
    thread_ = std::thread([this, who, body, &role] {
      try {
        body(stop_);
      } catch (const std::exception& e) {
        if (stop_.load() || role.stopping()) return;  // peers leaving during shutdown, not a failure
        spdlog::error("{}: {}", who, e.what());
        spdlog::default_logger()->flush();
        std::_Exit(1);
      }
    });
  }
  ~Loop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // A paused loop finishes its current step and waits; bodies call wait_if_paused() between steps.
  void pause(bool paused) { paused_ = paused; }
  bool paused() const { return paused_.load(); }
  bool running() const { return thread_.joinable(); }
  void wait_if_paused() {
    while (paused_.load() && !stop_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

 private:
  std::atomic<bool> stop_{false}, paused_{false};
  std::thread thread_;
};

// pause / resume / poll, the same for every RL role.
void add_lifecycle(MethodTable& m, Loop& loop, const std::function<std::string()>& counters) {
  m.add("pause", [&loop](const std::string&, const core::Batch&) {
    loop.pause(true);
    return CallResult{"paused", {}};
  });
  m.add("resume", [&loop](const std::string&, const core::Batch&) {
    loop.pause(false);
    return CallResult{"running", {}};
  });
  m.add("poll", [&loop, counters](const std::string&, const core::Batch&) {
    const std::string state = !loop.running() ? "configured" : loop.paused() ? "paused" : "running";
    return CallResult{"{state: " + state + ", " + counters() + "}", {}};
  });
}

// ---- trainer: fragments in, PPO updates, parameters out ----

class Trainer final : public Role {
 public:
  explicit Trainer(const WorkerInfo& info) : info_(info) {}
  void add_methods(MethodTable& m) override {
    m.add("configure", [this](const std::string& yaml, const core::Batch&) {
      run_ = std::make_unique<RunConfig>(yaml);
      auto root = run_->root();
      set_threads(root, "trainer");
      policy_ = make_policy(root);
      algo_ = algorithms::make_algorithm(root.section("algo"), *policy_);
      total_steps_ = root.section("train").get<int64_t>("total_steps", 500000);
      max_staleness_ = root.section("distributed").get<int64_t>("max_staleness", algo_->takes_gae_batches() ? 1 : 1000000);
      auto names = core::directory_name_service(info_.name_dir);
      samples_ = core::zmq_sample_receiver(context_, bind_endpoint(info_, root, "samples"));
      names->put(core::names::stream_endpoint(info_.experiment, info_.trial, "samples/" + info_.name()), samples_->endpoint());
      if (info_.rank == 0) {  // every rank holds the same parameters; rank 0 publishes them
        params_ = core::zmq_parameter_publisher(context_, bind_endpoint(info_, root, "parameters"), info_.name());
        names->put(core::names::stream_endpoint(info_.experiment, info_.trial, "parameters/trainer/0"), params_->endpoint());
      }
      if (info_.world_size > 1) {
        // Data-parallel ranks average their gradients with a Gloo all-reduce before each step.
        collective_ = std::make_unique<Collective>(std::filesystem::path(info_.name_dir).parent_path() / "trainer.c10d",
                                                   info_.rank, info_.world_size);
        algo_->set_gradient_hook([this](const std::vector<at::Tensor>& grads) { collective_->allreduce_mean(grads); });
      }
      metrics_ = std::make_unique<MetricsPusher>(context_, info_);
      return CallResult{"configured", {}};
    });
    add_lifecycle(m, loop_, [this] { return "version: " + std::to_string(version_); });
    m.add("publish", [this](const std::string&, const core::Batch&) {
      if (params_) params_->publish(version_, flat_parameters(*policy_));
      return CallResult{std::to_string(version_), {}};
    });
    m.add("start", [this](const std::string& args, const core::Batch&) {
      // Actor a ships to trainer a % K: this rank waits for one fragment from each of its actors.
      const int actors = std::stoi(args.empty() ? "1" : args);
      int fragments = 0;
      for (int a = 0; a < actors; ++a) fragments += a % info_.world_size == info_.rank;
      if (fragments == 0)
        throw ConfigError("trainer " + info_.name() + " would get no fragments: use at least as many env actors as trainers");
      loop_.start(info_.name(), *this, [this, fragments](std::atomic<bool>& stop) { train(fragments, stop); });
      return CallResult{"started", {}};
    });
  }

 private:
  void train(int fragments_per_update, std::atomic<bool>& stop) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(12345);
    int64_t trained = 0;
    while (!stop.load()) {
      loop_.wait_if_paused();
      std::vector<core::Batch> batches;
      int64_t oldest = version_;
      auto last_publish = std::chrono::steady_clock::now();
      while (static_cast<int>(batches.size()) < fragments_per_update && !stop.load()) {
        auto s = samples_->receive(200ms);
        // A subscriber that joined late missed the last parameters: send them again now and then.
        if (params_ && std::chrono::steady_clock::now() - last_publish > 1s) {
          params_->publish(version_, flat_parameters(*policy_));
          last_publish = std::chrono::steady_clock::now();
        }
        if (!s) continue;
        // On-policy updates must not learn from fragments made by parameters too old.
        if (version_ - s->policy_version > max_staleness_) {
          ++stale_;
          continue;
        }
        oldest = std::min(oldest, s->policy_version);
        batches.push_back(algo_->prepare(s->batch, *policy_));
      }
      if (stop.load()) break;
      core::Batch batch = core::Batch::concat(batches);
      const auto t0 = std::chrono::steady_clock::now();
      core::Scalars stats = algo_->update(batch, std::min(1.0, static_cast<double>(trained) / total_steps_), gen);
      trained += batch.size();
      ++version_;
      if (params_) params_->publish(version_, flat_parameters(*policy_));
      stats.push_back({"perf/policy_lag", static_cast<double>(version_ - 1 - oldest)});
      stats.push_back({"perf/stale_fragments_dropped", static_cast<double>(stale_)});
      stats.push_back({"timing_s/update", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
      stats.push_back({"trainer/version", static_cast<double>(version_)});
      if (info_.rank == 0) metrics_->push(trained * info_.world_size, stats);
    }
  }

  WorkerInfo info_;
  zmq::context_t context_{1};
  std::unique_ptr<RunConfig> run_;
  std::unique_ptr<models::Policy> policy_;
  std::unique_ptr<algorithms::Algorithm> algo_;
  std::unique_ptr<core::SampleReceiver> samples_;
  std::unique_ptr<core::ParameterPublisher> params_;
  std::unique_ptr<MetricsPusher> metrics_;
  std::unique_ptr<Collective> collective_;
  int64_t version_ = 0, total_steps_ = 0, max_staleness_ = 1, stale_ = 0;
  Loop loop_;  // last: joined before the sockets above go away
};

// ---- policy worker: batched inference for many actors, parameters from the trainer ----

class PolicyWorker final : public Role {
 public:
  explicit PolicyWorker(const WorkerInfo& info) : info_(info) {}
  void add_methods(MethodTable& m) override {
    m.add("configure", [this](const std::string& yaml, const core::Batch&) {
      run_ = std::make_unique<RunConfig>(yaml);
      auto root = run_->root();
      set_threads(root, "policy_worker");
      policy_ = make_policy(root);
      auto d = root.section("distributed");
      max_batch_ = d.get<int64_t>("max_batch", 256, core::at_least<int64_t>(1));
      max_delay_ = std::chrono::milliseconds(d.get<int64_t>("max_delay_ms", 2, core::at_least<int64_t>(0)));
      auto names = core::directory_name_service(info_.name_dir);
      params_ = core::zmq_parameter_subscriber(
          context_, names->wait(core::names::stream_endpoint(info_.experiment, info_.trial, "parameters/trainer/0"), 60s,
                                "trainer/0"));
      server_ = core::zmq_inference_server(context_, bind_endpoint(info_, root, "inference"), info_.name());
      names->put(core::names::stream_endpoint(info_.experiment, info_.trial, "inference/" + info_.name()),
                 server_->endpoint());
      return CallResult{"configured", {}};
    });
    m.add("start", [this](const std::string&, const core::Batch&) {
      loop_.start(info_.name(), *this, [this](std::atomic<bool>& stop) { serve(stop); });
      return CallResult{"started", {}};
    });
    add_lifecycle(m, loop_, [this] { return "served: " + std::to_string(served_); });
  }

 private:
  void serve(std::atomic<bool>& stop) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1000 + info_.rank);
    int64_t version = -1;
    while (!stop.load()) {
      if (auto p = params_->latest(version < 0 ? 200ms : 0ms)) {
        policy_->load_flat(p->tensors["flat"]);
        version = p->version;
      }
      if (version < 0) continue;  // no parameters yet: actors wait
      auto batch = server_->gather(max_batch_, max_delay_, 100ms);
      if (!batch) continue;
      models::ActOutput out = policy_->act(batch->inputs["obs"], false, gen);
      core::Batch reply;
      reply.set("action", out.action);
      reply.set("log_prob", out.log_prob);
      reply.set("value", out.value);
      server_->reply(*batch, reply, version);
      served_ += batch->inputs.size();
      loop_.wait_if_paused();
    }
  }

  WorkerInfo info_;
  zmq::context_t context_{1};
  std::unique_ptr<RunConfig> run_;
  std::unique_ptr<models::Policy> policy_;
  std::unique_ptr<core::ParameterSubscriber> params_;
  std::unique_ptr<core::InferenceServer> server_;
  int64_t max_batch_ = 256;
  std::chrono::milliseconds max_delay_{2};
  std::atomic<int64_t> served_{0};
  Loop loop_;
};

// ---- env actor: steps an env batch, asks a policy worker for actions, ships fragments ----

class EnvActor final : public Role {
 public:
  explicit EnvActor(const WorkerInfo& info) : info_(info) {}
  void add_methods(MethodTable& m) override {
    m.add("configure", [this](const std::string& yaml, const core::Batch&) {
      run_ = std::make_unique<RunConfig>(yaml);
      auto root = run_->root();
      set_threads(root, "env_actor");
      // An env ring: while one batch waits for its actions, the next one steps.
      const int ring = root.section("distributed").get<int>("env_ring", 1, core::in_range(1, 8));
      for (int k = 0; k < ring; ++k) {
        envs_.push_back(envs::make_env(root.section("env")));
        envs_.back()->reset(static_cast<uint64_t>(root.get<int64_t>("seed", 1)) * 100000 +
                            static_cast<uint64_t>(info_.rank) * 100 + static_cast<uint64_t>(k) + 1);
      }
      fragment_steps_ = root.section("train").get<int64_t>("num_steps", 128, core::at_least<int64_t>(1));
      auto names = core::directory_name_service(info_.name_dir);
      if (root.section("distributed").get<bool>("inline_policy", false)) {
        // Inline: this actor runs the policy itself, with parameters straight from the trainer.
        policy_ = make_policy(root);
        params_ = core::zmq_parameter_subscriber(
            context_, names->wait(core::names::stream_endpoint(info_.experiment, info_.trial, "parameters/trainer/0"), 60s,
                                  "trainer/0"));
      } else {
        const int policy_workers = std::max(1, role_entry(root, "policy_worker").count);
        const std::string policy = "policy_worker/" + std::to_string(info_.rank % policy_workers);
        inference_ = core::zmq_inference_client(
            context_,
            names->wait(core::names::stream_endpoint(info_.experiment, info_.trial, "inference/" + policy), 60s, policy),
            info_.name());
      }
      // Fragments go to a buffer when the run has one, else straight to a trainer.
      const int trainers = std::max(1, role_entry(root, "trainer").count), buffers = role_entry(root, "buffer").count;
      const std::string target = buffers > 0 ? "buffer/" + std::to_string(info_.rank % buffers)
                                             : "trainer/" + std::to_string(info_.rank % trainers);
      samples_ = core::zmq_sample_sender(
          context_, names->wait(core::names::stream_endpoint(info_.experiment, info_.trial, "samples/" + target), 60s, target),
          info_.name());
      metrics_ = std::make_unique<MetricsPusher>(context_, info_);
      return CallResult{"configured", {}};
    });
    m.add("start", [this](const std::string&, const core::Batch&) {
      loop_.start(info_.name(), *this, [this](std::atomic<bool>& stop) { act(stop); });
      return CallResult{"started", {}};
    });
    add_lifecycle(m, loop_, [this] { return "env_steps: " + std::to_string(steps_done_.load()); });
  }

 private:
  struct Track {  // one env batch's part of the fragment being collected
    std::vector<at::Tensor> obs, action, log_prob, value, reward, terminated, truncated, final_obs;
    uint64_t pending = 0;  // the inference request in flight for this batch
    core::Batch request;
  };

  void act(std::atomic<bool>& stop) {
    const int64_t T = fragment_steps_;
    const size_t ring = envs_.size();
    std::vector<Track> tracks(ring);
    auto ask = [&](size_t k) {
      tracks[k].request = core::Batch();
      tracks[k].request.set("obs", envs_[k]->obs().clone());
      if (!policy_) tracks[k].pending = inference_->submit(tracks[k].request);
    };
    for (size_t k = 0; k < ring; ++k) ask(k);
    int64_t steps = 0;
    double wait_s = 0;
    const auto started = std::chrono::steady_clock::now();
    while (!stop.load()) {
      core::Scalars episodes;
      int64_t oldest = INT64_MAX;
      for (int64_t t = 0; t < T && !stop.load(); ++t) {
        for (size_t k = 0; k < ring && !stop.load(); ++k) {
          envs::VecEnv& env = *envs_[k];
          Track& tr = tracks[k];
          const auto w0 = std::chrono::steady_clock::now();
          auto [reply, version] = policy_ ? act_inline(tr.request, stop) : inference_->wait(tr.pending, 60s);
          wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
          oldest = std::min(oldest, version);
          at::Tensor a = reply["action"].clone();
          env.step(env.clip_actions(a));
          tr.obs.push_back(tr.request["obs"]);
          tr.action.push_back(a);
          tr.log_prob.push_back(reply["log_prob"].clone());
          tr.value.push_back(reply["value"].clone());
          tr.reward.push_back(env.reward().clone());
          tr.terminated.push_back(env.terminated().clone());
          tr.truncated.push_back(env.truncated().clone());
          tr.final_obs.push_back(env.final_obs().clone());
          ask(k);  // the next request goes out before the other batches step
          envs::FinishedEpisodes ended = envs::finished_episodes(
              env.terminated() | env.truncated(), env.episode_return(), env.episode_length(), env.episode_won(),
              env.spec().layout.agents);
          for (size_t i = 0; i < ended.returns.size(); ++i) {
            episodes.push_back({"episode/return", ended.returns[i]});
            episodes.push_back({"episode/length", ended.lengths[i]});
            if (i < ended.wins.size()) episodes.push_back({"episode/won", ended.wins[i]});
          }
        }
      }
      if (stop.load()) break;
      // Env-major, so the bootstrap observation ([N, ...]) shares the batch's first dimension;
      // the ring's batches are rows of one fragment.
      std::vector<core::Batch> parts;
      for (size_t k = 0; k < ring; ++k) {
        Track& tr = tracks[k];
        auto em = [](std::vector<at::Tensor>& v) {
          at::Tensor x = at::stack(v, 1);
          v.clear();
          return x;
        };
        core::Batch f;
        f.set("obs", em(tr.obs));
        f.set("action", em(tr.action));
        f.set("log_prob", em(tr.log_prob));
        f.set("value", em(tr.value));
        f.set("reward", em(tr.reward));
        f.set("terminated", em(tr.terminated));
        f.set("truncated", em(tr.truncated));
        f.set("final_obs", em(tr.final_obs));
        f.set("bootstrap_obs", envs_[k]->obs().clone());
        parts.push_back(std::move(f));
      }
      samples_->send(core::Batch::concat(parts), oldest);
      // An inline actor outruns the trainer; it waits for parameters newer than those it used,
      // so its next fragment is on-policy for the next update.
      if (policy_)
        while (version_ <= oldest && !stop.load())
          if (auto p = params_->latest(200ms)) {
            policy_->load_flat(p->tensors["flat"]);
            version_ = p->version;
          }
      int64_t fragment_steps = 0;
      // Env steps: a multi-agent env's agent rows move all its agents at once.
      for (const auto& e : envs_) fragment_steps += T * e->num_envs() / std::max<int64_t>(1, e->spec().layout.agents);
      steps += fragment_steps;
      steps_done_ = steps;
      loop_.wait_if_paused();
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      episodes.push_back({"env_steps", static_cast<double>(fragment_steps)});
      episodes.push_back({"perf/actor_wait_share", wait_s / std::max(elapsed, 1e-9)});
      metrics_->push(steps, episodes);
    }
  }

  // The policy step in this process: the newest parameters first (waiting for the first ones).
  std::pair<core::Batch, int64_t> act_inline(const core::Batch& request, std::atomic<bool>& stop) {
    while (true) {
      if (auto p = params_->latest(version_ < 0 ? 200ms : 0ms)) {
        policy_->load_flat(p->tensors["flat"]);
        version_ = p->version;
      }
      if (version_ >= 0 || stop.load()) break;
    }
    models::ActOutput out = policy_->act(request["obs"], false, gen_);
    core::Batch reply;
    reply.set("action", out.action);
    reply.set("log_prob", out.log_prob);
    reply.set("value", out.value);
    return {reply, version_};
  }

  WorkerInfo info_;
  zmq::context_t context_{1};
  std::unique_ptr<RunConfig> run_;
  std::vector<std::unique_ptr<envs::VecEnv>> envs_;
  std::unique_ptr<models::Policy> policy_;  // inline mode only
  std::unique_ptr<core::ParameterSubscriber> params_;
  at::Generator gen_ = at::make_generator<at::CPUGeneratorImpl>(777);
  int64_t version_ = -1;
  std::unique_ptr<core::InferenceClient> inference_;
  std::unique_ptr<core::SampleSender> samples_;
  std::unique_ptr<MetricsPusher> metrics_;
  int64_t fragment_steps_ = 128;
  std::atomic<int64_t> steps_done_{0};
  Loop loop_;
};

// ---- buffer: a FIFO between actors and trainers ----

// Holds up to `distributed.buffer_capacity` fragments (the oldest are dropped, and counted, when
// the trainers fall behind) and forwards them in arrival order, actor a's to trainer a mod K.
class Buffer final : public Role {
 public:
  explicit Buffer(const WorkerInfo& info) : info_(info) {}
  void add_methods(MethodTable& m) override {
    m.add("configure", [this](const std::string& yaml, const core::Batch&) {
      run_ = std::make_unique<RunConfig>(yaml);
      auto root = run_->root();
      capacity_ = root.section("distributed").get<int64_t>("buffer_capacity", 64, core::at_least<int64_t>(1));
      replay_ = root.section("distributed").get<std::string>("buffer_mode", "fifo") == "replay";
      const int trainers = std::max(1, role_entry(root, "trainer").count);
      auto names = core::directory_name_service(info_.name_dir);
      for (int t = 0; t < trainers; ++t) {
        const std::string trainer = "trainer/" + std::to_string(t);
        trainers_.push_back(core::zmq_sample_sender(
            context_, names->wait(core::names::stream_endpoint(info_.experiment, info_.trial, "samples/" + trainer), 60s, trainer),
            info_.name(), 200ms));
      }
      receiver_ = core::zmq_sample_receiver(context_, bind_endpoint(info_, root, "samples"));
      names->put(core::names::stream_endpoint(info_.experiment, info_.trial, "samples/" + info_.name()), receiver_->endpoint());
      metrics_ = std::make_unique<MetricsPusher>(context_, info_);
      return CallResult{"configured", {}};
    });
    m.add("start", [this](const std::string&, const core::Batch&) {
      loop_.start(info_.name(), *this, [this](std::atomic<bool>& stop) { serve(stop); });
      return CallResult{"started", {}};
    });
    add_lifecycle(m, loop_, [this] { return "forwarded: " + std::to_string(forwarded_.load()); });
  }

 private:
  void serve(std::atomic<bool>& stop) {
    std::mt19937_64 rng(1234 + info_.rank);
    std::deque<core::Samples> queue;
    int64_t received = 0, forwarded = 0, dropped = 0, reported = 0;
    auto last_report = std::chrono::steady_clock::now();
    while (!stop.load()) {
      if (auto s = receiver_->receive(queue.empty() ? 200ms : 0ms)) {
        ++received;
        queue.push_back(std::move(*s));
        if (static_cast<int64_t>(queue.size()) > capacity_) {
          queue.pop_front();
          ++dropped;
        }
      }
      if (!queue.empty()) {
        // FIFO forwards (and removes) the oldest fragment; replay forwards a uniformly drawn one
        // and keeps it, for off-policy learners (IMPALA corrects with V-trace).
        const size_t pick = replay_ ? rng() % queue.size() : 0;
        const core::Samples& s = queue[pick];
        const size_t slash = s.sender.find('/');
        const int actor = slash == std::string::npos ? 0 : std::stoi(s.sender.substr(slash + 1));
        try {
          trainers_[actor % trainers_.size()]->send(s.batch, s.policy_version);
          if (!replay_) queue.pop_front();
          ++forwarded;
          forwarded_ = forwarded;
        } catch (const TimeoutError&) {
          // The trainer is busy: keep the fragment and keep receiving.
        }
      }
      loop_.wait_if_paused();
      if (forwarded > reported && (reported == 0 || std::chrono::steady_clock::now() - last_report > 1s)) {
        reported = forwarded;
        metrics_->push(forwarded, {{"received", static_cast<double>(received)},
                                   {"forwarded", static_cast<double>(forwarded)},
                                   {"dropped_oldest", static_cast<double>(dropped)},
                                   {"queued", static_cast<double>(queue.size())}});
        last_report = std::chrono::steady_clock::now();
      }
    }
  }

  WorkerInfo info_;
  zmq::context_t context_{1};
  std::unique_ptr<RunConfig> run_;
  std::vector<std::unique_ptr<core::SampleSender>> trainers_;
  std::unique_ptr<core::SampleReceiver> receiver_;
  std::unique_ptr<MetricsPusher> metrics_;
  int64_t capacity_ = 64;
  bool replay_ = false;
  std::atomic<int64_t> forwarded_{0};
  Loop loop_;
};

}  // namespace

void register_rl_roles() {
  register_role("trainer", [](const WorkerInfo& i) { return std::make_unique<Trainer>(i); });
  register_role("policy_worker", [](const WorkerInfo& i) { return std::make_unique<PolicyWorker>(i); });
  register_role("env_actor", [](const WorkerInfo& i) { return std::make_unique<EnvActor>(i); });
  register_role("buffer", [](const WorkerInfo& i) { return std::make_unique<Buffer>(i); });
}

}  // namespace flotilla::actors
