#pragma once
// Checkpoints in a run directory: checkpoints/ckpt-<iteration>.safetensors (tensors: parameters,
// optimizer, normalizers, env state, RNG) plus ckpt-<iteration>.json (the manifest), each
// written atomically, the manifest last, so a checkpoint exists only once both are whole. A
// program whose workers write their own state puts it in checkpoints/step-<iteration>/ (models,
// per-worker shards) before the manifest. The newest `keep` are kept, with their directories.
// The manifest lists every file of its checkpoint with its size and SHA-256 (`files`), so a
// truncated or corrupted checkpoint is found before it is loaded.
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::controller {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

void save_checkpoint(const std::filesystem::path& run_dir, int64_t iteration, const NamedTensors& tensors,
                     const std::string& manifest_json, int keep);

// Whether a worker's background save into `dir` is whole: it writes `dir`/written last, "ok" or
// what went wrong (thrown here as an Error naming the directory).
bool background_written(const std::filesystem::path& dir);

// Checkpoints whose workers write their files in the background (asynchronous checkpoints): the
// manifest of one is written, on a thread of its own that hashes every file, once `written` says
// every worker's files are whole, so the checkpoint exists only then. One is pending at a time.
class CheckpointWriter {
 public:
  ~CheckpointWriter();
  // A checkpoint whose files are being written; a pending one before it is finished first.
  void add(const std::filesystem::path& run_dir, int64_t iteration, std::string manifest_json, int keep,
           std::function<bool()> written);
  // Writes the pending checkpoint's manifest if its files are whole (`wait`: once they are).
  void poll(bool wait = false);
  // Every pending checkpoint finished and its manifest written (the end of a run); throws what
  // went wrong in the background.
  void flush();
  // Forgets the pending checkpoint (its workers failed; it never gets a manifest), after the
  // manifest being written, if any, is.
  void drop();
  bool pending() const { return pending_.has_value(); }

 private:
  struct Pending {
    std::filesystem::path run_dir;
    int64_t iteration;
    std::string manifest;
    int keep;
    std::function<bool()> written;
  };
  std::optional<Pending> pending_;
  std::future<void> manifest_;
};

struct Checkpoint {
  std::filesystem::path manifest_path;
  std::string manifest_json;
  NamedTensors tensors;
};

// checkpoints/step-<iteration>, where workers write their part of a checkpoint.
std::string step_dir(int64_t iteration);

// What is wrong with a checkpoint (its manifest's path): for each file of its manifest that is
// missing, of another size, or whose SHA-256 differs, the file and the reason; empty when whole.
std::vector<std::string> verify_checkpoint(const std::filesystem::path& manifest);

// Every checkpoint of a run, oldest first: (iteration, manifest path).
std::vector<std::pair<int64_t, std::filesystem::path>> checkpoints_of(const std::filesystem::path& run_dir);

// The newest checkpoint of a run that verifies, if any; a newer damaged one is skipped with a
// warning naming its file and what is wrong.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir);
// Loads a checkpoint from its manifest (.json) or tensor (.safetensors) path.
Checkpoint load_checkpoint(const std::filesystem::path& path);

}  // namespace flotilla::controller
