#include "core/process.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/buffers_iterator.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace flotilla::core {
namespace bp = boost::process;

namespace {

std::string resolve(const ProcessSpec& spec) {
  if (spec.program.is_absolute()) return spec.program.string();
  const std::string found = find_program(spec.program.string());
  if (found.empty()) throw Error(spec.what + ": '" + spec.program.string() + "' is not on PATH");
  return found;
}

ExitStatus status_of(int raw) {
  if (WIFSIGNALED(raw)) return {0, WTERMSIG(raw)};
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : raw, 0};
}

}  // namespace

std::string hostname() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || !host[0]) return "localhost";
  return host;
}

std::string node_address(const std::string& interface) {
  ifaddrs* all = nullptr;
  if (::getifaddrs(&all) != 0) throw Error(std::string("cannot list the network interfaces: ") + std::strerror(errno));
  std::string found, seen;
  for (ifaddrs* i = all; i && found.empty(); i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP)) continue;
    if (interface.empty() ? (i->ifa_flags & IFF_LOOPBACK) != 0 : interface != i->ifa_name) continue;
    char text[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, text, sizeof text);
    found = text;
  }
  for (ifaddrs* i = all; i; i = i->ifa_next)
    if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET) seen += std::string(seen.empty() ? "" : ", ") + i->ifa_name;
  ::freeifaddrs(all);
  if (found.empty())
    throw Error(interface.empty() ? "no network interface is up besides loopback (IPv4 ones: " + seen + ")"
                                  : "no IPv4 address on network interface '" + interface + "' (IPv4 ones: " + seen + ")");
  return found;
}

double peak_memory_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;  // "VmHWM:  1234 kB"
  return -1;
}

bool reset_peak_memory() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::filesystem::path p = std::filesystem::path(dir.empty() ? "." : dir) / name;
    if (::access(p.c_str(), X_OK) == 0 && !std::filesystem::is_directory(p)) return p.string();
  }
  return "";
}

std::string ExitStatus::str() const {
  return signal > 0 ? "was killed by signal " + std::to_string(signal) : "exited with code " + std::to_string(code);
}

struct Process::Impl {
  bp::child child;
};

Process::Process(const ProcessSpec& spec) : impl_(std::make_unique<Impl>()) {
  try {
    impl_->child = bp::child(bp::exe = resolve(spec), bp::args = spec.args);
  } catch (const bp::process_error& e) {
    throw Error(spec.what + ": cannot start " + spec.program.string() + ": " + e.what());
  }
}

Process::Process(const ProcessSpec& spec, boost::asio::io_context& io, std::function<void(ExitStatus)> on_exit)
    : impl_(std::make_unique<Impl>()) {
  try {
    Impl* impl = impl_.get();
    impl_->child = bp::child(bp::exe = resolve(spec), bp::args = spec.args, io,
                             bp::on_exit = [impl, on_exit](int, const std::error_code&) {
                               on_exit(status_of(impl->child.native_exit_code()));
                             });
  } catch (const bp::process_error& e) {
    throw Error(spec.what + ": cannot start " + spec.program.string() + ": " + e.what());
  }
}

Process::~Process() {
  std::error_code ec;
  if (impl_->child.valid() && impl_->child.running(ec)) {
    impl_->child.terminate(ec);
  }
}

pid_t Process::pid() const { return impl_->child.id(); }

std::optional<ExitStatus> Process::wait_for(std::chrono::milliseconds timeout) {
  std::error_code ec;
  if (impl_->child.wait_for(timeout, ec)) return status_of(impl_->child.native_exit_code());
  return std::nullopt;
}

void Process::signal(int signo) { ::kill(impl_->child.id(), signo); }

std::string run_with_input(const ProcessSpec& spec, const std::string& input, std::chrono::duration<double> timeout) {
  boost::asio::io_context io;
  bp::async_pipe to_child(io), from_child(io);
  bp::group group;
  bp::child child;
  try {
    // The limits are set in the child, between fork and exec.
    auto limits = bp::extend::on_exec_setup = [&spec](auto&) {
      if (spec.cpu_s > 0) {
        const auto cpu = static_cast<rlim_t>(std::ceil(spec.cpu_s));
        const rlimit l{cpu, cpu + 1};  // SIGXCPU at the limit, SIGKILL a second later
        ::setrlimit(RLIMIT_CPU, &l);
      }
      if (spec.memory_bytes > 0) {
        const rlimit l{static_cast<rlim_t>(spec.memory_bytes), static_cast<rlim_t>(spec.memory_bytes)};
        ::setrlimit(RLIMIT_AS, &l);
      }
    };
    child = bp::child(bp::exe = resolve(spec), bp::args = spec.args, bp::std_in < to_child, bp::std_out > from_child, group, limits);
  } catch (const bp::process_error& e) {
    throw Error(spec.what + ": cannot start: " + e.what());
  }
  // A program that exits without reading its input must not kill this process with SIGPIPE:
  // the signal is blocked on this thread, and a pending one consumed before unblocking.
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  // Feed stdin and drain stdout together, so neither side blocks on a full pipe.
  boost::asio::async_write(to_child, boost::asio::buffer(input), [&](const boost::system::error_code&, size_t) {
    boost::system::error_code ignored;
    to_child.close(ignored);
  });
  boost::asio::streambuf out;
  boost::asio::async_read(from_child, out, [](const boost::system::error_code&, size_t) {});
  io.run_for(std::chrono::duration_cast<std::chrono::nanoseconds>(timeout));
  const bool timed_out = !io.stopped();
  timespec zero{0, 0};
  while (sigtimedwait(&pipe_set, nullptr, &zero) > 0) {
  }
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  std::error_code ec;
  if (timed_out) {
    group.terminate(ec);
    child.wait(ec);
    std::ostringstream s;
    s << timeout.count();
    throw TimeoutError(spec.what + ": no complete answer within " + s.str() + " s; it was stopped");
  }
  child.wait(ec);
  const ExitStatus status = status_of(child.native_exit_code());
  if (status.signal == SIGXCPU || (spec.cpu_s > 0 && status.signal == SIGKILL))
    throw Error(spec.what + ": " + status.str() + " (past its limit of " + std::to_string(static_cast<int64_t>(std::ceil(spec.cpu_s))) +
                " CPU seconds)");
  if (status.signal > 0 || status.code != 0) throw Error(spec.what + ": " + status.str());
  return {boost::asio::buffers_begin(out.data()), boost::asio::buffers_end(out.data())};
}

}  // namespace flotilla::core
