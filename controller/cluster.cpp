#include "controller/cluster.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <mutex>
#include <thread>
#include <zmq.hpp>

#include "core/error.hpp"
#include "core/name_service.hpp"
#include "core/names.hpp"
#include "core/wire.hpp"

extern char** environ;

namespace flotilla::controller {
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

struct Cluster::Monitor {
  struct Proc {
    std::string name;
    pid_t pid;
    clock_type::time_point last_beat;
    bool exited = false;
    bool beating = false;  // a first heartbeat arrived
  };
  zmq::context_t context{1};
  zmq::socket_t heartbeats{context, zmq::socket_type::pull};
  std::vector<Proc> procs;
  mutable std::mutex mutex;
  std::string failure;
  std::chrono::milliseconds timeout;
  boost::asio::io_context io;
  boost::asio::steady_timer timer{io};
  std::thread thread;
  bool stopping = false;

  // Runs even when the Cluster's constructor throws: the loop stops and every worker still
  // running is ended (SIGTERM, then SIGKILL after a grace period) and reaped.
  ~Monitor() {
    io.stop();
    if (thread.joinable()) thread.join();
    std::lock_guard lock(mutex);
    const auto deadline = clock_type::now() + std::chrono::seconds(3);
    for (auto& p : procs)
      if (!p.exited) ::kill(p.pid, SIGTERM);
    for (auto& p : procs) {
      int status = 0;
      while (!p.exited && clock_type::now() < deadline) {
        if (::waitpid(p.pid, &status, WNOHANG) == p.pid) p.exited = true;
        else std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (!p.exited) {
        ::kill(p.pid, SIGKILL);
        ::waitpid(p.pid, &status, 0);
        p.exited = true;
      }
    }
  }

  // Every 50 ms: take the heartbeats that arrived, reap exited children, look for silence.
  void tick() {
    heartbeats.set(zmq::sockopt::rcvtimeo, 0);
    while (true) {
      std::optional<core::InMessage> m;
      try {
        m = core::InMessage::receive(heartbeats);
      } catch (const core::DecodeError&) {
        continue;
      }
      if (!m) break;
      const std::string from = m->envelope().getSender().cStr();
      std::lock_guard lock(mutex);
      for (auto& p : procs)
        if (p.name == from) {
          p.last_beat = clock_type::now();
          p.beating = true;
        }
    }
    std::lock_guard lock(mutex);
    for (auto& p : procs) {
      int status = 0;
      if (!p.exited && ::waitpid(p.pid, &status, WNOHANG) == p.pid) {
        p.exited = true;
        if (!stopping && failure.empty()) {
          failure = "worker " + p.name + " (pid " + std::to_string(p.pid) + ") " +
                    (WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                         : "exited with code " + std::to_string(WEXITSTATUS(status)));
        }
      }
      if (!p.exited && !stopping && failure.empty() && clock_type::now() - p.last_beat > timeout)
        failure = "worker " + p.name + " (pid " + std::to_string(p.pid) + ") sent no heartbeat for " +
                  std::to_string(timeout.count()) + " ms";
    }
    timer.expires_after(std::chrono::milliseconds(50));
    timer.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) tick();
    });
  }
};

Cluster::Cluster(const fs::path& run_dir, std::string experiment, const std::vector<WorkerSpec>& workers,
                 ClusterOptions options)
    : experiment_(std::move(experiment)),
      trial_(std::to_string(::getpid())),
      options_(options),
      name_dir_(fs::absolute(run_dir / "names")),
      monitor_(std::make_unique<Monitor>()) {
  auto names = core::directory_name_service(name_dir_);
  monitor_->timeout = options.heartbeat_timeout;
  monitor_->heartbeats.bind("tcp://127.0.0.1:*");
  names->put(core::names::controller(experiment_, trial_, "heartbeat"),
             monitor_->heartbeats.get(zmq::sockopt::last_endpoint));
  metrics_ = std::make_unique<zmq::socket_t>(monitor_->context, zmq::socket_type::pull);
  metrics_->set(zmq::sockopt::linger, 0);
  metrics_->bind("tcp://127.0.0.1:*");
  names->put(core::names::controller(experiment_, trial_, "metrics"), metrics_->get(zmq::sockopt::last_endpoint));

  for (const auto& spec : workers) {
    for (int rank = 0; rank < spec.count; ++rank) {
      std::vector<std::string> args = {options.executable.string(), "worker",
                                       "--role", spec.role, "--rank", std::to_string(rank),
                                       "--world-size", std::to_string(spec.count), "--experiment", experiment_,
                                       "--trial", trial_, "--name-dir", name_dir_.string(),
                                       "--heartbeat-ms", std::to_string(options.heartbeat.count()),
                                       "--controller-pid", std::to_string(::getpid())};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      pid_t pid = 0;
      if (posix_spawn(&pid, options.executable.c_str(), nullptr, nullptr, argv.data(), environ) != 0)
        throw Error("cannot start worker " + spec.role + "/" + std::to_string(rank) + " from " + options.executable.string());
      monitor_->procs.push_back({spec.role + "/" + std::to_string(rank), pid, clock_type::now() + options.start_timeout});
    }
  }
  monitor_->tick();
  monitor_->thread = std::thread([m = monitor_.get()] { m->io.run(); });

  for (const auto& spec : workers) {
    std::vector<std::string> endpoints;
    for (int rank = 0; rank < spec.count; ++rank) {
      const std::string key = core::names::worker_rpc(experiment_, trial_, spec.role, rank);
      const auto deadline = clock_type::now() + options.start_timeout;
      while (true) {  // wait for the address, but give up at once if the worker already died
        check();
        if (auto v = names->get(key)) {
          endpoints.push_back(*v);
          break;
        }
        if (clock_type::now() > deadline)
          throw TimeoutError("worker " + spec.role + "/" + std::to_string(rank) + " did not publish '" + key + "' within " +
                             std::to_string(options.start_timeout.count()) + " ms");
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    groups_[spec.role] = std::make_unique<actors::WorkerGroup>(monitor_->context, spec.role, endpoints, options.call_timeout);
  }
  // Watching starts once every worker's heartbeats are flowing; until then silence is start-up.
  const auto deadline = clock_type::now() + options.start_timeout;
  while (true) {
    check();
    std::string waiting;
    {
      std::lock_guard lock(monitor_->mutex);
      for (const auto& p : monitor_->procs)
        if (!p.beating) waiting = p.name;
    }
    if (waiting.empty()) break;
    if (clock_type::now() > deadline)
      throw TimeoutError("worker " + waiting + " sent no heartbeat within " + std::to_string(options.start_timeout.count()) + " ms of starting");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Cluster::~Cluster() {
  {
    std::lock_guard lock(monitor_->mutex);
    monitor_->stopping = true;
  }
  for (auto& [role, g] : groups_) {
    try {
      auto futures = g->call("stop");
      for (auto& f : futures) f.wait_for(std::chrono::seconds(2));
    } catch (const std::exception&) {
    }
  }
  groups_.clear();
  // Give the workers a moment to leave on their own; the monitor ends the rest.
  const auto deadline = clock_type::now() + std::chrono::seconds(2);
  {
    std::unique_lock lock(monitor_->mutex);
    for (auto& p : monitor_->procs) {
      int status = 0;
      while (!p.exited && clock_type::now() < deadline) {
        if (::waitpid(p.pid, &status, WNOHANG) == p.pid) p.exited = true;
        else {
          lock.unlock();
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          lock.lock();
        }
      }
    }
  }
  metrics_.reset();
}

std::vector<Cluster::WorkerMetrics> Cluster::metrics(std::chrono::milliseconds wait) {
  std::vector<WorkerMetrics> out;
  metrics_->set(zmq::sockopt::rcvtimeo, static_cast<int>(wait.count()));
  while (true) {
    std::optional<core::InMessage> m;
    try {
      m = core::InMessage::receive(*metrics_);
    } catch (const core::DecodeError& e) {
      drops_.record(e, "controller metrics");
      continue;
    }
    if (!m) break;
    metrics_->set(zmq::sockopt::rcvtimeo, 0);  // after the first, take only what is already here
    if (!m->envelope().isMetrics()) continue;
    auto r = m->envelope().getMetrics();
    WorkerMetrics w{m->envelope().getSender().cStr(), r.getStep(), {}};
    for (auto v : r.getValues()) w.values.emplace_back(v.getName().cStr(), v.getValue());
    out.push_back(std::move(w));
  }
  return out;
}

actors::CallResult Cluster::run(const std::string& role, const std::string& method, const std::string& args,
                                const core::Batch& batch, actors::Dispatch dispatch) {
  auto futures = group(role).call(method, args, batch, dispatch);
  std::vector<actors::CallResult> results = wait(role, futures, method);
  if (dispatch != actors::Dispatch::DpChunk) return results.front();
  std::vector<core::Batch> parts;
  for (auto& r : results) parts.push_back(std::move(r.batch));
  return {results.front().result, core::Batch::concat(parts)};
}

std::vector<actors::CallResult> Cluster::wait(const std::string& role, std::vector<std::future<actors::CallResult>>& futures,
                                              const std::string& method) {
  const auto deadline = clock_type::now() + options_.call_timeout;
  for (size_t r = 0; r < futures.size(); ++r) {
    while (futures[r].wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
      check();
      if (clock_type::now() > deadline)
        throw TimeoutError("no reply from worker " + role + "/" + std::to_string(r) + " to '" + method + "' within " +
                           std::to_string(options_.call_timeout.count()) + " ms");
    }
  }
  return group(role).collect_all(futures, method);
}

actors::WorkerGroup& Cluster::group(const std::string& role) {
  auto it = groups_.find(role);
  if (it == groups_.end()) throw ConfigError("no worker group '" + role + "' in this run");
  return *it->second;
}

void Cluster::check() const {
  std::lock_guard lock(monitor_->mutex);
  if (!monitor_->failure.empty()) throw Error(monitor_->failure);
}

pid_t Cluster::pid(const std::string& role, int rank) const {
  std::lock_guard lock(monitor_->mutex);
  for (const auto& p : monitor_->procs)
    if (p.name == role + "/" + std::to_string(rank)) return p.pid;
  throw ConfigError("no worker " + role + "/" + std::to_string(rank));
}

}  // namespace flotilla::controller
