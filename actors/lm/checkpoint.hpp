#pragma once
// Checkpoints of a trained model that do not depend on the layout it trained in: whatever the
// ranks hold (replicas, fsdp chunks, tensor-parallel slices), the directory holds what one process
// would write, the HF files (config.json, model.safetensors) and, with the optimizer, Adam's state
// per whole parameter (optimizer.safetensors). Any layout reads it back, each rank cutting out
// its own part.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <filesystem>
#include <thread>

namespace flotilla::models {
class CausalLm;
}
namespace flotilla::algorithms {
class LmTrainer;
}
namespace flotilla::runtime {
class LayoutGroup;
}

namespace flotilla::actors::lm {

// Every rank of `group` calls it (`group` null: one process, or replicas of the whole model, and
// rank 0 writes). Otherwise the ranks of the first replica write their flat buffers to
// `dir`/shards, and rank 0 joins them into whole tensors and removes the shards.
void save_trained(const models::CausalLm& model, const algorithms::LmTrainer* trainer, runtime::LayoutGroup* group, int rank,
                  const std::filesystem::path& dir);

// Checkpoints written while training goes on (DataStates-LLM's idea): save() copies what
// save_trained writes into host memory, which is the only pause, and a thread of its own writes
// the copy. In a sharded layout the first replica's ranks each write their shard, and rank 0's
// thread joins them into the same whole files once every shard is there. One save at a time: a
// save waits for the one before it, and copies into the host buffers of the one before (no
// allocation and no page faults after the first). The thread that writes the files (rank 0's) writes
// `dir`/written last: "ok", or what went wrong (controller::background_written reads it).
class BackgroundSaver {
 public:
  BackgroundSaver() = default;
  ~BackgroundSaver();
  BackgroundSaver(const BackgroundSaver&) = delete;
  BackgroundSaver& operator=(const BackgroundSaver&) = delete;
  void save(const models::CausalLm& model, const algorithms::LmTrainer* trainer, runtime::LayoutGroup* group, int rank,
            const std::filesystem::path& dir, int64_t step);
  // Waits for the save in progress.
  void wait();

 private:
  at::Tensor copy(const std::string& name, const at::Tensor& t);  // into the buffer kept for `name`
  std::map<std::string, at::Tensor> buffers_;
  std::thread thread_;
};

// Reads `dir` into this rank's model (its slice) and, when the directory has optimizer state and
// `trainer` is given, into the optimizer (its chunk).
void load_trained(models::CausalLm& model, algorithms::LmTrainer* trainer, runtime::LayoutGroup* group, int rank,
                  const std::filesystem::path& dir);

}  // namespace flotilla::actors::lm
