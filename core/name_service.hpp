#pragma once
// The name service: where workers publish their addresses and find each other's. Two backends:
// in memory (one process, tests) and a directory on a shared file system (clusters; works on NFS).
// Entries can carry a keepalive TTL: one not renewed within it is gone.
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace flotilla::core {

class NameService {
 public:
  using ms = std::chrono::milliseconds;
  virtual ~NameService() = default;
  // Adds or replaces `key`; with ttl > 0 the entry lapses ttl after its last put or keepalive.
  virtual void put(const std::string& key, const std::string& value, ms ttl = ms(0)) = 0;
  // Renews a TTL entry; false when it is already gone.
  virtual bool keepalive(const std::string& key) = 0;
  virtual std::optional<std::string> get(const std::string& key) = 0;
  virtual void remove(const std::string& key) = 0;
  // Live keys that start with `prefix`, sorted.
  virtual std::vector<std::string> list(const std::string& prefix) = 0;
  // Waits for `key` to appear; throws TimeoutError naming the key and `expected_from` (the worker
  // that should have published it).
  std::string wait(const std::string& key, ms timeout, const std::string& expected_from);
};

std::unique_ptr<NameService> memory_name_service();
// Keys become files under `root` (created if needed); TTLs use file modification times.
std::unique_ptr<NameService> directory_name_service(const std::filesystem::path& root);

}  // namespace flotilla::core
