#include "controller/run/signals.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <cstdlib>
#include <thread>

namespace flotilla::controller {

struct StopSignals::Loop {
  boost::asio::io_context io;
  boost::asio::signal_set signals{io, SIGINT, SIGTERM};
  std::thread thread;
};

void StopSignals::arm() {
  loop_->signals.async_wait([this](const boost::system::error_code& ec, int signo) {
    if (ec) return;  // cancelled at shutdown
    const char* what = signo == SIGINT ? "Ctrl-C" : "SIGTERM";
    if (requested_.exchange(true)) {
      spdlog::error("second {}: stopping at once", what);
      if (exit_now_) exit_now_();
      spdlog::default_logger()->flush();
      std::_Exit(130);
    }
    spdlog::warn("{}: stopping after the current step (press Ctrl-C again to stop at once)", what);
    {
      std::lock_guard lock(mutex_);
      for (const auto& [id, f] : on_stop_) f();
    }
    arm();
  });
}

StopSignals::StopSignals() : loop_(std::make_unique<Loop>()) {
  arm();
  loop_->thread = std::thread([this] { loop_->io.run(); });
}

std::shared_ptr<void> StopSignals::on_stop(std::function<void()> f) {
  std::lock_guard lock(mutex_);
  const uint64_t id = next_++;
  on_stop_.emplace(id, std::move(f));
  return std::shared_ptr<void>(nullptr, [this, id](void*) {
    std::lock_guard lock(mutex_);
    on_stop_.erase(id);
  });
}

StopSignals::~StopSignals() {
  loop_->io.stop();
  if (loop_->thread.joinable()) loop_->thread.join();
}

}  // namespace flotilla::controller
