#include "runtime/worker.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <mutex>
#include <thread>
#include <zmq.hpp>

#include "core/curve.hpp"
#include "core/error.hpp"
#include "core/name_service.hpp"
#include "core/names.hpp"
#include "core/wire.hpp"
#include "runtime/data.hpp"

namespace flotilla::runtime {

// ---- the method table ----

const Methods::Entry* Methods::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

std::string Methods::names() const {
  std::string out;
  for (const auto& [k, v] : entries_) out += (out.empty() ? "" : ", ") + k;
  return out;
}

std::vector<std::string> Methods::lanes() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : entries_)
    if (std::find(out.begin(), out.end(), v.spec.lane) == out.end()) out.push_back(v.spec.lane);
  return out;
}

void Methods::add(const std::string& name, Entry entry) {
  if (!entries_.emplace(name, std::move(entry)).second)
    throw Error("worker " + worker_ + " registers method '" + name + "' twice");
}

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

const char* const kOutbox = "inproc://flotilla-worker-outbox";

// FLOTILLA_FAULT_INJECT=WORKER:METHOD:N[:after] kills worker WORKER (SIGKILL, as a crash would) as
// its Nth call of METHOD starts, or with `after` once that call has run and before it replies.
// Once per run: RUN_DIR/fault_injected records it, so the worker's replacement lives on. For
// testing a deployment's fault policy (and Flotilla's own tests).
class FaultInjection {
 public:
  explicit FaultInjection(const WorkerInfo& info) {
    const char* spec = std::getenv("FLOTILLA_FAULT_INJECT");
    if (!spec || !*spec) return;
    std::vector<std::string> parts;
    std::stringstream in(spec);
    for (std::string p; std::getline(in, p, ':');) parts.push_back(p);
    if (parts.size() < 3 || parts.size() > 4 || (parts.size() == 4 && parts[3] != "after"))
      throw ConfigError(std::string("FLOTILLA_FAULT_INJECT='") + spec + "': expected WORKER:METHOD:N or WORKER:METHOD:N:after");
    if (parts[0] != info.name()) return;
    method_ = parts[1];
    call_ = std::stoll(parts[2]);
    after_ = parts.size() == 4;
    marker_ = std::filesystem::path(info.name_dir).parent_path() / "fault_injected";
  }
  // The call of `method` starts (`done` false) or has run (true).
  void at(const std::string& method, bool done) {
    if (method != method_) return;
    if (!done) ++seen_;
    if (done != after_ || seen_ != call_ || std::filesystem::exists(marker_)) return;
    std::ofstream(marker_) << method_ << " call " << call_ << (after_ ? " after" : "") << "\n";
    ::kill(::getpid(), SIGKILL);
  }

 private:
  std::string method_;
  int64_t call_ = 0, seen_ = 0;
  bool after_ = false;
  std::filesystem::path marker_;
};

// One worker process: the I/O thread (this one) owns the ROUTER socket; each lane is a thread that
// runs its methods one after another and hands replies back through the outbox.
class Runtime {
 public:
  Runtime(const WorkerInfo& info, std::unique_ptr<Role> role)
      : info_(info), role_(std::move(role)), methods_(info.name()), names_(core::directory_name_service(info.name_dir)) {
    add_lifecycle();
    role_->add_methods(methods_);
    outbox_.bind(kOutbox);
    router_.set(zmq::sockopt::linger, 1000);
    core::curve::bind(context_, router_, info_.rpc_endpoint.empty() ? "tcp://" + info_.host + ":*" : info_.rpc_endpoint);
    endpoint_ = router_.get(zmq::sockopt::last_endpoint);
    for (const auto& lane : methods_.lanes()) lanes_.emplace(lane, std::make_unique<Lane>(*this, lane, lane != "main"));
  }

  int serve() {
    const std::string key = core::names::worker_rpc(info_.experiment, info_.trial, info_.role, info_.rank);
    names_->put(key, endpoint_, info_.heartbeat * 10);
    std::thread heartbeat([&] { beat(info_.heartbeat_to, key); });
    std::thread io([this] {
      loop();
      // Leaving: parked work wakes, and the main lane ends after the method it runs.
      role_->life().stop();
      lanes_.at("main")->finish();
    });
    // The main lane runs on the process's main thread: the heavy work (models, updates) runs, and
    // allocates, where a one-process program would.
    lanes_.at("main")->run();
    io.join();
    role_->stop();
    for (auto& [name, lane] : lanes_) lane->close();
    {
      std::lock_guard lock(beat_mutex_);
      stopping_ = true;
    }
    beat_wake_.notify_all();
    heartbeat.join();
    names_->remove(key);
    return 0;
  }

 private:
  struct Task {
    std::shared_ptr<core::InMessage> message;
    const Methods::Entry* method;
  };

  class Lane {
   public:
    // A lane with a thread of its own, or (`threaded` false) one whose caller runs it.
    Lane(Runtime& rt, std::string name, bool threaded) : rt_(rt), name_(std::move(name)) {
      if (threaded) thread_ = std::thread([this] { run(); });
    }
    ~Lane() { close(); }
    void push(Task t) {
      std::lock_guard lock(mutex_);
      tasks_.push_back(std::move(t));
      ready_.notify_one();
    }
    // Ends run() once the tasks queued are done.
    void finish() {
      {
        std::lock_guard lock(mutex_);
        closing_ = true;
      }
      ready_.notify_one();
    }
    void close() {
      finish();
      if (thread_.joinable()) thread_.join();
    }

    void run() {
      zmq::socket_t wake(rt_.context_, zmq::socket_type::push);
      wake.set(zmq::sockopt::linger, 0);
      wake.connect(kOutbox);
      Fetcher fetcher(rt_.context_, rt_.endpoint_, rt_.store_, std::chrono::minutes(10));
      fetcher.make_current();
      while (true) {
        Task t;
        {
          std::unique_lock lock(mutex_);
          ready_.wait(lock, [this] { return closing_ || !tasks_.empty(); });
          if (tasks_.empty()) return;
          t = std::move(tasks_.front());
          tasks_.pop_front();
        }
        // libtorch's thread count is a per-thread setting: every lane uses the one the role chose.
        const int threads = rt_.threads_.load();
        if (threads > 0 && at::get_num_threads() != threads) at::set_num_threads(threads);
        rt_.reply(t, rt_.execute(t, fetcher, name_ == "main"), wake);
      }
    }
   private:
    Runtime& rt_;
    std::string name_;
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<Task> tasks_;
    bool closing_ = false;
    std::thread thread_;
  };

  // The lifecycle every role has: configure on the main lane (it builds the role's models and
  // streams), the rest on the control lane, so a busy or paused worker answers.
  void add_lifecycle() {
    methods_.on<Configure>([this](const Configure& c) {
      run_config_ = std::make_unique<core::Config>(core::ConfigTree::load_string(c.yaml, "the run's config"));
      role_->configure(run_config_->root());
      threads_ = at::get_num_threads();  // what the role asked for, for every lane and loop
      role_->life().configured(info_.name());
      return Void{};
    });
    methods_.on<Start>([this](const Start&) {
      role_->life().started(info_.name());
      role_->start();
      return status();
    });
    methods_.on<Pause>([this](const Pause&) {
      if (!role_->life().pause(std::chrono::minutes(10)))
        throw TimeoutError("worker " + info_.name() + ": its work did not reach a point to pause within 10 minutes");
      return status();
    });
    methods_.on<Resume>([this](const Resume&) {
      role_->life().resume();
      return status();
    });
    methods_.on<Poll>([this](const Poll&) { return status(); });
  }

  Status status() const {
    Status s{info_.name(), Lifecycle::name(role_->life().state()), role_->counters()};
    s.counters.push_back({"store/objects", static_cast<double>(store_.objects())});
    s.counters.push_back({"store/bytes", static_cast<double>(store_.bytes())});
    s.counters.push_back({"transport/dropped", static_cast<double>(dropped())});
    return s;
  }

  int64_t dropped() const {
    int64_t n = 0;
    for (const auto& [kind, count] : drops_.counts()) n += count;
    return n;
  }

  // Runs a task's method; the reply to send.
  std::unique_ptr<core::OutMessage> execute(Task& t, Fetcher& fetcher, bool work) {
    auto out = std::make_unique<core::OutMessage>(info_.name());
    auto req = t.message->envelope().getRpcRequest();
    auto reply = out->envelope().initRpcReply();
    reply.setId(req.getId());
    const std::string method = req.getMethod().cStr();
    faults_.at(method, false);
    try {
      std::optional<Lifecycle::Section> section;
      if (work) section.emplace(role_->life());
      const core::Batch input = fetcher.assemble(*t.message, req.getInput());
      reply.setResultType(t.method->result_type);
      core::Batch output = t.method->invoke(req.getArgs(), input, reply.initResult());
      if (req.getKeep()) {
        auto kept = reply.getOutput().initKept();
        kept.setRows(output.size());
        auto fields = kept.initFields(static_cast<unsigned>(output.names().size()));
        for (unsigned i = 0; i < output.names().size(); ++i) fields.set(i, output.names()[i]);
        kept.setObject(store_.put(std::move(output)));
      } else {
        out->put_batch(reply.getOutput().initBatch(), output);
      }
      faults_.at(method, true);
      reply.setOk(true);
    } catch (const std::exception& e) {
      reply.setOk(false);
      reply.setError("worker " + info_.name() + " (rank " + std::to_string(info_.rank) + "), method '" + method + "': " + e.what());
    }
    return out;
  }

  void reply(Task& t, std::unique_ptr<core::OutMessage> out, zmq::socket_t& wake) {
    {
      std::lock_guard lock(outbox_mutex_);
      replies_.emplace_back(std::move(t.message), std::move(out));
    }
    wake.send(zmq::str_buffer("r"), zmq::send_flags::dontwait);
  }

  void loop() {
    zmq::pollitem_t items[] = {{router_.handle(), 0, ZMQ_POLLIN, 0}, {outbox_.handle(), 0, ZMQ_POLLIN, 0}};
    while (!leaving_.load()) {
      zmq::poll(items, 2, std::chrono::milliseconds(-1));
      if (items[1].revents & ZMQ_POLLIN) send_replies();
      if (items[0].revents & ZMQ_POLLIN) receive();
    }
    send_replies();
  }

  void send_replies() {
    zmq::message_t x;
    while (outbox_.recv(x, zmq::recv_flags::dontwait)) {
    }
    std::deque<std::pair<std::shared_ptr<core::InMessage>, std::unique_ptr<core::OutMessage>>> ready;
    {
      std::lock_guard lock(outbox_mutex_);
      ready.swap(replies_);
    }
    for (auto& [in, out] : ready) out->send(router_, &in->route());
  }

  // Every message waiting on the ROUTER: calls go to their lanes, fetches and releases are served
  // here, anything else is dropped and counted.
  void receive() {
    router_.set(zmq::sockopt::rcvtimeo, 0);
    while (true) {
      std::shared_ptr<core::InMessage> in;
      try {
        auto m = core::InMessage::receive(router_, true);
        if (!m) return;
        in = std::make_shared<core::InMessage>(std::move(*m));
      } catch (const core::DecodeError& e) {
        drops_.record(e, "worker " + info_.name());
        continue;
      }
      auto env = in->envelope();
      if (env.isRpcRequest()) call(in);
      else if (env.isDataFetch()) serve_fetch(*in);
      else if (env.isDataRelease())
        for (uint64_t id : env.getDataRelease().getObjects()) store_.release(id);
      else
        drops_.record(core::DecodeError("unexpected-type", "a message that is not a call, fetch or release"),
                      "worker " + info_.name());
    }
  }

  void call(const std::shared_ptr<core::InMessage>& in) {
    auto req = in->envelope().getRpcRequest();
    const std::string name = req.getMethod().cStr();
    if (name == Stop::spec.name) {
      core::OutMessage out(info_.name());
      auto r = out.envelope().initRpcReply();
      r.setId(req.getId());
      r.setOk(true);
      r.setResultType(codec::type_id<Void>());
      codec::write(Void{}, r.initResult());
      out.send(router_, &in->route());
      leaving_ = true;
      return;
    }
    const Methods::Entry* m = methods_.find(name);
    std::string error;
    if (!m) error = "no method '" + name + "' (methods: " + methods_.names() + ")";
    else if (req.getArgsType() != m->args_type)
      error = "method '" + name + "' takes " + m->args_name + " arguments; the call sent another type (type id " +
              std::to_string(req.getArgsType()) + ")";
    if (!error.empty()) {
      core::OutMessage out(info_.name());
      auto r = out.envelope().initRpcReply();
      r.setId(req.getId());
      r.setOk(false);
      r.setError("worker " + info_.name() + " (rank " + std::to_string(info_.rank) + "): " + error);
      out.send(router_, &in->route());
      return;
    }
    lanes_.at(m->spec.lane)->push({in, m});
  }

  void serve_fetch(const core::InMessage& in) {
    auto f = in.envelope().getDataFetch();
    core::OutMessage out(info_.name());
    auto r = out.envelope().initDataReply();
    r.setId(f.getId());
    try {
      std::vector<std::string> fields;
      for (auto n : f.getFields()) fields.emplace_back(n.cStr());
      if (f.getRanges().size() > 0) {
        std::vector<std::pair<int64_t, int64_t>> ranges;
        for (auto range : f.getRanges()) ranges.emplace_back(range.getBegin(), range.getEnd());
        out.put_batch(r.initBatch(), store_.gather(f.getObject(), fields, ranges));
      } else {
        out.put_batch(r.initBatch(), store_.read(f.getObject(), fields, RowSet::read(f.getRows())));
      }
      r.setOk(true);
    } catch (const std::exception& e) {
      r.setOk(false);
      r.setError("worker " + info_.name() + ": " + e.what());
    }
    out.send(router_, &in.route());
  }

  // Heartbeats and name-service renewals on their own thread, so a long method does not make the
  // worker look dead; ends the worker when the controller is gone.
  void beat(const std::string& to, const std::string& key) {
    const pid_t parent = info_.controller_pid > 0 ? info_.controller_pid : ::getppid();
    zmq::socket_t push(context_, zmq::socket_type::push);
    push.set(zmq::sockopt::linger, 0);
    push.set(zmq::sockopt::sndhwm, 16);
    core::curve::connect(push, to);
    zmq::socket_t wake(context_, zmq::socket_type::push);
    wake.set(zmq::sockopt::linger, 0);
    wake.connect(kOutbox);
    std::unique_lock lock(beat_mutex_);
    while (!stopping_) {
      core::OutMessage m(info_.name());
      auto h = m.envelope().initHeartbeat();
      h.setRank(static_cast<uint32_t>(info_.rank));
      h.setState(Lifecycle::name(role_->life().state()));
      h.setSentAt(now_s());
      h.setEndpoint(endpoint_);
      h.setRefused(static_cast<uint64_t>(core::curve::refused()));
      m.send(push);  // never blocks: a full queue drops the beat
      names_->keepalive(key);
      if (::getppid() != parent && !leaving_.exchange(true)) {  // the controller is gone
        wake.send(zmq::str_buffer("x"), zmq::send_flags::dontwait);
      }
      beat_wake_.wait_for(lock, info_.heartbeat, [this] { return stopping_; });
    }
  }

  WorkerInfo info_;
  FaultInjection faults_{info_};
  std::unique_ptr<Role> role_;
  Methods methods_;
  std::unique_ptr<core::NameService> names_;
  std::unique_ptr<core::Config> run_config_;
  zmq::context_t context_{1};
  zmq::socket_t router_{context_, zmq::socket_type::router};
  zmq::socket_t outbox_{context_, zmq::socket_type::pull};
  std::string endpoint_;
  DataStore store_;
  core::DropCounter drops_;
  std::mutex outbox_mutex_;
  std::deque<std::pair<std::shared_ptr<core::InMessage>, std::unique_ptr<core::OutMessage>>> replies_;
  std::atomic<bool> leaving_{false};
  std::atomic<int> threads_{0};
  std::mutex beat_mutex_;
  std::condition_variable beat_wake_;
  bool stopping_ = false;
  std::map<std::string, std::unique_ptr<Lane>> lanes_;  // last: their threads use the members above
};

}  // namespace

int run_worker(const WorkerInfo& info, const RoleFactory& make_role) {
  // Die with the controller: a local worker must never outlive the process that started it. The
  // controller may already be gone by the time this line runs, so compare with the pid it gave.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  // Ctrl-C in a terminal reaches the whole foreground process group, workers included: the
  // controller decides what it means (stop after the current step) and stops them itself.
  ::signal(SIGINT, SIG_IGN);
  const pid_t parent = info.controller_pid > 0 ? info.controller_pid : ::getppid();
  if (::getppid() != parent) return 1;
  set_collective_host(info.host);
  Runtime runtime(info, make_role(info));
  return runtime.serve();
}

}  // namespace flotilla::runtime
