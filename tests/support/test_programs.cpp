// A program for exercising `flotilla run` end to end in tests: it counts steps, logs synthetic
// metrics, can fail on purpose and honours Ctrl-C like a training loop would.
#include <chrono>
#include <thread>

#include "controller/run/program.hpp"
#include "core/error.hpp"

namespace {

using namespace flotilla;

class Countdown final : public controller::Program {
 public:
  explicit Countdown(core::ConfigView root) {
    core::ConfigView c = root.section("countdown");
    steps_ = c.get<int64_t>("steps", 100, core::at_least<int64_t>(1));
    step_ms_ = c.get<double>("step_ms", 0.0, core::at_least(0.0));
    fail_at_ = c.get<int64_t>("fail_at", -1);
    mode_ = c.choice("mode", "up", {"up", "down"});
    ignore_stop_ = c.get<bool>("ignore_stop", false);
  }
  int64_t total_steps() const override { return steps_; }
  controller::RunResult run(controller::RunContext& ctx) override {
    controller::RunResult result;
    int64_t done = 0;
    for (int64_t i = 1; i <= steps_; ++i) {
      if (ctx.stop_requested.load() && !ignore_stop_) {
        result.exit_reason = "interrupted";
        break;
      }
      if (i == fail_at_) throw Error("countdown failed at step " + std::to_string(i) + " as configured");
      if (step_ms_ > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(step_ms_));
      const double v = mode_ == "up" ? static_cast<double>(i) : static_cast<double>(steps_ - i);
      ctx.metrics.log(i, {{"charts/episodic_return", v}, {"losses/value_loss", 1.0 / i}});
      ctx.report_progress(i);
      done = i;
    }
    result.summary.push_back({"steps_done", static_cast<double>(done)});
    return result;
  }

 private:
  int64_t steps_, fail_at_;
  double step_ms_;
  std::string mode_;
  bool ignore_stop_;
};

controller::ProgramRegistration countdown("countdown", [](core::ConfigView root, const controller::Experiment&) {
  return std::make_unique<Countdown>(root);
});

}  // namespace

// ---- a worker role for runtime tests ----

#include <ATen/ATen.h>

#include <condition_variable>
#include <mutex>

#include "actors/roles.hpp"
#include "echo_methods.hpp"

namespace {

using flotilla::core::Batch;
using namespace flotilla::test;

// FNV-1a over the bytes of every field, in field order.
double checksum(const Batch& b) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& name : b.names()) {
    const at::Tensor t = b[name].contiguous();
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  return static_cast<double>(h >> 11);  // exact in a double
}

class Echo final : public flotilla::runtime::Role {
 public:
  using Role::Role;
  void configure(const flotilla::core::ConfigView&) override {}
  void add_methods(flotilla::runtime::Methods& m) override {
    namespace rt = flotilla::runtime;
    m.on<EchoRank>([this](const EchoRank&) { return rt::Version{info().rank}; });
    m.on<EchoScale>([this](const EchoScale& s, const Batch& b) {
      Batch out;
      out.set("x", b["x"] * s.factor);
      out.set("rank", at::full({b.size()}, info().rank, at::kLong));
      return rt::Output<rt::Version>{{b.size()}, out};
    });
    m.on<EchoFail>([](const EchoFail& f) -> rt::Void { throw flotilla::Error("failing as asked: " + f.note); });
    m.on<EchoMake>([this](const EchoMake& k) {
      at::manual_seed(static_cast<uint64_t>(100 + info().rank));
      Batch out;
      out.set("f", at::randn({k.n, 64}));
      out.set("i", at::randint(0, 1 << 30, {k.n, 3}, at::kLong));
      const rt::Stats stats{{{"checksum", checksum(out)}, {"rows", static_cast<double>(k.n)}}};
      return rt::Output<rt::Stats>{stats, out};
    });
    m.on<EchoChecksum>([](const EchoChecksum&, const Batch& b) {
      return rt::Stats{{{"checksum", checksum(b)}, {"rows", static_cast<double>(b.size())}}};
    });
    m.on<EchoBlock>([this](const EchoBlock&) {
      std::unique_lock lock(mutex_);
      const bool released = changed_.wait_for(lock, std::chrono::seconds(30), [this] { return released_; });
      released_ = false;
      return rt::Version{released ? 1 : 0};
    });
    m.on<EchoRelease>([this](const EchoRelease&) {
      {
        std::lock_guard lock(mutex_);
        released_ = true;
      }
      changed_.notify_all();
      return rt::Void{};
    });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool released_ = false;
};

flotilla::actors::RoleRegistration echo("echo", [](const flotilla::runtime::WorkerInfo& info) { return std::make_unique<Echo>(info); });
flotilla::actors::RoleRegistration echo2("echo_b", [](const flotilla::runtime::WorkerInfo& info) { return std::make_unique<Echo>(info); });

}  // namespace
