// The buffer: a FIFO (or, for off-policy learners, a replay) between env actors and trainers. It
// holds up to `distributed.buffer_capacity` fragments (the oldest are dropped, and counted, when
// the trainers fall behind) and forwards them, actor a's to trainer a mod K.
#include <deque>
#include <random>
#include <zmq.hpp>

#include "actors/rl/common.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"
#include "core/stream.hpp"

namespace flotilla::actors::rl {
namespace {
using namespace std::chrono_literals;

class Buffer final : public runtime::Role {
 public:
  using Role::Role;

  void configure(const core::ConfigView& root) override {
    c_ = DistributedRlConfig::read(root);
    for (int t = 0; t < std::max(1, c_.count("trainer")); ++t) {
      const std::string trainer = "trainer/" + std::to_string(t);
      trainers_.push_back(core::zmq_sample_sender(context_, await_stream(info(), "samples/" + trainer, trainer), info().name(), 200ms));
    }
    receiver_ = core::zmq_sample_receiver(context_, bind_endpoint(info(), c_, "samples"));
    publish_stream(info(), "samples/" + info().name(), receiver_->endpoint());
    metrics_ = std::make_unique<MetricsPusher>(context_, info());
  }

  void add_methods(runtime::Methods&) override {}
  void start() override {
    loop_.start(info().name(), life(), [this] { serve(); });
  }
  void stop() override { loop_.join(); }
  core::Scalars counters() const override { return {{"forwarded", static_cast<double>(forwarded_.load())}}; }

 private:
  void serve() {
    std::mt19937_64 rng(1234 + info().rank);
    std::deque<core::Samples> queue;
    int64_t received = 0, dropped = 0, reported = 0;
    auto last_report = std::chrono::steady_clock::now();
    while (life().checkpoint()) {
      if (auto s = receiver_->receive(queue.empty() ? 200ms : 0ms)) {
        ++received;
        queue.push_back(std::move(*s));
        if (static_cast<int64_t>(queue.size()) > c_.buffer_capacity) {
          queue.pop_front();
          ++dropped;
        }
      }
      if (!queue.empty()) {
        // FIFO forwards (and removes) the oldest fragment; replay forwards a uniformly drawn one
        // and keeps it, for off-policy learners (IMPALA corrects with V-trace).
        const bool replay = c_.buffer_mode == "replay";
        const size_t pick = replay ? rng() % queue.size() : 0;
        core::Samples& s = queue[pick];
        const size_t slash = s.sender.find('/');
        const int actor = slash == std::string::npos ? 0 : std::stoi(s.sender.substr(slash + 1));
        try {
          trainers_[static_cast<size_t>(actor) % trainers_.size()]->send(s.batch, s.policy_version, s.stats);
          s.stats.clear();  // a replayed fragment's episodes count once
          if (!replay) queue.pop_front();
          ++forwarded_;
        } catch (const TimeoutError&) {
          // The trainer is busy: keep the fragment and keep receiving.
        }
      }
      if (forwarded_ > reported && (reported == 0 || std::chrono::steady_clock::now() - last_report > 1s)) {
        reported = forwarded_;
        metrics_->push(forwarded_, {{"received", static_cast<double>(received)},
                                    {"forwarded", static_cast<double>(reported)},
                                    {"dropped_oldest", static_cast<double>(dropped)},
                                    {"queued", static_cast<double>(queue.size())}});
        last_report = std::chrono::steady_clock::now();
      }
    }
  }

  DistributedRlConfig c_;
  zmq::context_t context_{1};
  std::vector<std::unique_ptr<core::SampleSender>> trainers_;
  std::unique_ptr<core::SampleReceiver> receiver_;
  std::unique_ptr<MetricsPusher> metrics_;
  std::atomic<int64_t> forwarded_{0};
  runtime::Loop loop_;
};

}  // namespace

runtime::RoleFactory trainer_role();
runtime::RoleFactory policy_worker_role();
runtime::RoleFactory env_actor_role();

void add_roles(core::Registry<runtime::RoleFactory>& roles) {
  roles.add("trainer", trainer_role());
  roles.add("policy_worker", policy_worker_role());
  roles.add("env_actor", env_actor_role());
  roles.add("buffer", [](const runtime::WorkerInfo& i) { return std::make_unique<Buffer>(i); });
}

}  // namespace flotilla::actors::rl
