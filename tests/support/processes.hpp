#pragma once
// The worker processes of a run, seen from a test, and waiting for a condition with a deadline.
#include <sys/types.h>

#include <csignal>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "cli.hpp"
#include "core/fs.hpp"

namespace flotilla::test {

// Pids of worker processes whose command line mentions `marker` (their run's name directory).
inline std::vector<pid_t> workers_of(const std::string& marker) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd;
    try {
      cmd = core::read_file(e.path() / "cmdline");
    } catch (...) {
      continue;
    }
    for (char& c : cmd)
      if (c == '\0') c = ' ';
    if (contains(cmd, " worker ") && contains(cmd, marker)) {
      std::string state;
      try {
        state = core::read_file(e.path() / "stat");
      } catch (...) {
        continue;
      }
      if (state.find(") Z") == std::string::npos) out.push_back(std::stoi(name));  // zombies are not running
    }
  }
  return out;
}

inline bool wait_until(const std::function<bool()>& pred, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pred();
}
// Kills (SIGKILL) the first worker of `marker`'s run whose command line has `--role ROLE`; returns
// whether there was one.
inline bool kill_worker(const std::string& marker, const std::string& role) {
  for (pid_t pid : workers_of(marker)) {
    std::string cmd = core::read_file("/proc/" + std::to_string(pid) + "/cmdline");
    for (char& c : cmd)
      if (c == '\0') c = ' ';
    if (contains(cmd, "--role " + role + " ")) {
      ::kill(pid, SIGKILL);
      return true;
    }
  }
  return false;
}

}  // namespace flotilla::test
