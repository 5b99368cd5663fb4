// A program for exercising `flotilla run` end to end in tests: it counts steps, logs synthetic
// metrics, can fail on purpose and honours Ctrl-C like a training loop would.
#include <chrono>
#include <thread>

#include "controller/program.hpp"
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

#include "actors/worker.hpp"

namespace {

class Echo final : public flotilla::actors::Role {
 public:
  explicit Echo(const flotilla::actors::WorkerInfo& info) : info_(info) {}
  void add_methods(flotilla::actors::MethodTable& m) override {
    using flotilla::actors::CallResult;
    using flotilla::core::Batch;
    m.add("rank", [this](const std::string&, const Batch&) { return CallResult{std::to_string(info_.rank), {}}; });
    // Doubles x and says how many rows it got, so dispatch and chunking can be checked.
    m.add("double", [this](const std::string&, const Batch& b) {
      Batch out;
      out.set("x", b["x"] * 2);
      out.set("rank", at::full({b.size()}, info_.rank, at::kLong));
      return CallResult{std::to_string(b.size()), out};
    });
    m.add("fail", [](const std::string& args, const Batch&) -> CallResult {
      throw flotilla::Error("failing as asked: " + args);
    });
  }

 private:
  flotilla::actors::WorkerInfo info_;
};

flotilla::actors::RoleRegistration echo("echo", [](const flotilla::actors::WorkerInfo& info) {
  return std::make_unique<Echo>(info);
});

}  // namespace
