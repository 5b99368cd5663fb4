#pragma once
// Workers: processes started by the controller (`flotilla worker ...`, never by hand) that serve
// methods over RPC. A role (trainer, env actor, ...) is registered by name and adds its methods;
// the runtime answers calls on a ZeroMQ ROUTER socket, publishes its address in the name service,
// sends heartbeats to the controller and exits on `stop` or when the controller is gone.
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "core/batch.hpp"

namespace flotilla::actors {

struct WorkerInfo {
  std::string experiment, trial, role;
  int rank = 0;
  int world_size = 1;
  std::string name_dir;               // the directory name service shared with the controller
  std::string host = "127.0.0.1";     // the address to bind
  std::chrono::milliseconds heartbeat{500};
  int controller_pid = 0;             // the process that started this worker; 0: not checked
  std::string name() const { return role + "/" + std::to_string(rank); }
};

struct CallResult {
  std::string result;  // small results as YAML text
  core::Batch batch;
};

// A method: YAML arguments and a batch in, a result and a batch out. An exception becomes an
// error reply naming the worker, rank and method.
using Method = std::function<CallResult(const std::string& args, const core::Batch& batch)>;

class MethodTable {
 public:
  void add(const std::string& name, Method method) { methods_[name] = std::move(method); }
  const Method* find(const std::string& name) const;
  std::string names() const;

 private:
  std::map<std::string, Method> methods_;
};

// A role adds its methods; it lives as long as the worker process.
class Role {
 public:
  virtual ~Role() = default;
  virtual void add_methods(MethodTable& methods) = 0;
  // Set by the runtime: true once the worker was asked to stop, so background loops can tell a
  // failure from the shutdown of their peers.
  void attach_stop_flag(const std::atomic<bool>* stopping) { stopping_ = stopping; }
  bool stopping() const { return stopping_ && stopping_->load(); }

 private:
  const std::atomic<bool>* stopping_ = nullptr;
};
using RoleFactory = std::function<std::unique_ptr<Role>(const WorkerInfo& info)>;

void register_role(const std::string& name, RoleFactory factory);
std::vector<std::string> role_names();

// Registers a role from any source file: `static actors::RoleRegistration r("name", factory);`.
struct RoleRegistration {
  RoleRegistration(const std::string& name, RoleFactory factory) { register_role(name, std::move(factory)); }
};

// The worker process's main loop; returns the exit code.
int run_worker(const WorkerInfo& info);

}  // namespace flotilla::actors
