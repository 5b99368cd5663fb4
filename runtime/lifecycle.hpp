#pragma once
// The lifecycle every worker goes through: created -> configured -> running <-> paused ->
// stopping. Work (a method on a work lane, or a role's background loop) runs inside a Section;
// pause() asks every section to park at its next checkpoint() and waits, on a condition
// variable, until all have parked or ended. A paused worker still answers its control lane
// (poll, resume, stop).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace flotilla::runtime {

class Lifecycle {
 public:
  enum class State { Created, Configured, Running, Paused, Stopping };
  static const char* name(State s);

  State state() const;
  // Throws naming the worker when the transition is not allowed (start before configure, ...).
  void configured(const std::string& worker);
  void started(const std::string& worker);
  // Parks the work and waits up to `timeout` for it to park; false when it did not in time.
  bool pause(std::chrono::milliseconds timeout);
  void resume();
  // Ends every wait: parked sections return from checkpoint() and stopping() turns true.
  void stop();
  bool stopping() const { return stopping_.load(); }

  // A piece of work: entering waits while the worker is paused.
  class Section {
   public:
    explicit Section(Lifecycle& life);
    ~Section();
    Section(const Section&) = delete;
    Section& operator=(const Section&) = delete;

   private:
    Lifecycle& life_;
  };
  // Inside a section: parks while the worker is paused. False once the worker is stopping.
  bool checkpoint();
  // Inside a section, around a wait for work: the section counts as parked while it waits, and
  // leaving waits while the worker is paused (as a checkpoint would).
  class Idle {
   public:
    explicit Idle(Lifecycle& life);
    ~Idle();
    Idle(const Idle&) = delete;
    Idle& operator=(const Idle&) = delete;

   private:
    Lifecycle& life_;
  };
  // Sections running and not parked.
  int active() const;

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  State state_ = State::Created;
  bool paused_ = false;
  int active_ = 0;
  std::atomic<bool> stopping_{false};
};

// A role's background loop on its own thread, inside a lifecycle section: `body` runs until it
// returns or the worker stops, calling life.checkpoint() between its steps. An exception is
// logged and ends the process (the controller sees the worker die and names it), unless the
// worker is stopping, when it is the shutdown of its peers.
class Loop {
 public:
  Loop() = default;
  ~Loop() { join(); }
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;
  void start(const std::string& who, Lifecycle& life, std::function<void()> body);
  bool running() const { return thread_.joinable(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::thread thread_;
};

}  // namespace flotilla::runtime
