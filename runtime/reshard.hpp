#pragma once
// Moving weights between layouts (runtime/layout.hpp). Each source rank keeps its flat buffer of
// one weights version in its DataStore, with the version in the object's metadata; each
// destination rank pulls what its plan says, in buckets: one fetch per bucket naming the source's
// ranges, at most `window` unanswered per source, every source asked at once, each reply copied
// into place as it lands. Copies from the source rank in the destination's own process read its
// store without the transport.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/data.hpp"
#include "runtime/layout.hpp"

namespace flotilla::models {
class CausalLm;
}

namespace flotilla::runtime {

// A model's parameters as layouts see them: names, whole shapes (a tensor-parallel model's slices
// counted whole), and the dimension tensor parallelism splits (models::tensor_parallel_dim).
// Without `vocab_parallel`, the embedding and head split as the model's own are.
std::vector<ParamInfo> param_infos(const models::CausalLm& model, bool vocab_parallel);
std::vector<ParamInfo> param_infos(const models::CausalLm& model);

// Rank `rank`'s flat buffer in `layout`, from the model that rank trains or generates with (its
// tensor-parallel slice; a copy, cut to its fsdp chunk).
at::Tensor own_buffer(const models::CausalLm& model, const Layout& layout, int rank);

// Rank `rank`'s flat buffer in `layout`, cut from a whole model (a copy).
at::Tensor local_buffer(const models::CausalLm& model, const Layout& layout, int rank);

// Where a source rank's flat buffer of one version is: its holder's endpoint and object id.
struct ShardSource {
  std::string holder;
  uint64_t object = 0;
};

// What one destination's transfer took.
struct Transfer {
  int64_t sent_bytes = 0;   // received over the transport
  int64_t local_bytes = 0;  // copied from the source rank in this process
  int64_t buckets = 0;
  double seconds = 0;
};

struct TransferOptions {
  int64_t bucket_bytes = int64_t{32} << 20;
  int window = 4;  // buckets in flight per source
};

// Fills `into` (destination rank `dst`'s flat buffer, float32) as `plan` says, from `sources`
// (one per source rank) whose objects must hold `version` (an Error names the source otherwise).
Transfer receive(const ReshardPlan& plan, int dst, const std::vector<ShardSource>& sources, int64_t version,
                 at::Tensor into, const TransferOptions& options, Fetcher& fetcher);

// A 64-bit checksum of a tensor's bytes (FNV-1a over 8-byte words).
uint64_t checksum(const at::Tensor& t);

}  // namespace flotilla::runtime
