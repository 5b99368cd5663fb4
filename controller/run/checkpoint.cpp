#include "controller/run/checkpoint.hpp"

#include <algorithm>
#include <regex>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;

namespace {
std::vector<std::pair<int64_t, fs::path>> manifests(const fs::path& run_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  const fs::path dir = run_dir / "checkpoints";
  if (!fs::exists(dir)) return out;
  static const std::regex name("ckpt-(\\d+)\\.json");
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string f = e.path().filename().string();
    if (std::regex_match(f, m, name)) out.emplace_back(std::stoll(m[1]), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

void save_checkpoint(const fs::path& run_dir, int64_t iteration, const NamedTensors& tensors,
                     const std::string& manifest_json, int keep) {
  const fs::path dir = run_dir / "checkpoints";
  fs::create_directories(dir);
  const std::string stem = "ckpt-" + std::to_string(iteration);
  core::save_safetensors(dir / (stem + ".safetensors"), tensors, {{"format", "flotilla-checkpoint"}});
  core::write_file_atomically(dir / (stem + ".json"), [&](std::ostream& out) { out << manifest_json << '\n'; });
  auto all = manifests(run_dir);
  for (size_t i = 0; keep > 0 && i + keep < all.size(); ++i) {
    fs::remove(all[i].second);
    fs::path t = all[i].second;
    fs::remove(t.replace_extension(".safetensors"));
    fs::remove_all(run_dir / step_dir(all[i].first));
  }
}

std::string step_dir(int64_t iteration) { return "checkpoints/step-" + std::to_string(iteration); }

std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  auto all = manifests(run_dir);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

Checkpoint load_checkpoint(const fs::path& path) {
  fs::path manifest = path, tensors = path;
  manifest.replace_extension(".json");
  tensors.replace_extension(".safetensors");
  if (!fs::exists(manifest)) throw ConfigError(manifest.string() + ": no such checkpoint manifest");
  if (!fs::exists(tensors)) throw ConfigError(tensors.string() + ": the checkpoint's tensors are missing");
  Checkpoint c;
  c.manifest_path = manifest;
  c.manifest_json = core::read_file(manifest);
  c.tensors = core::load_safetensors(tensors).tensors;
  return c;
}

}  // namespace flotilla::controller
