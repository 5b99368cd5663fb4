#include "core/name_service.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace flotilla::core {
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

std::string NameService::wait(const std::string& key, ms timeout, const std::string& expected_from) {
  const auto deadline = clock_type::now() + timeout;
  auto pause = ms(1);
  while (true) {
    if (auto v = get(key)) return *v;
    if (clock_type::now() >= deadline)
      throw TimeoutError("waited " + std::to_string(timeout.count()) + " ms for name-service key '" + key +
                         "', which " + expected_from + " should have published");
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, ms(50));
  }
}

namespace {

void check_key(const std::string& key) {
  if (key.empty() || key.front() == '/' || key.find("..") != std::string::npos ||
      key.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:") != std::string::npos)
    throw Error("name-service key '" + key + "' has characters outside [A-Za-z0-9_-./:] or a '..'");
}

class MemoryNameService final : public NameService {
 public:
  void put(const std::string& key, const std::string& value, ms ttl) override {
    check_key(key);
    std::lock_guard lock(mutex_);
    entries_[key] = {value, ttl, clock_type::now()};
  }
  bool keepalive(const std::string& key) override {
    std::lock_guard lock(mutex_);
    auto it = live(key);
    if (it == entries_.end()) return false;
    it->second.renewed = clock_type::now();
    return true;
  }
  std::optional<std::string> get(const std::string& key) override {
    std::lock_guard lock(mutex_);
    auto it = live(key);
    if (it == entries_.end()) return std::nullopt;
    return it->second.value;
  }
  void remove(const std::string& key) override {
    std::lock_guard lock(mutex_);
    entries_.erase(key);
  }
  std::vector<std::string> list(const std::string& prefix) override {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (auto it = entries_.lower_bound(prefix); it != entries_.end() && it->first.rfind(prefix, 0) == 0; ++it)
      if (!expired(it->second)) out.push_back(it->first);
    return out;
  }

 private:
  struct Entry {
    std::string value;
    ms ttl;
    clock_type::time_point renewed;
  };
  static bool expired(const Entry& e) { return e.ttl.count() > 0 && clock_type::now() - e.renewed > e.ttl; }
  std::map<std::string, Entry>::iterator live(const std::string& key) {
    auto it = entries_.find(key);
    if (it != entries_.end() && expired(it->second)) {
      entries_.erase(it);
      return entries_.end();
    }
    return it;
  }
  std::mutex mutex_;
  std::map<std::string, Entry> entries_;
};

// Each key is a file: first line the TTL in ms, then the value. Renewal touches the file.
class DirectoryNameService final : public NameService {
 public:
  explicit DirectoryNameService(fs::path root) : root_(std::move(root)) {
    std::error_code ec;
    fs::create_directories(root_, ec);
    if (ec) throw IoError(root_.string() + ": cannot create the name-service directory: " + ec.message());
  }
  void put(const std::string& key, const std::string& value, ms ttl) override {
    check_key(key);
    fs::path p = path(key);
    fs::create_directories(p.parent_path());
    write_file_atomically(p, [&](std::ostream& out) { out << ttl.count() << '\n' << value; });
  }
  bool keepalive(const std::string& key) override {
    if (!read(key)) return false;
    std::error_code ec;
    fs::last_write_time(path(key), fs::file_time_type::clock::now(), ec);
    return !ec;
  }
  std::optional<std::string> get(const std::string& key) override {
    check_key(key);
    return read(key);
  }
  void remove(const std::string& key) override {
    std::error_code ec;
    fs::remove(path(key), ec);
  }
  std::vector<std::string> list(const std::string& prefix) override {
    std::vector<std::string> out;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root_, ec); !ec && it != fs::recursive_directory_iterator(); ++it) {
      if (!it->is_regular_file()) continue;
      const std::string key = fs::relative(it->path(), root_).generic_string();
      if (key.find(".tmp.") != std::string::npos || key.rfind(prefix, 0) != 0) continue;
      if (read(key)) out.push_back(key);
    }
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path(const std::string& key) const { return root_ / key; }
  std::optional<std::string> read(const std::string& key) {
    std::error_code ec;
    const fs::path p = path(key);
    auto modified = fs::last_write_time(p, ec);
    if (ec) return std::nullopt;
    std::string text;
    try {
      text = read_file(p);
    } catch (const IoError&) {
      return std::nullopt;  // removed between the two calls
    }
    const size_t nl = text.find('\n');
    if (nl == std::string::npos) return std::nullopt;  // not written by us
    const long long ttl = std::stoll(text.substr(0, nl));
    if (ttl > 0 && fs::file_time_type::clock::now() - modified > ms(ttl)) return std::nullopt;
    return text.substr(nl + 1);
  }
  fs::path root_;
};

}  // namespace

std::unique_ptr<NameService> memory_name_service() { return std::make_unique<MemoryNameService>(); }
std::unique_ptr<NameService> directory_name_service(const fs::path& root) {
  return std::make_unique<DirectoryNameService>(root);
}

}  // namespace flotilla::core
