#include "controller/cluster/cluster.hpp"

#include <signal.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <zmq.hpp>

#include "core/config.hpp"
#include "core/curve.hpp"
#include "core/error.hpp"
#include "core/process.hpp"
#include "core/wire.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;
namespace asio = boost::asio;

FaultConfig FaultConfig::read(const core::ConfigView& v) {
  FaultConfig c;
  c.heartbeat_timeout_ms = v.get<int64_t>("heartbeat_timeout_ms", c.heartbeat_timeout_ms, core::at_least<int64_t>(100));
  auto policy = [](const core::ConfigView& x, const FaultPolicy& fallback) {
    FaultPolicy p;
    p.restart = x.choice("on_worker_failure", fallback.restart ? "restart" : "stop", {"restart", "stop"}) == "restart";
    p.max_restarts = x.get<int>("max_restarts", fallback.max_restarts, core::at_least(0));
    p.backoff_s = x.get<double>("restart_backoff_s", fallback.backoff_s, core::at_least(0.0));
    return p;
  };
  c.defaults = policy(v, c.defaults);
  for (const core::ConfigView& g : v.list("groups")) {
    const std::string name = g.require<std::string>("group");
    if (c.groups.count(name)) g.fail("group", "group '" + name + "' is listed twice");
    c.groups[name] = policy(g, c.defaults);
  }
  return c;
}

const FaultPolicy& FaultConfig::group(const std::string& name) const {
  auto it = groups.find(name);
  return it == groups.end() ? defaults : it->second;
}

void check_named_groups(const std::vector<std::string>& groups, const LauncherConfig& launcher, const FaultConfig& fault) {
  auto check = [&](const std::string& section, const auto& named) {
    for (const auto& [name, x] : named)
      if (std::find(groups.begin(), groups.end(), name) == groups.end()) {
        std::string known;
        for (const auto& g : groups) known += (known.empty() ? "" : ", ") + g;
        throw ConfigError(section + ": this run has no worker group '" + name + "' (its groups: " + (known.empty() ? "none" : known) + ")");
      }
  };
  check("launcher.groups", launcher.groups);
  check("fault.groups", fault.groups);
}

namespace {

double unix_now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

}  // namespace

// The event loop: child exits (Boost.Process on the loop's SIGCHLD service), heartbeats and
// metrics (the sockets' file descriptors), heartbeat deadlines (a timer per worker), and the
// start of replacements after their backoff.
struct Cluster::Monitor {
  struct Proc {
    std::string name, group;
    int rank = 0;
    core::ProcessSpec spec;  // the worker command, before a launcher wraps it
    std::unique_ptr<core::Process> process;
    std::unique_ptr<asio::steady_timer> deadline, backoff;
    std::string endpoint;  // from its first heartbeat; a replacement binds the same
    std::string node;      // under Slurm: the node it runs on
    std::filesystem::path log;  // under Slurm: its output
    bool exited = false;
    bool replacing = false;  // failed, and its replacement has not sent a heartbeat yet
    std::string silent;      // why it was killed: it sent no heartbeats
    std::string why;         // its last failure
    uint64_t refused = 0;    // connections refused, by its latest heartbeat
    std::chrono::steady_clock::time_point detected;
  };

  zmq::context_t context{1};
  zmq::socket_t heartbeats{context, zmq::socket_type::pull};
  zmq::socket_t metrics{context, zmq::socket_type::pull};
  asio::io_context io;
  asio::posix::stream_descriptor beat_fd{io}, metrics_fd{io};
  std::deque<Proc> procs;  // stable addresses: the loop's handlers point at them
  std::chrono::milliseconds timeout{3000}, start_timeout{60000};
  ClusterOptions options;
  fs::path faults_log;  // RUN_DIR/faults.jsonl
  std::thread thread;
  core::DropCounter drops;

  mutable std::mutex mutex;  // guards everything below, and procs' endpoint, exited and replacing
  std::condition_variable changed;
  std::string failure, failed_group;
  int failed_rank = 0;
  std::chrono::steady_clock::time_point failed_at;
  bool restore = false;
  bool stopping = false, woken = false, up = false;
  std::deque<WorkerMetrics> rows;
  std::vector<runtime::WorkerGroup*> groups;
  std::map<std::string, int> restarts;  // by group
  std::deque<Replacement> replaced;
  int64_t failures = 0;
  int64_t refused_total = 0;  // connections the workers refused

  ~Monitor() {
    io.stop();
    if (thread.joinable()) thread.join();
    // The descriptors belong to ZeroMQ.
    if (beat_fd.is_open()) beat_fd.release();
    if (metrics_fd.is_open()) metrics_fd.release();
  }

  // Ends every pending call with `why`; the first failure is the one reported.
  void fail(const std::string& why, const Proc* p = nullptr, bool restorable = false) {
    std::vector<runtime::WorkerGroup*> to_fail;
    {
      std::lock_guard lock(mutex);
      if (stopping || !failure.empty()) return;
      failure = why;
      if (p) failed_group = p->group, failed_rank = p->rank;
      failed_at = std::chrono::steady_clock::now();
      restore = restorable;
      to_fail = groups;
    }
    for (auto* g : to_fail) g->fail(why);
    changed.notify_all();
  }

  // One line per failure and rejoin, for people and for scripts/soak.
  void record(nlohmann::json entry) {
    if (faults_log.empty()) return;
    entry["time"] = unix_now();
    std::lock_guard lock(mutex);
    std::ofstream(faults_log, std::ios::app) << entry.dump() << '\n';
  }

  // "worker trainer/1 on host vm (pid 123)", or under Slurm "worker trainer/1 on node n2 (srun pid 123)".
  static std::string who(const Proc& p) {
    static const std::string host = core::hostname();
    return "worker " + p.name + (p.node.empty() ? " on host " + host + " (pid " : " on node " + p.node + " (srun pid ") +
           std::to_string(p.process->pid()) + ")";
  }
  // The end of a Slurm worker's output: why it stopped, in its own words.
  static std::string last_lines(const Proc& p) {
    if (p.log.empty()) return "";
    std::ifstream in(p.log);
    std::deque<std::string> lines;
    for (std::string l; std::getline(in, l);) {
      lines.push_back(l);
      if (lines.size() > 5) lines.pop_front();
    }
    std::string out;
    for (const auto& l : lines) out += "\n  " + l;
    return out.empty() ? "" : "; the end of " + p.log.string() + ":" + out;
  }

  void exited(Proc& p, core::ExitStatus status) {
    {
      std::lock_guard lock(mutex);
      p.exited = true;
    }
    p.deadline->cancel();
    changed.notify_all();
    // srun exits with 128 + N when its task was killed by signal N.
    if (!p.node.empty() && status.signal == 0 && status.code > 128) status = {0, status.code - 128};
    failed(p, p.silent.empty() ? who(p) + " " + status.str() + last_lines(p) : p.silent);
  }

  // What a failure does: the group's policy, while its restarts last.
  void failed(Proc& p, const std::string& why) {
    const FaultPolicy& policy = options.fault.group(p.group);
    int used = 0;
    bool ready = false;
    {
      std::lock_guard lock(mutex);
      if (stopping || !failure.empty()) return;
      used = restarts[p.group];
      ready = up;
      ++failures;
    }
    const bool may = policy.restart && used < policy.max_restarts && (ready || options.restoring);
    const std::string action = !may                                        ? "stop"
                               : ready && options.replaceable.count(p.group) ? "replace"
                                                                             : "restore";
    record({{"event", "failed"}, {"worker", p.name}, {"pid", p.process->pid()}, {"reason", why}, {"action", action}});
    if (action == "stop") {
      const bool spent = policy.restart && used >= policy.max_restarts;
      return fail(why + (spent ? "; group " + p.group + " has used its " + std::to_string(policy.max_restarts) + " restarts (fault.max_restarts)" : ""),
                  &p);
    }
    {
      std::lock_guard lock(mutex);
      ++restarts[p.group];
    }
    if (action == "restore") return fail(why, &p, true);
    spdlog::warn("{}; replacing it in {:.1f} s (restart {} of {} for group {})", why, policy.backoff_s, used + 1, policy.max_restarts, p.group);
    {
      std::lock_guard lock(mutex);
      p.replacing = true;
      p.why = why;
      p.detected = std::chrono::steady_clock::now();
      for (auto* g : groups)
        if (g->name() == p.group) g->fail_rank(p.rank, why);
    }
    p.backoff->expires_after(std::chrono::milliseconds(static_cast<int64_t>(policy.backoff_s * 1000)));
    p.backoff->async_wait([this, &p](const boost::system::error_code& ec) {
      if (ec) return;
      try {
        spawn(p);
      } catch (const std::exception& e) {
        fail(who(p) + " could not be replaced: " + e.what(), &p);
      }
    });
  }

  // Starts the worker `p` names (again, at its old address, when it replaces one that failed).
  void spawn(Proc& p) {
    core::ProcessSpec spec = p.spec;
    if (!p.endpoint.empty()) spec.args.insert(spec.args.end(), {"--bind-rpc", p.endpoint});
    if (!p.node.empty()) spec = slurm::worker_step(options.launcher, p.group, p.node, p.log, spec);
    p.silent.clear();
    {
      std::lock_guard lock(mutex);
      p.exited = false;
    }
    p.process = std::make_unique<core::Process>(spec, io, [this, &p](core::ExitStatus s) { exited(p, s); });
    arm(p, start_timeout, true);  // until its first heartbeat, silence is start-up
  }

  void arm(Proc& p, std::chrono::milliseconds after, bool starting = false) {
    p.deadline->expires_after(after);
    p.deadline->async_wait([this, &p, after, starting](const boost::system::error_code& ec) {
      if (ec) return;  // re-armed by a heartbeat, or cancelled
      const std::string why = who(p) + (starting ? " did not start: no heartbeat within " : " sent no heartbeat for ") +
                              std::to_string(after.count()) + " ms" + last_lines(p);
      const FaultPolicy& policy = options.fault.group(p.group);
      bool can_restart = false;
      {
        std::lock_guard lock(mutex);
        can_restart = (up || options.restoring) && policy.restart && restarts[p.group] < policy.max_restarts;
      }
      if (!can_restart) return fail(why, &p);
      // Stopped or cut off: it is killed, and its exit is the failure.
      p.silent = why;
      p.process->signal(SIGKILL);
    });
  }

  void beat(const core::InMessage& m) {
    const std::string from = m.envelope().getSender().cStr();
    for (auto& p : procs) {
      if (p.name != from) continue;
      {
        std::lock_guard lock(mutex);
        if (p.exited) continue;  // sent before it died
        if (p.endpoint.empty()) p.endpoint = m.envelope().getHeartbeat().getEndpoint().cStr();
        // A replacement counts from 0 again.
        const uint64_t refused = m.envelope().getHeartbeat().getRefused();
        refused_total += static_cast<int64_t>(refused >= p.refused ? refused - p.refused : refused);
        p.refused = refused;
        if (p.replacing) {
          p.replacing = false;
          replaced.push_back({p.group, p.rank, p.why, p.detected});
        }
      }
      arm(p, timeout);
      changed.notify_all();
    }
  }

  void metric(const core::InMessage& m) {
    if (!m.envelope().isMetrics()) return;
    auto r = m.envelope().getMetrics();
    WorkerMetrics w{m.envelope().getSender().cStr(), r.getStep(), core::read_scalars(r.getValues())};
    {
      std::lock_guard lock(mutex);
      rows.push_back(std::move(w));
    }
    changed.notify_all();
  }

  // Waits for `fd` to be readable and takes every message waiting on `socket`. ZeroMQ signals its
  // descriptor on edges, so the wait is armed before the socket is drained: a message that arrives
  // after the drain raises a new edge the armed wait sees.
  template <class OnMessage>
  void watch(asio::posix::stream_descriptor& fd, zmq::socket_t& socket, OnMessage on_message) {
    fd.async_wait(asio::posix::stream_descriptor::wait_read, [this, &fd, &socket, on_message](const boost::system::error_code& ec) {
      if (!ec) watch(fd, socket, on_message);
    });
    while (socket.get(zmq::sockopt::events) & ZMQ_POLLIN) {
      try {
        if (auto m = core::InMessage::receive(socket)) on_message(*m);
      } catch (const core::DecodeError& e) {
        drops.record(e, "controller");
      }
    }
  }
};

Cluster::Cluster(const fs::path& run_dir, std::string experiment, const std::vector<WorkerSpec>& workers, ClusterOptions options)
    : experiment_(std::move(experiment)),
      trial_(std::to_string(::getpid())),
      options_(options),
      name_dir_(fs::absolute(run_dir / "names")),
      monitor_(std::make_unique<Monitor>()) {
  Monitor& m = *monitor_;
  m.timeout = options.heartbeat_timeout;
  m.start_timeout = options.start_timeout;
  m.options = options;
  m.restarts = options.restarts;
  m.faults_log = fs::absolute(run_dir / "faults.jsonl");
  const LauncherConfig& launch = options.launcher;
  std::vector<std::string> names;
  for (const auto& w : workers) names.push_back(w.group);
  check_named_groups(names, launch, options.fault);
  // Under Slurm the workers are on other nodes: everything binds this node's address.
  const std::string host = launch.slurm() ? core::node_address(launch.interface) : "127.0.0.1";
  std::map<std::string, std::vector<std::string>> nodes;
  if (launch.slurm()) {
    std::vector<std::pair<std::string, int>> counts;
    for (const auto& spec : workers) counts.push_back({spec.group, spec.count});
    nodes = slurm::place(launch, counts, slurm::allocation_nodes());
    fs::create_directories(run_dir / "workers");
    m.start_timeout = std::chrono::milliseconds(static_cast<int64_t>(launch.start_timeout_s * 1000));
  }
  for (zmq::socket_t* s : {&m.heartbeats, &m.metrics}) {
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::rcvtimeo, 0);
    core::curve::bind(m.context, *s, "tcp://" + host + ":*");
  }
  const std::string beat_to = m.heartbeats.get(zmq::sockopt::last_endpoint);
  const std::string metrics_to = m.metrics.get(zmq::sockopt::last_endpoint);
  fs::create_directories(name_dir_);
  fs::permissions(name_dir_, fs::perms::owner_all, fs::perm_options::replace);  // the workers' addresses: the owner's alone

  for (const auto& spec : workers) {
    for (int rank = 0; rank < spec.count; ++rank) {
      Monitor::Proc& proc = m.procs.emplace_back();
      proc.group = spec.group;
      proc.rank = rank;
      proc.name = spec.group + "/" + std::to_string(rank);
      proc.spec = {options.executable,
                   {"worker", "--role", spec.group, "--rank", std::to_string(rank), "--world-size", std::to_string(spec.count),
                    "--experiment", experiment_, "--trial", trial_, "--name-dir", name_dir_.string(), "--heartbeat-ms",
                    std::to_string(options.heartbeat.count()), "--heartbeat-to", beat_to, "--metrics-to", metrics_to},
                   "worker " + proc.name};
      if (auto keys = core::curve::key_file()) proc.spec.args.insert(proc.spec.args.end(), {"--keys", keys->string()});
      if (launch.slurm()) {
        // A job step on its node; it binds that node's address, and ends with its step (Slurm
        // ends the steps when the controller's job ends).
        proc.spec.program = fs::canonical(options.executable);
        proc.spec.args.insert(proc.spec.args.end(), {"--host", "auto", "--interface", launch.interface});
        proc.node = nodes.at(spec.group).at(static_cast<size_t>(rank));
        proc.log = fs::absolute(run_dir / "workers" / (spec.group + "-" + std::to_string(rank) + ".log"));
      } else {
        proc.spec.args.insert(proc.spec.args.end(), {"--controller-pid", std::to_string(::getpid())});
      }
      proc.deadline = std::make_unique<asio::steady_timer>(m.io);
      proc.backoff = std::make_unique<asio::steady_timer>(m.io);
      m.spawn(proc);
    }
  }
  m.beat_fd.assign(m.heartbeats.get(zmq::sockopt::fd));
  m.metrics_fd.assign(m.metrics.get(zmq::sockopt::fd));
  m.watch(m.beat_fd, m.heartbeats, [&m](const core::InMessage& msg) {
    if (msg.envelope().isHeartbeat()) m.beat(msg);
  });
  m.watch(m.metrics_fd, m.metrics, [&m](const core::InMessage& msg) { m.metric(msg); });
  m.thread = std::thread([&m] { m.io.run(); });

  // Every worker's first heartbeat says where it answers calls.
  {
    std::unique_lock lock(m.mutex);
    m.changed.wait(lock, [&] {
      if (!m.failure.empty()) return true;
      for (const auto& p : m.procs)
        if (p.endpoint.empty()) return false;
      return true;
    });
  }
  check();
  if (launch.slurm()) {
    std::string where;
    for (const auto& p : m.procs) where += (where.empty() ? "" : ", ") + p.name + " " + p.node + " " + p.endpoint;
    spdlog::info("workers up: {}", where);
  }
  for (const auto& spec : workers) {
    std::vector<std::string> endpoints;
    for (const auto& p : m.procs)
      if (p.name.rfind(spec.group + "/", 0) == 0) endpoints.push_back(p.endpoint);
    groups_[spec.group] = std::make_unique<runtime::WorkerGroup>(m.context, spec.group, endpoints, options.call_timeout, spec.tp);
  }
  std::lock_guard lock(m.mutex);
  for (auto& [name, g] : groups_) m.groups.push_back(g.get());
  m.up = true;  // from here a failure may be replaced
}

Cluster::~Cluster() {
  Monitor& m = *monitor_;
  {
    std::lock_guard lock(m.mutex);
    m.stopping = true;
    m.groups.clear();
  }
  std::vector<runtime::Future<runtime::Stop>> stopping;
  for (auto& [name, g] : groups_) stopping.push_back(g->call(runtime::Stop{}));
  for (auto& f : stopping) {
    try {
      f.get();
    } catch (const std::exception&) {  // already gone
    }
  }
  groups_.clear();
  // Give the workers a moment to leave on their own; the monitor's processes end the rest (at
  // once after a failure: the calls to stop were not sent).
  std::unique_lock lock(m.mutex);
  if (!m.failure.empty()) return;
  m.changed.wait_for(lock, std::chrono::seconds(3), [&] {
    for (const auto& p : m.procs)
      if (!p.exited) return false;
    return true;
  });
}

std::vector<Cluster::WorkerMetrics> Cluster::metrics(std::chrono::milliseconds wait) {
  Monitor& m = *monitor_;
  std::unique_lock lock(m.mutex);
  m.changed.wait_for(lock, wait, [&] { return !m.rows.empty() || !m.failure.empty() || m.woken || !m.replaced.empty(); });
  m.woken = false;
  std::vector<WorkerMetrics> out(std::make_move_iterator(m.rows.begin()), std::make_move_iterator(m.rows.end()));
  m.rows.clear();
  return out;
}

void Cluster::wake() {
  {
    std::lock_guard lock(monitor_->mutex);
    monitor_->woken = true;
  }
  monitor_->changed.notify_all();
}

runtime::WorkerGroup& Cluster::group(const std::string& name) {
  auto it = groups_.find(name);
  if (it == groups_.end()) throw ConfigError("no worker group '" + name + "' in this run");
  return *it->second;
}

void Cluster::check() const {
  std::lock_guard lock(monitor_->mutex);
  if (monitor_->failure.empty()) return;
  WorkerFailure f(monitor_->failure, monitor_->failed_group, monitor_->failed_rank, monitor_->restore);
  f.detected = monitor_->failed_at;
  throw f;
}

std::vector<Replacement> Cluster::replaced() {
  std::lock_guard lock(monitor_->mutex);
  std::vector<Replacement> out(monitor_->replaced.begin(), monitor_->replaced.end());
  monitor_->replaced.clear();
  for (const auto& r : out)
    if (auto it = groups_.find(r.group); it != groups_.end()) it->second->rank_up(r.rank);  // calls reach it again
  return out;
}

void Cluster::rejoined(const Replacement& r) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - r.detected).count();
  const std::string worker = r.group + "/" + std::to_string(r.rank);
  spdlog::info("worker {} is back {:.2f} s after its failure", worker, seconds);
  monitor_->record({{"event", "rejoined"}, {"worker", worker}, {"pid", pid(r.group, r.rank)}, {"restart_s", seconds}});
}

int64_t Cluster::refused() const {
  std::lock_guard lock(monitor_->mutex);
  return monitor_->refused_total + core::curve::refused();
}

int64_t Cluster::failures() const {
  std::lock_guard lock(monitor_->mutex);
  return monitor_->failures;
}

std::map<std::string, int> Cluster::restarts() const {
  std::lock_guard lock(monitor_->mutex);
  return monitor_->restarts;
}

std::optional<WorkerFailure> Cluster::recent_replacement(std::chrono::seconds window) const {
  std::lock_guard lock(monitor_->mutex);
  const Monitor::Proc* latest = nullptr;
  for (const auto& p : monitor_->procs)
    if (!p.why.empty() && (!latest || p.detected > latest->detected)) latest = &p;
  if (!latest || (!latest->replacing && std::chrono::steady_clock::now() - latest->detected > window)) return std::nullopt;
  WorkerFailure f(latest->why, latest->group, latest->rank, true);
  f.detected = latest->detected;
  return f;
}

int Cluster::replacing() const {
  std::lock_guard lock(monitor_->mutex);
  int n = static_cast<int>(monitor_->replaced.size());  // up, not yet rejoined
  for (const auto& p : monitor_->procs) n += p.replacing;
  return n;
}

pid_t Cluster::pid(const std::string& group, int rank) const {
  for (const auto& p : monitor_->procs)
    if (p.name == group + "/" + std::to_string(rank)) return p.process->pid();
  throw ConfigError("no worker " + group + "/" + std::to_string(rank));
}

int64_t Cluster::transfer_bytes() const {
  int64_t total = 0;
  for (const auto& [name, g] : groups_) total += g->transfer_bytes();
  return total;
}

void RunRestarts::back_to_checkpoint(const WorkerFailure& f, const FaultConfig& fault) {
  spdlog::warn("{}; bringing the run back to its last checkpoint", f.what());
  std::this_thread::sleep_for(std::chrono::duration<double>(fault.group(f.group).backoff_s));
  restored_ = Replacement{f.group, f.rank, f.what(), f.detected};
}

void RunRestarts::up(Cluster& cluster) {
  if (restored_) cluster.rejoined(*std::exchange(restored_, std::nullopt));
}

int RunRestarts::total(const Cluster& cluster) const {
  int n = 0;
  for (const auto& [group, count] : cluster.restarts()) n += count;
  return n;
}

}  // namespace flotilla::controller
