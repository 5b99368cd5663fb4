#pragma once
// Runs a Flotilla binary the way a user would, capturing its exit code and output.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace flotilla::test {

struct CliResult {
  int code = -1;
  std::string out, err;
};

// A child process with stdout and stderr sent to files in `dir`; killed if still running at the end.
class CliProcess {
 public:
  CliProcess(const std::string& binary, const std::vector<std::string>& args, const std::filesystem::path& dir,
             const std::filesystem::path& cwd = {})
      : out_path_(dir / ("stdout." + std::to_string(counter()))), err_path_(dir / ("stderr." + std::to_string(counter()))) {
    std::vector<std::string> argv_s = {binary};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
    if (posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~CliProcess() {
    if (pid_ > 0 && !done_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  void signal(int sig) const { ::kill(pid_, sig); }
  // To its whole process group, as a terminal's Ctrl-C does (the process must lead one: start it
  // under /usr/bin/setsid).
  void signal_group(int sig) const { ::kill(-pid_, sig); }
  // What the process has written to stderr so far.
  std::string err_so_far() const { return slurp(err_path_); }
  // Waits up to `timeout_s`; on timeout kills the child and reports code -9.
  CliResult wait(double timeout_s = 120) {
    CliResult r;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    int status = 0;
    while (true) {
      pid_t got = ::waitpid(pid_, &status, WNOHANG);
      if (got == pid_) break;
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        status = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    done_ = true;
    if (status == -1) r.code = -9;
    else if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
    else r.code = 128 + WTERMSIG(status);
    r.out = slurp(out_path_);
    r.err = slurp(err_path_);
    return r;
  }

 private:
  static int counter() {
    static int n = 0;
    return n++;
  }
  static std::string slurp(const std::filesystem::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  pid_t pid_ = -1;
  bool done_ = false;
  std::filesystem::path out_path_, err_path_;
};

inline CliResult run_cli(const std::string& binary, const std::vector<std::string>& args,
                         const std::filesystem::path& dir, const std::filesystem::path& cwd = {}) {
  return CliProcess(binary, args, dir, cwd).wait();
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace flotilla::test
