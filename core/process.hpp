#pragma once
// Child processes, all started through one helper on Boost.Process: worker processes (whose exits
// the controller's event loop hears of at once), external reward commands (stdin in, stdout out,
// a timeout that stops their whole process group) and benchmark peers.
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace flotilla::core {

struct ProcessSpec {
  std::filesystem::path program;  // an absolute path, or a name looked up on PATH
  std::vector<std::string> args;
  std::string what;  // names the process in errors ("worker rollout/1", "reward command 'x'")
  // Resource limits of the child (run_with_input), 0 for none: CPU seconds (RLIMIT_CPU; past
  // them it is killed) and address space (RLIMIT_AS; past it allocations fail).
  double cpu_s = 0;
  int64_t memory_bytes = 0;
};

// How a child ended: its exit code, or the signal that killed it.
struct ExitStatus {
  int code = 0;
  int signal = 0;  // > 0 when killed by a signal
  std::string str() const;  // "exited with code 3", "was killed by signal 9"
};

class Process {
 public:
  // Starts the child; throws Error naming spec.what when it cannot.
  explicit Process(const ProcessSpec& spec);
  // The same, and `on_exit` runs on `io`'s thread as soon as the child ends.
  Process(const ProcessSpec& spec, boost::asio::io_context& io, std::function<void(ExitStatus)> on_exit);
  // A child still running is killed (SIGKILL) and reaped.
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const;
  // Waits up to `timeout` for the child to end: its status, or nullopt while it still runs.
  std::optional<ExitStatus> wait_for(std::chrono::milliseconds timeout);
  void signal(int signo);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The absolute path of `name` on PATH, or "" when it is not there.
std::string find_program(const std::string& name);

// This machine's host name (gethostname), "localhost" when it has none.
std::string hostname();

// This machine's IPv4 address on `interface`, or on the first interface that is up and not
// loopback when it is ""; throws naming the interface (or saying none is up).
std::string node_address(const std::string& interface = "");

// This process's peak resident memory (Linux's VmHWM) in MiB since it started or since the last
// reset_peak_memory(); -1 where /proc does not say.
double peak_memory_mib();
// Starts a new peak from the memory resident now (writes 5 to /proc/self/clear_refs); false
// where the kernel does not allow it.
bool reset_peak_memory();

// Runs `spec` in a process group of its own with `input` on its stdin and returns its stdout.
// At `timeout` the whole group is killed and TimeoutError thrown; a non-zero exit is an Error;
// both name spec.what. A child that stops reading its input early does not kill this process.
std::string run_with_input(const ProcessSpec& spec, const std::string& input, std::chrono::duration<double> timeout);

}  // namespace flotilla::core
