// The policy worker: batched inference for many env actors, with parameters from the trainer. In
// a deterministic run it answers each request on its own, with the request's seed and parameters
// of the version the request asks for, so actions do not depend on how requests were batched.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <deque>
#include <zmq.hpp>

#include "actors/rl/common.hpp"
#include "algorithms/algorithm.hpp"
#include "core/stream.hpp"
#include "models/policy.hpp"

namespace flotilla::actors::rl {
namespace {
using namespace std::chrono_literals;

class PolicyWorker final : public runtime::Role {
 public:
  using Role::Role;

  void configure(const core::ConfigView& root) override {
    c_ = DistributedRlConfig::read(root);
    at::set_num_threads(c_.deterministic ? 1 : c_.threads("policy_worker"));
    at::manual_seed(c_.seed);
    policy_ = algorithms::make_policy(root, c_.env);
    params_ = subscribe_parameters(context_, info(), c_, policy_->flat().numel(), c_.count("policy_worker"));
    server_ = core::zmq_inference_server(context_, bind_endpoint(info(), c_, "inference"), info().name());
    publish_stream(info(), "inference/" + info().name(), server_->endpoint());
  }

  void add_methods(runtime::Methods&) override {}
  void start() override {
    loop_.start(info().name(), life(), [this] { serve(); });
  }
  void stop() override { loop_.join(); }
  core::Scalars counters() const override { return {{"served", static_cast<double>(served_.load())}}; }

 private:
  // Loads the newest parameters that arrived, waiting up to `wait` for some.
  void refresh(std::chrono::milliseconds wait) {
    if (auto p = params_->latest(wait)) {
      policy_->load_flat(p->tensors["flat"]);
      version_ = p->version;
    }
  }

  void reply(const core::InferenceBatch& batch, const models::ActOutput& out) {
    core::Batch r;
    r.set("action", out.action);
    r.set("log_prob", out.log_prob);
    r.set("value", out.value);
    server_->reply(batch, r, version_);
    served_ += batch.inputs.size();
  }

  void serve() {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1000 + info().rank);
    const auto max_delay = std::chrono::milliseconds(c_.max_delay_ms);
    // A deterministic run's requests, one each, that ask for parameters not here yet; the others
    // are answered meanwhile (an actor ahead must not hold up one behind).
    std::deque<core::InferenceBatch> waiting;
    while (life().checkpoint()) {
      refresh(version_ < 0 ? 200ms : 0ms);
      if (version_ < 0) continue;  // no parameters yet: actors wait
      if (!c_.deterministic) {
        if (auto batch = server_->gather(c_.max_batch, max_delay, 100ms)) reply(*batch, policy_->act(batch->inputs["obs"], false, gen));
        continue;
      }
      for (auto it = waiting.begin(); it != waiting.end();) {
        if (it->parts.front().tags.min_version > version_) {
          ++it;
          continue;
        }
        answer(*it, gen);
        it = waiting.erase(it);
      }
      auto batch = server_->gather(1, max_delay, waiting.empty() ? 100ms : 5ms);
      if (!batch) continue;
      if (batch->parts.front().tags.min_version > version_) waiting.push_back(std::move(*batch));
      else answer(*batch, gen);
    }
  }

  // One request on its own, sampled from its seed.
  void answer(const core::InferenceBatch& one, at::Generator& gen) {
    gen.set_current_seed(one.parts.front().tags.seed);
    reply(one, policy_->act(one.inputs["obs"], false, gen));
  }

  DistributedRlConfig c_;
  zmq::context_t context_{1};
  std::unique_ptr<models::Policy> policy_;
  std::unique_ptr<core::ParameterSubscriber> params_;
  std::unique_ptr<core::InferenceServer> server_;
  int64_t version_ = -1;
  std::atomic<int64_t> served_{0};
  runtime::Loop loop_;
};

}  // namespace

runtime::RoleFactory policy_worker_role() {
  return [](const runtime::WorkerInfo& i) { return std::make_unique<PolicyWorker>(i); };
}

}  // namespace flotilla::actors::rl
