#pragma once
// Registry<T>: the one way Flotilla looks things up by name (envs, networks, distributions,
// algorithms, advantage estimators, policy losses, LM algorithm families, programs, worker
// roles). Built-in entries join on first use from one function per registry, so static
// libraries need no self-registration tricks; a user's entry is added with add(). An unknown
// name is a ConfigError naming the kind, the closest known name and every known one.
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "core/error.hpp"

namespace flotilla::core {

template <class T>
class Registry {
 public:
  // `kind` names what is registered in messages ("env", "algorithm"); `builtins` adds the
  // built-in entries the first time the registry is used.
  explicit Registry(std::string kind, std::function<void(Registry&)> builtins = {})
      : kind_(std::move(kind)), builtins_(std::move(builtins)) {}
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Adds an entry; a name already taken is an Error (two entries cannot share a name).
  void add(const std::string& name, T entry) {
    if (!loading_) load();
    std::lock_guard lock(mutex_);
    if (!entries_.emplace(name, std::move(entry)).second) throw Error("a " + kind_ + " named '" + name + "' is already registered");
  }

  // The entry called `name`; ConfigError "unknown <kind> 'x'; did you mean 'y'? (known: ...)".
  const T& at(const std::string& name) const {
    if (const T* e = find(name)) return *e;
    throw ConfigError(unknown(name));
  }
  const T* find(const std::string& name) const {
    load();
    std::lock_guard lock(mutex_);
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  // Every name, sorted.
  std::vector<std::string> names() const {
    load();
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& [name, entry] : entries_) out.push_back(name);
    return out;
  }
  const std::string& kind() const { return kind_; }

  // Reads `key` of `section` as one of the registered names (an error points at the file and
  // line, with a suggestion) and returns that name.
  std::string choose(const ConfigView& section, const std::string& key, const std::string& fallback) const {
    return section.choice(key, fallback, names());
  }

  // The message at() throws for an unknown name.
  std::string unknown(const std::string& name) const {
    const std::vector<std::string> known = names();
    std::string list;
    for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
    const std::string hint = closest_match(name, known);
    return "unknown " + kind_ + " '" + name + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?") +
           " (known: " + (list.empty() ? "none" : list) + ")";
  }

 private:
  void load() const {
    std::call_once(once_, [this] {
      if (!builtins_) return;
      loading_ = true;
      builtins_(const_cast<Registry&>(*this));
      loading_ = false;
    });
  }

  std::string kind_;
  std::function<void(Registry&)> builtins_;
  mutable std::once_flag once_;
  mutable bool loading_ = false;
  mutable std::mutex mutex_;
  std::map<std::string, T> entries_;
};

}  // namespace flotilla::core
