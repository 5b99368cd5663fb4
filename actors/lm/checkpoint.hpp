#pragma once
// Checkpoints of a trained model that do not depend on the layout it trained in: whatever the
// ranks hold (replicas, fsdp chunks, tensor-parallel slices), the directory holds what one process
// would write, the HF files (config.json, model.safetensors) and, with the optimizer, Adam's state
// per whole parameter (optimizer.safetensors). Any layout reads it back, each rank cutting out
// its own part.
#include <filesystem>

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

// Reads `dir` into this rank's model (its slice) and, when the directory has optimizer state and
// `trainer` is given, into the optimizer (its chunk).
void load_trained(models::CausalLm& model, algorithms::LmTrainer* trainer, runtime::LayoutGroup* group, int rank,
                  const std::filesystem::path& dir);

}  // namespace flotilla::actors::lm
