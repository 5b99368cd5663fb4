#include "runtime/lifecycle.hpp"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "core/error.hpp"

namespace flotilla::runtime {

const char* Lifecycle::name(State s) {
  switch (s) {
    case State::Created: return "created";
    case State::Configured: return "configured";
    case State::Running: return "running";
    case State::Paused: return "paused";
    case State::Stopping: return "stopping";
  }
  return "?";
}

Lifecycle::State Lifecycle::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

void Lifecycle::configured(const std::string& worker) {
  std::lock_guard lock(mutex_);
  if (state_ != State::Created && state_ != State::Configured)
    throw Error("worker " + worker + " is " + name(state_) + "; configure comes before start");
  state_ = State::Configured;
}

void Lifecycle::started(const std::string& worker) {
  std::lock_guard lock(mutex_);
  if (state_ == State::Created) throw Error("worker " + worker + " was asked to start before it was configured");
  if (state_ == State::Configured) state_ = paused_ ? State::Paused : State::Running;
}

bool Lifecycle::pause(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  paused_ = true;
  if (state_ == State::Running) state_ = State::Paused;
  changed_.notify_all();
  return changed_.wait_for(lock, timeout, [this] { return active_ == 0 || stopping_.load(); });
}

void Lifecycle::resume() {
  std::lock_guard lock(mutex_);
  paused_ = false;
  if (state_ == State::Paused) state_ = State::Running;
  changed_.notify_all();
}

void Lifecycle::stop() {
  std::lock_guard lock(mutex_);
  stopping_ = true;
  state_ = State::Stopping;
  changed_.notify_all();
}

int Lifecycle::active() const {
  std::lock_guard lock(mutex_);
  return active_;
}

Lifecycle::Section::Section(Lifecycle& life) : life_(life) {
  std::unique_lock lock(life_.mutex_);
  life_.changed_.wait(lock, [this] { return !life_.paused_ || life_.stopping_.load(); });
  ++life_.active_;
}

Lifecycle::Section::~Section() {
  std::lock_guard lock(life_.mutex_);
  --life_.active_;
  life_.changed_.notify_all();
}

Lifecycle::Idle::Idle(Lifecycle& life) : life_(life) {
  std::lock_guard lock(life_.mutex_);
  --life_.active_;
  life_.changed_.notify_all();
}

Lifecycle::Idle::~Idle() {
  std::unique_lock lock(life_.mutex_);
  life_.changed_.wait(lock, [this] { return !life_.paused_ || life_.stopping_.load(); });
  ++life_.active_;
}

bool Lifecycle::checkpoint() {
  std::unique_lock lock(mutex_);
  if (paused_ && !stopping_.load()) {
    --active_;
    changed_.notify_all();
    changed_.wait(lock, [this] { return !paused_ || stopping_.load(); });
    ++active_;
  }
  return !stopping_.load();
}

void Loop::start(const std::string& who, Lifecycle& life, std::function<void()> body) {
  if (thread_.joinable()) throw Error(who + ": its loop is already running");
  thread_ = std::thread([who, &life, body = std::move(body), threads = at::get_num_threads()] {
    at::set_num_threads(threads);  // a per-thread setting: the loop runs with its starter's
    try {
      Lifecycle::Section section(life);
      body();
    } catch (const std::exception& e) {
      if (life.stopping()) return;  // peers leaving during shutdown, not a failure
      spdlog::error("{}: {}", who, e.what());
      spdlog::default_logger()->flush();
      std::_Exit(1);
    }
  });
}

}  // namespace flotilla::runtime
