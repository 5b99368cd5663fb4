#pragma once
// Experiment configs: YAML files composed through `defaults:` lists and `a.b.c=value` overrides,
// read into typed values with defaults and checks. Every error names the file, line and column,
// the key path, what was expected and what was found.
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/error.hpp"

namespace flotilla::core {

struct SourceLocation {
  std::string file;  // a path, or a description such as "command-line override 'a=1'"
  int line = 0;      // 1-based; 0 when there is no line to point at
  int column = 0;    // 1-based
  std::string str() const;
};

// The candidate closest to `word` (edit distance with transpositions), or "" when none is close.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// A YAML experiment after composition, remembering where every value came from.
class ConfigTree {
 public:
  // Loads `file`, first merging the files its `defaults:` list names (paths relative to it).
  static ConfigTree load_file(const std::filesystem::path& file);
  static ConfigTree load_string(const std::string& yaml, const std::string& source = "<string>");

  // Applies `a.b.c=value`; the value is parsed as YAML (numbers, booleans, lists, maps).
  void apply_override(const std::string& assignment);
  void apply_overrides(const std::vector<std::string>& assignments);

  const YAML::Node& root() const { return root_; }
  // Where the key at `path` ("a.b[2].c") was written, falling back to its nearest parent.
  SourceLocation key_location(const std::string& path) const;
  SourceLocation value_location(const std::string& path) const;

 private:
  struct Origin {
    SourceLocation key;
    SourceLocation value;
  };
  static ConfigTree load_recursive(const std::filesystem::path& file,
                                   std::vector<std::filesystem::path>& stack);
  void record_origins(const YAML::Node& node, const std::string& path, const std::string& file);
  void merge_from(const ConfigTree& other);
  const Origin* find_origin(std::string path) const;

  YAML::Node root_ = YAML::Node(YAML::NodeType::Map);
  std::map<std::string, Origin> origins_;
};

// A check on a value: returns "" when it holds, otherwise what was expected ("a number >= 0").
template <class T>
using Check = std::function<std::string(const T&)>;

template <class T>
Check<T> at_least(T min) {
  return [min](const T& v) { return v >= min ? std::string() : "a value >= " + YAML::Node(min).as<std::string>(); };
}
template <class T>
Check<T> greater_than(T min) {
  return [min](const T& v) { return v > min ? std::string() : "a value > " + YAML::Node(min).as<std::string>(); };
}
template <class T>
Check<T> in_range(T lo, T hi) {
  return [lo, hi](const T& v) {
    return (v >= lo && v <= hi) ? std::string()
                                : "a value in [" + YAML::Node(lo).as<std::string>() + ", " +
                                      YAML::Node(hi).as<std::string>() + "]";
  };
}

class ConfigView;

// The reading state of one experiment: which keys the program read and with what values.
class Config {
 public:
  explicit Config(ConfigTree tree);
  ConfigView root();
  const ConfigTree& tree() const { return tree_; }

  // Throws ConfigError for the first key in the tree that no part of the program read,
  // suggesting the closest key that exists beside it.
  void check_unknown_keys() const;
  // Every key the program read, with the value it used (given or default): running this
  // document again reproduces the run.
  const YAML::Node& resolved() const { return resolved_; }
  std::string resolved_yaml() const;

 private:
  friend class ConfigView;
  void check_map(const YAML::Node& node, const std::string& path) const;
  ConfigTree tree_;
  YAML::Node resolved_ = YAML::Node(YAML::NodeType::Map);
  std::set<std::string> leaves_;    // full paths read as values
  std::set<std::string> sections_;  // full paths read as maps
};

// A map inside a Config, read key by key.
class ConfigView {
 public:
  template <class T>
  T get(const std::string& key, const T& fallback, const Check<T>& check = {}) const {
    std::optional<T> v = read<T>(key, check);
    T value = v ? *v : fallback;
    record(key, encode(value));
    return value;
  }
  template <class T>
  T require(const std::string& key, const Check<T>& check = {}) const {
    std::optional<T> v = read<T>(key, check);
    if (!v) fail_missing(key, describe(static_cast<T*>(nullptr)));
    record(key, encode(*v));
    return *v;
  }
  // A string that must be one of `allowed`; a near miss gets a suggestion.
  std::string choice(const std::string& key, const std::string& fallback,
                     const std::vector<std::string>& allowed) const;

  ConfigView section(const std::string& key) const;
  // The maps of a list (`workers: [{role: ...}, ...]`); missing means empty.
  std::vector<ConfigView> list(const std::string& key) const;
  bool has(const std::string& key) const;

  std::string path() const { return path_; }
  std::string path(const std::string& key) const;
  // Throws a ConfigError pointing at `key` (or at this section when the key is absent).
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  friend class Config;
  ConfigView(Config* config, std::string path, YAML::Node node);

  template <class T>
  std::optional<T> read(const std::string& key, const Check<T>& check) const {
    YAML::Node n = lookup(key);
    if (!n.IsDefined() || n.IsNull()) return std::nullopt;
    T value;
    if (!decode(n, value)) fail_type(key, n, describe(static_cast<T*>(nullptr)));
    if (check) {
      std::string expected = check(value);
      if (!expected.empty()) fail_type(key, n, expected);
    }
    return value;
  }
  YAML::Node lookup(const std::string& key) const;
  void record(const std::string& key, const YAML::Node& value) const;
  [[noreturn]] void fail_type(const std::string& key, const YAML::Node& found,
                              const std::string& expected) const;
  [[noreturn]] void fail_missing(const std::string& key, const std::string& expected) const;

  static bool decode(const YAML::Node& n, bool& out);
  static bool decode(const YAML::Node& n, int& out);
  static bool decode(const YAML::Node& n, int64_t& out);
  static bool decode(const YAML::Node& n, double& out);
  static bool decode(const YAML::Node& n, std::string& out);
  template <class T>
  static bool decode(const YAML::Node& n, std::vector<T>& out) {
    if (!n.IsSequence()) return false;
    out.clear();
    for (const auto& item : n) {
      T v;
      if (!decode(item, v)) return false;
      out.push_back(std::move(v));
    }
    return true;
  }
  static std::string describe(bool*) { return "a boolean (true or false)"; }
  static std::string describe(int*) { return "an integer"; }
  static std::string describe(int64_t*) { return "an integer"; }
  static std::string describe(double*) { return "a number"; }
  static std::string describe(std::string*) { return "a string"; }
  template <class T>
  static std::string describe(std::vector<T>*) {
    return "a list of " + describe(static_cast<T*>(nullptr)).substr(2) + "s";
  }
  static YAML::Node encode(bool v);
  static YAML::Node encode(int v);
  static YAML::Node encode(int64_t v);
  static YAML::Node encode(double v);
  static YAML::Node encode(const std::string& v);
  template <class T>
  static YAML::Node encode(const std::vector<T>& v) {
    YAML::Node seq(YAML::NodeType::Sequence);
    for (const auto& x : v) seq.push_back(encode(x));
    seq.SetStyle(YAML::EmitterStyle::Flow);
    return seq;
  }

  Config* config_;
  std::string path_;
  YAML::Node node_;
};

}  // namespace flotilla::core
