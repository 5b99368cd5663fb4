#pragma once
// Workers: processes started by the controller (`flotilla worker ...`, never by hand). A role
// (trainer, rollout, ...) registers its typed methods (runtime/method.hpp); the runtime answers
// calls on one ZeroMQ ROUTER socket, runs each method on its lane's thread (so a generation loop
// keeps running while a weight sync, a pause or a poll arrives), keeps output rows in the
// worker's DataStore for other workers to fetch, publishes its address in the name service,
// sends heartbeats and exits on `stop` or when the controller is gone.
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "runtime/codec.hpp"
#include "runtime/lifecycle.hpp"
#include "runtime/method.hpp"

namespace flotilla::runtime {

struct WorkerInfo {
  std::string experiment, trial, role;
  int rank = 0;
  int world_size = 1;
  std::string name_dir;            // the directory name service shared with the controller
  std::string host = "127.0.0.1";  // the address to bind
  std::chrono::milliseconds heartbeat{500};
  int controller_pid = 0;  // the process that started this worker; 0: not checked
  std::string heartbeat_to, metrics_to;  // the controller's endpoints
  std::string rpc_endpoint;  // "" = any free port; a replacement binds the address of the worker it replaces
  std::string name() const { return role + "/" + std::to_string(rank); }
};

// A role's methods, each registered once with its types; the runtime looks calls up here.
class Methods {
 public:
  // Decodes the arguments, runs the method on its input rows and writes the result into the
  // reply; returns the output rows.
  using Invoke = std::function<core::Batch(capnp::AnyPointer::Reader args, const core::Batch& input,
                                           capnp::AnyPointer::Builder result)>;
  struct Entry {
    MethodSpec spec;
    uint64_t args_type = 0, result_type = 0;
    std::string args_name;
    Invoke invoke;
  };

  explicit Methods(std::string worker) : worker_(std::move(worker)) {}

  // Registers M with `handler`, called as handler(args, input) or handler(args); it returns
  // M::Result, or Output<M::Result> when the method has output rows. Throws naming the method and
  // worker when M's fields do not match its wire struct or the name is taken.
  template <WorkerMethod M, class F>
  void on(F handler) {
    using R = typename M::Result;
    const std::string what = "worker " + worker_ + ", method '" + M::spec.name + "'";
    codec::check<M>(what + ", arguments");
    codec::check<R>(what + ", result");
    Entry e{M::spec, codec::type_id<M>(), codec::type_id<R>(), codec::type_name<M>(), {}};
    e.invoke = [handler = std::move(handler)](capnp::AnyPointer::Reader args, const core::Batch& input,
                                              capnp::AnyPointer::Builder result) -> core::Batch {
      const M m = codec::read<M>(args);
      auto out = [&] {
        if constexpr (std::is_invocable_v<F&, const M&, const core::Batch&>) return handler(m, input);
        else return handler(m);
      }();
      if constexpr (std::is_same_v<decltype(out), Output<R>>) {
        codec::write(out.result, result);
        return std::move(out.rows);
      } else {
        static_assert(std::is_same_v<decltype(out), R>, "a handler returns its method's Result or Output<Result>");
        codec::write(out, result);
        return {};
      }
    };
    add(M::spec.name, std::move(e));
  }

  const Entry* find(const std::string& name) const;
  std::string names() const;
  std::vector<std::string> lanes() const;
  const std::string& worker() const { return worker_; }

 private:
  void add(const std::string& name, Entry entry);
  std::string worker_;
  std::map<std::string, Entry> entries_;
};

// A role: what a worker process is for. The runtime calls configure() for the Configure method,
// start() for Start, counters() for Poll and stop() when the worker leaves; the role's own
// methods come from add_methods(). Background loops run as runtime::Loop inside life().
class Role {
 public:
  explicit Role(WorkerInfo info) : info_(std::move(info)) {}
  virtual ~Role() = default;
  virtual void add_methods(Methods& methods) = 0;
  // Builds what the role needs from the run's resolved config.
  virtual void configure(const core::ConfigView& root) = 0;
  virtual void start() {}
  // Ends the role's loops (life() is already stopping); called before the role is destroyed.
  virtual void stop() {}
  virtual core::Scalars counters() const { return {}; }

  const WorkerInfo& info() const { return info_; }
  Lifecycle& life() { return life_; }

 private:
  WorkerInfo info_;
  Lifecycle life_;
};

using RoleFactory = std::function<std::unique_ptr<Role>(const WorkerInfo& info)>;

// The address this process's Gloo groups bind (runtime/collective.cpp): 127.0.0.1 unless a
// worker on a cluster node sets its node's address first (run_worker does, from WorkerInfo::host).
void set_collective_host(const std::string& host);

// The worker process's main loop; returns the exit code.
int run_worker(const WorkerInfo& info, const RoleFactory& make_role);

}  // namespace flotilla::runtime
