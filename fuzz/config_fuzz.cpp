// Experiment YAML as `flotilla run` reads it: parsed, an override applied, then every key read
// the ways a program reads keys (sections, lists, each typed get and a choice), unknown keys
// checked and the resolved config written back. The part after the first line "---override"
// is one `a.b=value` override.
#include <cstdint>
#include <string>

#include "core/config.hpp"
#include "core/error.hpp"

namespace {
using flotilla::core::ConfigView;

void read_all(const ConfigView& v, const YAML::Node& node, int depth) {
  if (depth > 16 || !node.IsMap()) return;
  for (const auto& kv : node) {
    std::string key;
    try {
      key = kv.first.as<std::string>();
    } catch (const YAML::Exception&) {
      continue;  // a key that is not a scalar: check_unknown_keys names it
    }
    auto attempt = [&](auto read) {
      try {
        read();
      } catch (const flotilla::ConfigError&) {
      }
    };
    attempt([&] { (void)v.get<bool>(key, false); });
    attempt([&] { (void)v.get<int>(key, 0); });
    attempt([&] { (void)v.get<int64_t>(key, 0, flotilla::core::at_least<int64_t>(0)); });
    attempt([&] { (void)v.get<double>(key, 0.0, flotilla::core::greater_than(0.0)); });
    attempt([&] { (void)v.get<std::string>(key, ""); });
    attempt([&] { (void)v.get<std::vector<std::string>>(key, {}); });
    attempt([&] { (void)v.get<std::vector<double>>(key, {}); });
    attempt([&] { (void)v.choice(key, "a", {"a", "b"}); });
    attempt([&] { read_all(v.section(key), kv.second, depth + 1); });
    attempt([&] {
      for (const ConfigView& item : v.list(key)) (void)item.has("group");
    });
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size), override_text;
  if (auto cut = text.find("\n---override\n"); cut != std::string::npos) {
    override_text = text.substr(cut + 13);
    text.resize(cut);
  }
  try {
    flotilla::core::ConfigTree tree = flotilla::core::ConfigTree::load_string(text, "fuzz.yaml");
    if (!override_text.empty()) tree.apply_overrides({override_text});
    flotilla::core::Config config(std::move(tree));
    ConfigView root = config.root();
    read_all(root, config.tree().root(), 0);
    try {
      config.check_unknown_keys();
    } catch (const flotilla::ConfigError&) {
    }
    (void)config.resolved_yaml();
  } catch (const flotilla::Error&) {
  }
  return 0;
}
