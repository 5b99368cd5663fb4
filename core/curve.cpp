#include "core/curve.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cstring>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace flotilla::core::curve {
namespace fs = std::filesystem;

namespace {

bool is_tcp(const std::string& endpoint) { return endpoint.rfind("tcp://", 0) == 0; }

std::string binary_key(const std::string& z85, const std::string& what) {
  std::string out(32, '\0');
  if (z85.size() != 40 || !zmq_z85_decode(reinterpret_cast<uint8_t*>(out.data()), z85.c_str()))
    throw ConfigError(what + ": expected a 40-character Z85 CURVE key");
  return out;
}

// The ZAP handler and the handshake monitors of one ZeroMQ context, on a thread of their own
// that ends when the context is terminated.
struct Guard {
  std::mutex mutex;
  std::vector<std::pair<zmq::socket_t, std::string>> pending;  // monitor sockets not yet polled, and what they watch
};

struct State {
  std::mutex mutex;
  std::optional<RunKeys> keys;
  std::string client_key;  // the run's client public key, 32 bytes
  fs::path file;
  std::map<void*, std::shared_ptr<Guard>> guards;  // by context handle
  uint64_t monitors = 0;
  std::atomic<int64_t> refused{0};
  // Each kind of refusal (the peer or socket, and why) is logged when first seen, then at most
  // every kRepeatLog with how many came since: a peer retrying every 100 ms does not flood the log.
  struct Logged {
    std::chrono::steady_clock::time_point at;
    int64_t since = 0;
  };
  std::map<std::string, Logged> logged;
};

// Never destroyed: a guard thread may still answer while the process's statics are torn down.
State& state() {
  static State& s = *new State;
  return s;
}

constexpr auto kRepeatLog = std::chrono::seconds(10);

void refuse(const std::string& what) {
  State& s = state();
  ++s.refused;
  std::lock_guard lock(s.mutex);
  const auto now = std::chrono::steady_clock::now();
  if (s.logged.size() > 1024) s.logged.clear();  // many distinct peers: forget, and log them afresh
  auto [it, first] = s.logged.try_emplace(what);
  State::Logged& l = it->second;
  if (!first && now - l.at < kRepeatLog) {
    ++l.since;
    return;
  }
  spdlog::warn("refused a connection {}{}", what, l.since ? " (and " + std::to_string(l.since) + " more like it since the last such line)" : "");
  l = {now, 0};
}

std::vector<zmq::message_t> receive_all(zmq::socket_t& socket) {
  std::vector<zmq::message_t> frames;
  do {
    frames.emplace_back();
    if (!socket.recv(frames.back())) break;
  } while (frames.back().more());
  return frames;
}

// RFC 27 (ZAP): version, request id, domain, address, identity, mechanism, credentials.
void answer(zmq::socket_t& zap) {
  std::vector<zmq::message_t> r = receive_all(zap);
  if (r.size() < 6) return;  // not a ZAP request; nothing sent it but libzmq
  const std::string address = r[3].to_string(), mechanism = r[5].to_string();
  bool ok = false;
  {
    State& s = state();
    std::lock_guard lock(s.mutex);
    ok = mechanism == "CURVE" && r.size() >= 7 && !s.client_key.empty() && r[6].to_string() == s.client_key;
  }
  if (!ok) refuse("from " + address + ": " + (mechanism == "CURVE" ? "its key is not this run's" : "mechanism " + mechanism));
  const std::string status = ok ? "200" : "400";
  zap.send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
  zap.send(r[1], zmq::send_flags::sndmore);
  zap.send(zmq::buffer(status), zmq::send_flags::sndmore);
  zap.send(zmq::buffer(std::string(ok ? "OK" : "not this run's key")), zmq::send_flags::sndmore);
  zap.send(zmq::str_buffer(""), zmq::send_flags::sndmore);
  zap.send(zmq::str_buffer(""), zmq::send_flags::none);
}

// A monitor event: 2 bytes of event, 4 of value, then the endpoint. Returns false when the
// watched socket has closed.
bool observe(zmq::socket_t& monitor) {
  std::vector<zmq::message_t> r = receive_all(monitor);
  if (r.size() < 2 || r[0].size() < 6) return true;
  uint16_t event = 0;
  uint32_t value = 0;
  std::memcpy(&event, r[0].data(), 2);
  std::memcpy(&value, static_cast<const char*>(r[0].data()) + 2, 4);
  if (event == ZMQ_EVENT_MONITOR_STOPPED) return false;
  std::ostringstream why;
  why << "on " << r[1].to_string() << ": ";
  // A plaintext peer may see the mismatch first and hang up: then this side sees only the hang-up.
  if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) why << "the peer left during the CURVE handshake (" << zmq_strerror(static_cast<int>(value)) << ")";
  else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) why << "the peer does not use CURVE";
  else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) why << "the peer's CURVE hello does not open with this run's server key";
  else why << "the peer did not complete a CURVE handshake (ZMTP error 0x" << std::hex << value << ")";
  refuse(why.str());
  return true;
}

void guard_loop(void* context, std::shared_ptr<Guard> guard, zmq::socket_t zap) {
  std::vector<std::pair<zmq::socket_t, std::string>> monitors;
  for (;;) {
    {
      std::lock_guard lock(guard->mutex);
      for (auto& p : guard->pending) monitors.push_back(std::move(p));
      guard->pending.clear();
    }
    std::vector<zmq::pollitem_t> items = {{zap.handle(), 0, ZMQ_POLLIN, 0}};
    for (auto& [m, what] : monitors) items.push_back({m.handle(), 0, ZMQ_POLLIN, 0});
    try {
      // New monitors are picked up within the timeout; their events wait in their queues.
      zmq::poll(items, std::chrono::milliseconds(200));
      if (items[0].revents & ZMQ_POLLIN) answer(zap);
      for (size_t i = monitors.size(); i-- > 0;)
        if ((items[i + 1].revents & ZMQ_POLLIN) && !observe(monitors[i].first)) monitors.erase(monitors.begin() + static_cast<long>(i));
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) break;
      if (e.num() != EINTR) spdlog::warn("CURVE guard: {}", e.what());
    }
  }
  // The context is terminating; it waits for these sockets, which close as the thread returns.
  State& s = state();
  std::lock_guard lock(s.mutex);
  auto it = s.guards.find(context);
  if (it != s.guards.end() && it->second == guard) s.guards.erase(it);
}

// The guard of `context`, started on first use; the ZAP socket is bound before this returns, so
// a server socket bound after it is never without its handler.
std::shared_ptr<Guard> guard_of(zmq::context_t& context) {
  State& s = state();
  std::lock_guard lock(s.mutex);
  auto& g = s.guards[context.handle()];
  if (g) return g;
  zmq::socket_t zap(context, zmq::socket_type::rep);
  zap.set(zmq::sockopt::linger, 0);
  zap.bind("inproc://zeromq.zap.01");
  g = std::make_shared<Guard>();
  std::thread(guard_loop, context.handle(), g, std::move(zap)).detach();
  return g;
}

}  // namespace

RunKeys generate() {
  if (!zmq_has("curve")) throw Error("this libzmq was built without CURVE support; run with security.curve: false");
  auto pair = [] {
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0) throw Error(std::string("zmq_curve_keypair: ") + zmq_strerror(zmq_errno()));
    return KeyPair{pub, sec};
  };
  return RunKeys{pair(), pair()};
}

void write(const fs::path& file, const RunKeys& keys) {
  const fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  std::error_code ec;
  if (!fs::exists(dir)) {
    fs::create_directories(dir, ec);
    if (!ec) fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace, ec);
    if (ec) throw IoError(dir.string() + ": cannot create the key directory: " + ec.message());
  }
  const std::string text = "server-public " + keys.server.public_key + "\nserver-secret " + keys.server.secret_key +
                           "\nclient-public " + keys.client.public_key + "\nclient-secret " + keys.client.secret_key + "\n";
  // Made 0600 from the start (never readable by others, even for a moment), then renamed over.
  const fs::path tmp = file.string() + ".tmp";
  fs::remove(tmp, ec);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw IoError(tmp.string() + ": cannot create the key file: " + std::strerror(errno));
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!written || std::rename(tmp.c_str(), file.c_str()) != 0) {
    fs::remove(tmp, ec);
    throw IoError(file.string() + ": cannot write the key file: " + std::strerror(errno));
  }
}

RunKeys read(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0)
    throw ConfigError(file.string() + ": no CURVE key file here (make one with `flotilla keys gen DIR`)");
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    throw ConfigError(file.string() + ": the key file is open to other users (mode " + [&] {
      std::ostringstream o;
      o << std::oct << (st.st_mode & 0777);
      return o.str();
    }() + "); make it the owner's alone: chmod 600 " + file.string());
  std::map<std::string, std::string> fields;
  std::istringstream in(read_file(file));
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string name, value, extra;
    if (!(words >> name)) continue;
    if (!(words >> value) || (words >> extra)) throw ConfigError(file.string() + ": expected 'NAME KEY' lines, found '" + line + "'");
    fields[name] = value;
  }
  auto key = [&](const std::string& name) {
    auto it = fields.find(name);
    if (it == fields.end()) throw ConfigError(file.string() + ": no " + name + " key");
    binary_key(it->second, file.string() + ", " + name);
    return it->second;
  };
  RunKeys k{{key("server-public"), key("server-secret")}, {key("client-public"), key("client-secret")}};
  // A pair whose halves do not belong together would fail every handshake with no clear cause.
  for (const auto& [name, pair] : {std::pair{"server", &k.server}, std::pair{"client", &k.client}}) {
    char derived[41];
    if (zmq_curve_public(derived, pair->secret_key.c_str()) != 0 || pair->public_key != derived)
      throw ConfigError(file.string() + ": the " + name + " public key does not belong to its secret key");
  }
  return k;
}

void use(std::optional<RunKeys> keys, const fs::path& file) {
  State& s = state();
  std::lock_guard lock(s.mutex);
  s.client_key = keys ? binary_key(keys->client.public_key, "client-public") : "";
  s.keys = std::move(keys);
  s.file = s.keys ? file : fs::path();
}

std::optional<fs::path> key_file() {
  State& s = state();
  std::lock_guard lock(s.mutex);
  if (!s.keys || s.file.empty()) return std::nullopt;
  return s.file;
}

void bind(zmq::context_t& context, zmq::socket_t& socket, const std::string& endpoint) {
  std::optional<RunKeys> keys;
  uint64_t n = 0;
  {
    State& s = state();
    std::lock_guard lock(s.mutex);
    keys = s.keys;
    n = s.monitors++;
  }
  try {
    if (!keys || !is_tcp(endpoint)) {
      socket.bind(endpoint);
      return;
    }
    std::shared_ptr<Guard> guard = guard_of(context);
    socket.set(zmq::sockopt::curve_server, 1);
    socket.set(zmq::sockopt::curve_secretkey, keys->server.secret_key);
    socket.set(zmq::sockopt::zap_domain, "flotilla");
    // Peers that fail before ZAP is asked (plaintext, a wrong server key) show only here.
    const std::string watch = "inproc://flotilla-curve-monitor-" + std::to_string(::getpid()) + "-" + std::to_string(n);
    if (zmq_socket_monitor(socket.handle(), watch.c_str(), ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                                       ZMQ_EVENT_MONITOR_STOPPED) != 0)
      throw zmq::error_t();
    zmq::socket_t monitor(context, zmq::socket_type::pair);
    monitor.set(zmq::sockopt::linger, 0);
    monitor.connect(watch);
    socket.bind(endpoint);
    std::lock_guard lock(guard->mutex);
    guard->pending.emplace_back(std::move(monitor), endpoint);
  } catch (const zmq::error_t& e) {
    throw Error("cannot bind '" + endpoint + "': " + e.what());
  }
}

void connect(zmq::socket_t& socket, const std::string& endpoint) {
  std::optional<RunKeys> keys;
  {
    State& s = state();
    std::lock_guard lock(s.mutex);
    keys = s.keys;
  }
  try {
    if (keys && is_tcp(endpoint)) {
      socket.set(zmq::sockopt::curve_serverkey, keys->server.public_key);
      socket.set(zmq::sockopt::curve_publickey, keys->client.public_key);
      socket.set(zmq::sockopt::curve_secretkey, keys->client.secret_key);
    }
    socket.connect(endpoint);
  } catch (const zmq::error_t& e) {
    throw Error("cannot connect to '" + endpoint + "': " + e.what());
  }
}

int64_t refused() { return state().refused.load(); }

}  // namespace flotilla::core::curve
