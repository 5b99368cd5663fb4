#include "controller/run/checkpoint.hpp"

#include <algorithm>
#include <chrono>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;

std::vector<std::pair<int64_t, fs::path>> checkpoints_of(const fs::path& run_dir) {
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

namespace {
// The files of checkpoint `iteration`, relative to the run directory: its tensors, and what its
// workers wrote under checkpoints/step-<iteration>/.
std::vector<fs::path> checkpoint_files(const fs::path& run_dir, int64_t iteration) {
  std::vector<fs::path> out = {fs::path("checkpoints") / ("ckpt-" + std::to_string(iteration) + ".safetensors")};
  const fs::path steps = run_dir / step_dir(iteration);
  if (fs::exists(steps))
    for (const auto& e : fs::recursive_directory_iterator(steps))
      if (e.is_regular_file()) out.push_back(fs::relative(e.path(), run_dir));
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
  nlohmann::ordered_json manifest = nlohmann::ordered_json::parse(manifest_json);
  nlohmann::ordered_json files = nlohmann::ordered_json::object();
  for (const fs::path& f : checkpoint_files(run_dir, iteration))
    files[f.generic_string()] = {{"bytes", fs::file_size(run_dir / f)}, {"sha256", core::sha256_of_file(run_dir / f)}};
  manifest["files"] = files;
  core::write_file_atomically(dir / (stem + ".json"), [&](std::ostream& out) { out << manifest.dump(2) << '\n'; });
  auto all = checkpoints_of(run_dir);
  for (size_t i = 0; keep > 0 && i + keep < all.size(); ++i) {
    fs::remove(all[i].second);
    fs::path t = all[i].second;
    fs::remove(t.replace_extension(".safetensors"));
    fs::remove_all(run_dir / step_dir(all[i].first));
  }
}

std::string step_dir(int64_t iteration) { return "checkpoints/step-" + std::to_string(iteration); }

std::vector<std::string> verify_checkpoint(const fs::path& manifest) {
  const fs::path run_dir = manifest.parent_path().parent_path();
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(core::read_file(manifest));
  } catch (const std::exception& e) {
    return {manifest.string() + ": not a readable manifest (" + e.what() + ")"};
  }
  std::vector<std::string> problems;
  if (!m.contains("files")) return problems;  // written before manifests had checksums: nothing to check against
  for (const auto& [name, want] : m["files"].items()) {
    const fs::path f = run_dir / name;
    if (!fs::exists(f)) {
      problems.push_back(f.string() + ": missing");
      continue;
    }
    const auto bytes = fs::file_size(f), expected = want.at("bytes").get<uintmax_t>();
    if (bytes != expected) {
      problems.push_back(f.string() + ": " + std::to_string(bytes) + " bytes where the manifest says " + std::to_string(expected) +
                         (bytes < expected ? " (truncated)" : ""));
      continue;
    }
    if (core::sha256_of_file(f) != want.at("sha256").get<std::string>()) problems.push_back(f.string() + ": SHA-256 differs from the manifest's (corrupted)");
  }
  return problems;
}

std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  auto all = checkpoints_of(run_dir);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    const std::vector<std::string> problems = verify_checkpoint(it->second);
    if (problems.empty()) return it->second;
    spdlog::warn("checkpoint {} is damaged, {}{}; trying the one before", it->second.string(), problems.front(),
                 problems.size() > 1 ? " (and " + std::to_string(problems.size() - 1) + " more)" : "");
  }
  if (!all.empty()) throw Error(run_dir.string() + ": every checkpoint is damaged (`flotilla checkpoint verify " + run_dir.string() + "` lists why)");
  return std::nullopt;
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

bool background_written(const fs::path& dir) {
  if (!fs::exists(dir / "written")) return false;
  std::string text = core::read_file(dir / "written");
  while (!text.empty() && text.back() == '\n') text.pop_back();
  if (text != "ok") throw Error(dir.string() + ": the background save failed: " + text);
  return true;
}

CheckpointWriter::~CheckpointWriter() {
  if (manifest_.valid()) manifest_.wait();
}

void CheckpointWriter::add(const fs::path& run_dir, int64_t iteration, std::string manifest_json, int keep, std::function<bool()> written) {
  poll(true);
  pending_ = Pending{run_dir, iteration, std::move(manifest_json), keep, std::move(written)};
}

void CheckpointWriter::poll(bool wait) {
  if (!pending_) return;
  while (!pending_->written()) {
    if (!wait) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (manifest_.valid()) manifest_.get();  // the one before, and what went wrong writing it
  manifest_ = std::async(std::launch::async, [p = std::move(*pending_)] { save_checkpoint(p.run_dir, p.iteration, {}, p.manifest, p.keep); });
  pending_.reset();
}

void CheckpointWriter::flush() {
  poll(true);
  if (manifest_.valid()) manifest_.get();
}

void CheckpointWriter::drop() {
  pending_.reset();
  if (manifest_.valid()) manifest_.wait();
}

}  // namespace flotilla::controller
