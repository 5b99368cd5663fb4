#include "core/config.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <sstream>

namespace flotilla::core {
namespace fs = std::filesystem;

std::string SourceLocation::str() const {
  if (line <= 0) return file;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

namespace {

// Optimal string alignment distance: Levenshtein plus adjacent transpositions ("trian" -> "train").
size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      size_t cost = std::tolower(a[i - 1]) == std::tolower(b[j - 1]) ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

std::string describe_found(const YAML::Node& n) {
  if (n.IsMap()) return "a map";
  if (n.IsSequence()) return "a list";
  if (n.IsNull()) return "nothing";
  return "'" + n.Scalar() + "'";
}

SourceLocation mark_location(const YAML::Mark& mark, const std::string& file) {
  if (mark.is_null()) return {file, 0, 0};
  return {file, mark.line + 1, mark.column + 1};
}

std::string join_key(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string parent_of(const std::string& path) {
  // "a.b[2].c" -> "a.b[2]"; "a.b[2]" -> "a.b"; "a" -> "".
  size_t cut = path.find_last_of(".[");
  return cut == std::string::npos ? std::string() : path.substr(0, cut);
}

YAML::Node merged(const YAML::Node& base, const YAML::Node& over) {
  if (!base.IsMap() || !over.IsMap()) return YAML::Clone(over);
  YAML::Node out = YAML::Clone(base);
  for (const auto& kv : over) {
    const std::string key = kv.first.Scalar();
    out[key] = out[key].IsDefined() ? merged(out[key], kv.second) : YAML::Clone(kv.second);
  }
  return out;
}

YAML::Node parse_yaml(const std::string& text, const std::string& source) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(mark_location(e.mark, source).str() + ": invalid YAML: " + e.msg);
  }
}

// Splits "a.b[2].c" into {"a", "b", 2, "c"}; integers mark list indices. A '[' that does not
// open an index ("[digits]") is part of a key: keys are the user's text.
struct Segment {
  std::string key;
  long index = -1;
};
std::vector<Segment> split_path(const std::string& path) {
  std::vector<Segment> out;
  std::string cur;
  for (size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    const size_t close = c == '[' ? path.find(']', i) : std::string::npos;
    const bool index = close != std::string::npos && close > i + 1 && close - i - 1 <= 9 &&
                       path.find_first_not_of("0123456789", i + 1) == close;
    if (c == '.' || index) {
      if (!cur.empty()) out.push_back({cur});
      cur.clear();
      if (index) {
        out.push_back({"", std::stol(path.substr(i + 1, close - i - 1))});
        i = close;
      }
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back({cur});
  return out;
}

}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(1, (word.size() + 2) / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

// ---- ConfigTree ----

ConfigTree ConfigTree::load_file(const fs::path& file) {
  std::vector<fs::path> stack;
  return load_recursive(file, stack);
}

ConfigTree ConfigTree::load_recursive(const fs::path& file, std::vector<fs::path>& stack) {
  std::ifstream in(file);
  if (!in) throw ConfigError(file.string() + ": cannot open the config file");
  fs::path canonical = fs::weakly_canonical(file);
  if (std::find(stack.begin(), stack.end(), canonical) != stack.end())
    throw ConfigError(file.string() + ": `defaults:` includes itself (through " +
                      stack.back().string() + ")");
  std::stringstream text;
  text << in.rdbuf();
  YAML::Node doc = parse_yaml(text.str(), file.string());
  if (doc.IsNull()) doc = YAML::Node(YAML::NodeType::Map);
  if (!doc.IsMap())
    throw ConfigError(mark_location(doc.Mark(), file.string()).str() +
                      ": an experiment config must be a map of keys, found " + describe_found(doc));

  ConfigTree out;
  stack.push_back(canonical);
  if (YAML::Node defaults = doc["defaults"]) {
    if (!defaults.IsSequence())
      throw ConfigError(mark_location(defaults.Mark(), file.string()).str() +
                        ": defaults: expected a list of config files, found " + describe_found(defaults));
    for (const auto& item : defaults) {
      if (!item.IsScalar())
        throw ConfigError(mark_location(item.Mark(), file.string()).str() +
                          ": defaults: expected a file path, found " + describe_found(item));
      fs::path included = file.parent_path() / item.Scalar();
      if (!fs::exists(included))
        throw ConfigError(mark_location(item.Mark(), file.string()).str() + ": defaults: no such file '" +
                          included.string() + "'");
      out.merge_from(load_recursive(included, stack));
    }
    doc.remove("defaults");
  }
  stack.pop_back();

  ConfigTree own;
  own.root_ = doc;
  own.record_origins(doc, "", file.string());
  out.merge_from(own);
  return out;
}

ConfigTree ConfigTree::load_string(const std::string& yaml, const std::string& source) {
  ConfigTree out;
  YAML::Node doc = parse_yaml(yaml, source);
  if (doc.IsNull()) doc = YAML::Node(YAML::NodeType::Map);
  if (!doc.IsMap())
    throw ConfigError(source + ": an experiment config must be a map of keys, found " + describe_found(doc));
  out.root_ = doc;
  out.record_origins(doc, "", source);
  return out;
}

void ConfigTree::merge_from(const ConfigTree& other) {
  root_ = merged(root_, other.root_);
  for (const auto& [path, origin] : other.origins_) origins_[path] = origin;
}

void ConfigTree::record_origins(const YAML::Node& node, const std::string& path, const std::string& file) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      std::string p = join_key(path, kv.first.Scalar());
      origins_[p] = {mark_location(kv.first.Mark(), file), mark_location(kv.second.Mark(), file)};
      record_origins(kv.second, p, file);
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      std::string p = path + "[" + std::to_string(i) + "]";
      SourceLocation loc = mark_location(node[i].Mark(), file);
      origins_[p] = {loc, loc};
      record_origins(node[i], p, file);
    }
  }
}

void ConfigTree::apply_override(const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("override '" + assignment + "': expected key.path=value");
  const std::string path = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  const std::string where = "command-line override '" + assignment + "'";
  if (text.empty()) throw ConfigError(where + ": no value after '='");
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception&) {
    value = YAML::Node(text);  // not YAML: take it as a plain string
  }

  std::vector<Segment> segments = split_path(path);
  for (const auto& s : segments)
    if (s.key.empty()) throw ConfigError(where + ": list indices cannot be overridden; give the whole list");
  YAML::Node cur;
  cur.reset(root_);
  std::string so_far;
  for (size_t i = 0; i + 1 < segments.size(); ++i) {
    so_far = join_key(so_far, segments[i].key);
    YAML::Node next = cur[segments[i].key];
    if (!next.IsDefined() || next.IsNull()) {
      cur[segments[i].key] = YAML::Node(YAML::NodeType::Map);
      next = cur[segments[i].key];
    } else if (!next.IsMap()) {
      throw ConfigError(where + ": '" + so_far + "' is " + describe_found(next) + ", not a map");
    }
    cur.reset(next);
  }
  cur[segments.back().key] = value;
  SourceLocation loc{where, 0, 0};
  origins_[path] = {loc, loc};
  // Anything recorded under the replaced value no longer exists.
  for (auto it = origins_.upper_bound(path); it != origins_.end() && it->first.rfind(path, 0) == 0;) {
    char next = it->first.size() > path.size() ? it->first[path.size()] : '\0';
    if (next == '.' || next == '[') it = origins_.erase(it);
    else ++it;
  }
}

void ConfigTree::apply_overrides(const std::vector<std::string>& assignments) {
  for (const auto& a : assignments) apply_override(a);
}

const ConfigTree::Origin* ConfigTree::find_origin(std::string path) const {
  while (true) {
    auto it = origins_.find(path);
    if (it != origins_.end()) return &it->second;
    if (path.empty()) return nullptr;
    path = parent_of(path);
  }
}

SourceLocation ConfigTree::key_location(const std::string& path) const {
  const Origin* o = find_origin(path);
  return o ? o->key : SourceLocation{"<config>", 0, 0};
}

SourceLocation ConfigTree::value_location(const std::string& path) const {
  const Origin* o = find_origin(path);
  return o ? o->value : SourceLocation{"<config>", 0, 0};
}

// ---- Config ----

Config::Config(ConfigTree tree) : tree_(std::move(tree)) {}

ConfigView Config::root() { return ConfigView(this, "", tree_.root()); }

void Config::check_unknown_keys() const { check_map(tree_.root(), ""); }

void Config::check_map(const YAML::Node& node, const std::string& path) const {
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      std::string p = path + "[" + std::to_string(i) + "]";
      if (sections_.count(p)) check_map(node[i], p);
    }
    return;
  }
  if (!node.IsMap()) return;
  for (const auto& kv : node) {
    const std::string key = kv.first.Scalar();
    const std::string p = join_key(path, key);
    if (leaves_.count(p)) continue;
    if (sections_.count(p)) {
      check_map(kv.second, p);
      continue;
    }
    std::vector<std::string> siblings;
    for (const auto* set : {&leaves_, &sections_})
      for (const auto& known : *set)
        if (parent_of(known) == path && known.size() > path.size())
          siblings.push_back(path.empty() ? known : known.substr(path.size() + 1));
    std::string msg = tree_.key_location(p).str() + ": unknown key '" + key + "' in " +
                      (path.empty() ? std::string("the top level") : "'" + path + "'");
    std::string hint = closest_match(key, siblings);
    if (!hint.empty()) msg += "; did you mean '" + hint + "'?";
    else if (!siblings.empty()) {
      std::sort(siblings.begin(), siblings.end());
      siblings.erase(std::unique(siblings.begin(), siblings.end()), siblings.end());
      msg += " (known keys: ";
      for (size_t i = 0; i < siblings.size(); ++i) msg += (i ? ", " : "") + siblings[i];
      msg += ")";
    }
    throw ConfigError(msg);
  }
}

std::string Config::resolved_yaml() const {
  YAML::Emitter out;
  out << resolved_;
  return std::string(out.c_str()) + "\n";
}

// ---- ConfigView ----

ConfigView::ConfigView(Config* config, std::string path, YAML::Node node)
    : config_(config), path_(std::move(path)), node_(node) {
  config_->sections_.insert(path_);
}

std::string ConfigView::path(const std::string& key) const { return join_key(path_, key); }

YAML::Node ConfigView::lookup(const std::string& key) const {
  config_->leaves_.insert(path(key));
  if (!node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  return node_[key];
}

bool ConfigView::has(const std::string& key) const {
  if (!node_.IsMap()) return false;
  YAML::Node n = node_[key];
  return n.IsDefined() && !n.IsNull();
}

void ConfigView::record(const std::string& key, const YAML::Node& value) const {
  YAML::Node cur;
  cur.reset(config_->resolved_);
  std::vector<Segment> segments = split_path(path(key));
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    const bool last = i + 1 == segments.size();
    YAML::Node next;
    if (s.key.empty()) {
      while (cur.size() <= static_cast<size_t>(s.index)) cur.push_back(YAML::Node(YAML::NodeType::Map));
      next.reset(cur[s.index]);
    } else {
      if (last) {
        cur[s.key] = value;
        return;
      }
      // A key read before as a value and now as a section (or list) becomes one: the resolved
      // config holds what was read last.
      const bool list = segments[i + 1].key.empty();
      const YAML::Node child = cur[s.key];
      if (!child.IsDefined() || child.IsNull() || (list ? !child.IsSequence() : !child.IsMap()))
        cur[s.key] = list ? YAML::Node(YAML::NodeType::Sequence) : YAML::Node(YAML::NodeType::Map);
      next.reset(cur[s.key]);
    }
    cur.reset(next);
  }
}

ConfigView ConfigView::section(const std::string& key) const {
  YAML::Node n = has(key) ? node_[key] : YAML::Node(YAML::NodeType::Map);
  if (!n.IsMap()) fail_type(key, n, "a map of keys");
  config_->leaves_.erase(path(key));
  return ConfigView(config_, path(key), n);
}

std::vector<ConfigView> ConfigView::list(const std::string& key) const {
  std::vector<ConfigView> out;
  if (!has(key)) return out;
  YAML::Node n = node_[key];
  if (!n.IsSequence()) fail_type(key, n, "a list");
  config_->sections_.insert(path(key));
  for (size_t i = 0; i < n.size(); ++i) {
    std::string p = path(key) + "[" + std::to_string(i) + "]";
    if (!n[i].IsMap()) {
      throw ConfigError(config_->tree_.value_location(p).str() + ": " + p + ": expected a map of keys, found " +
                        describe_found(n[i]));
    }
    out.push_back(ConfigView(config_, p, n[i]));
  }
  return out;
}

std::string ConfigView::choice(const std::string& key, const std::string& fallback,
                               const std::vector<std::string>& allowed) const {
  std::string value = get<std::string>(key, fallback);
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return value;
  std::string expected = "one of ";
  for (size_t i = 0; i < allowed.size(); ++i) expected += (i ? ", " : "") + allowed[i];
  std::string hint = closest_match(value, allowed);
  if (!hint.empty()) expected += " (did you mean '" + hint + "'?)";
  fail_type(key, YAML::Node(value), expected);
}

void ConfigView::fail(const std::string& key, const std::string& message) const {
  std::string p = path(key);
  throw ConfigError(config_->tree_.value_location(p).str() + ": " + p + ": " + message);
}

void ConfigView::fail_type(const std::string& key, const YAML::Node& found, const std::string& expected) const {
  fail(key, "expected " + expected + ", found " + describe_found(found));
}

void ConfigView::fail_missing(const std::string& key, const std::string& expected) const {
  SourceLocation loc = config_->tree_.key_location(path_);
  throw ConfigError(loc.str() + ": missing required key '" + path(key) + "' (" + expected + ")");
}

bool ConfigView::decode(const YAML::Node& n, bool& out) {
  if (!n.IsScalar()) return false;
  const std::string& s = n.Scalar();
  if (s == "true" || s == "True" || s == "TRUE") out = true;
  else if (s == "false" || s == "False" || s == "FALSE") out = false;
  else return false;
  return true;
}

bool ConfigView::decode(const YAML::Node& n, int64_t& out) {
  if (!n.IsScalar()) return false;
  std::string s = n.Scalar();
  s.erase(std::remove(s.begin(), s.end(), '_'), s.end());  // 1_000_000
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec == std::errc() && ptr == s.data() + s.size()) return true;
  double d;  // 1e6 is a whole number too
  if (!decode(YAML::Node(s), d) || !std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) return false;
  out = static_cast<int64_t>(d);
  return true;
}

bool ConfigView::decode(const YAML::Node& n, int& out) {
  int64_t v;
  if (!decode(n, v) || v < INT32_MIN || v > INT32_MAX) return false;
  out = static_cast<int>(v);
  return true;
}

bool ConfigView::decode(const YAML::Node& n, double& out) {
  if (!n.IsScalar()) return false;
  std::string s = n.Scalar();
  if (s == ".inf" || s == "inf") { out = INFINITY; return true; }
  if (s == "-.inf" || s == "-inf") { out = -INFINITY; return true; }
  const char* begin = s.data();
  if (!s.empty() && s[0] == '+') ++begin;
  auto [ptr, ec] = std::from_chars(begin, s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size() && !s.empty();
}

bool ConfigView::decode(const YAML::Node& n, std::string& out) {
  if (!n.IsScalar()) return false;
  out = n.Scalar();
  return true;
}

YAML::Node ConfigView::encode(bool v) { return YAML::Node(v ? "true" : "false"); }
YAML::Node ConfigView::encode(int v) { return YAML::Node(std::to_string(v)); }
YAML::Node ConfigView::encode(int64_t v) { return YAML::Node(std::to_string(v)); }
YAML::Node ConfigView::encode(double v) {
  if (std::isinf(v)) return YAML::Node(v > 0 ? ".inf" : "-.inf");
  if (std::isnan(v)) return YAML::Node(".nan");
  // The shortest text that reads back exactly, in plain notation unless that gets long.
  char buf[400];
  auto fixed = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
  std::string s(buf, fixed.ptr);
  if (s.size() > 12) {
    auto sci = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
    s.assign(buf, sci.ptr);
  }
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";  // stays a number, not an integer
  return YAML::Node(s);
}
YAML::Node ConfigView::encode(const std::string& v) { return YAML::Node(v); }

}  // namespace flotilla::core
