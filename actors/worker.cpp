#include "actors/worker.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>
#include <chrono>
#include <thread>
#include <zmq.hpp>

#include "core/error.hpp"
#include "core/name_service.hpp"
#include "core/names.hpp"
#include "core/wire.hpp"

namespace flotilla::actors {

const Method* MethodTable::find(const std::string& name) const {
  auto it = methods_.find(name);
  return it == methods_.end() ? nullptr : &it->second;
}

std::string MethodTable::names() const {
  std::string out;
  for (const auto& [k, v] : methods_) out += (out.empty() ? "" : ", ") + k;
  return out;
}

void register_rl_roles();  // actors/rl_roles.cpp
void register_lm_roles();  // actors/lm_roles.cpp

namespace {
std::map<std::string, RoleFactory>& registered() {
  static std::map<std::string, RoleFactory> r;
  return r;
}
// Built-in roles join on first use, so static libraries need no registration tricks.
std::map<std::string, RoleFactory>& roles() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_rl_roles();
    register_lm_roles();
  });
  return registered();
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

void register_role(const std::string& name, RoleFactory factory) { registered()[name] = std::move(factory); }

std::vector<std::string> role_names() {
  std::vector<std::string> out;
  for (const auto& [k, v] : roles()) out.push_back(k);
  return out;
}

int run_worker(const WorkerInfo& info) {
  // Die with the controller: a local worker must never outlive the process that started it. The
  // controller may already be gone by the time this line runs, so compare with the pid it gave.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  const pid_t parent = info.controller_pid > 0 ? info.controller_pid : ::getppid();
  if (::getppid() != parent) return 1;

  auto it = roles().find(info.role);
  if (it == roles().end()) throw ConfigError("unknown worker role '" + info.role + "'");
  std::unique_ptr<Role> role = it->second(info);
  MethodTable methods;
  std::atomic<bool> stopping{false};
  methods.add("ping", [&](const std::string&, const core::Batch&) { return CallResult{info.name(), {}}; });
  methods.add("stop", [&](const std::string&, const core::Batch&) {
    stopping = true;
    return CallResult{"stopping", {}};
  });
  role->attach_stop_flag(&stopping);
  role->add_methods(methods);

  auto names = core::directory_name_service(info.name_dir);
  zmq::context_t context(1);
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 1000);
  router.bind("tcp://" + info.host + ":*");
  const std::string endpoint = router.get(zmq::sockopt::last_endpoint);
  const std::string key = core::names::worker_rpc(info.experiment, info.trial, info.role, info.rank);
  const auto ttl = info.heartbeat * 10;
  names->put(key, endpoint, ttl);

  // Heartbeats and name-service renewals run on their own thread, so a long method call does not
  // make the worker look dead.
  const std::string heartbeat_to =
      names->wait(core::names::controller(info.experiment, info.trial, "heartbeat"), std::chrono::seconds(60), "the controller");
  std::thread heartbeat([&] {
    zmq::socket_t push(context, zmq::socket_type::push);
    push.set(zmq::sockopt::linger, 0);
    push.set(zmq::sockopt::sndhwm, 16);
    push.connect(heartbeat_to);
    while (!stopping.load()) {
      core::OutMessage m(info.name());
      auto h = m.envelope().initHeartbeat();
      h.setRank(static_cast<uint32_t>(info.rank));
      h.setState("serving");
      h.setSentAt(now_s());
      m.send(push);  // never blocks the worker: a full queue drops the beat
      names->keepalive(key);
      for (auto waited = std::chrono::milliseconds(0); waited < info.heartbeat && !stopping.load();
           waited += std::chrono::milliseconds(20))
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (::getppid() != parent) stopping = true;  // the controller is gone
    }
  });

  core::DropCounter drops;
  router.set(zmq::sockopt::rcvtimeo, 100);
  while (!stopping.load()) {
    std::optional<core::InMessage> in;
    try {
      in = core::InMessage::receive(router, true);
    } catch (const core::DecodeError& e) {
      drops.record(e, "worker " + info.name());
      continue;
    }
    if (!in) continue;
    if (!in->envelope().isRpcRequest()) {
      drops.record(core::DecodeError("unexpected-type", "a worker got a message that is not an RPC request"),
                   "worker " + info.name());
      continue;
    }
    auto req = in->envelope().getRpcRequest();
    const std::string method = req.getMethod().cStr();
    core::OutMessage out(info.name());
    auto reply = out.envelope().initRpcReply();
    reply.setId(req.getId());
    try {
      const Method* fn = methods.find(method);
      if (!fn) throw Error("no method '" + method + "' (methods: " + methods.names() + ")");
      CallResult r = (*fn)(req.getArgs().cStr(), in->batch(req.getBatch()));
      reply.setOk(true);
      reply.setResult(r.result);
      out.put_batch(reply.initBatch(), r.batch);
    } catch (const std::exception& e) {
      reply.setOk(false);
      reply.setError("worker " + info.name() + " (rank " + std::to_string(info.rank) + "), method '" + method + "': " + e.what());
    }
    out.send(router, &in->route());
  }
  heartbeat.join();
  names->remove(key);
  return 0;
}

}  // namespace flotilla::actors
