#pragma once
// The methods of the workers `flotilla bench reshard` starts (actors/weights/bench_role.cpp): each
// source rank keeps its flat buffer of a model in one layout; each destination rank fills its own
// in another, by the reshard plan or by the baseline (every parameter gathered on every source,
// then sent whole from source rank 0 to each destination).
#include "runtime/method.hpp"

namespace flotilla::actors::weights {

using runtime::Collect;
using runtime::Dispatch;
using runtime::MethodSpec;

// A source rank's flat buffer (`flat`), kept with its version for the destinations to fetch.
inline constexpr MethodSpec kKeepShard{"reshard.keep", Dispatch::OneToAll, Collect::Keep};
using KeepShard = runtime::NoArgs<kKeepShard, runtime::Version>;

// Fills each destination's buffer with NaN, so a transfer that misses an element shows.
inline constexpr MethodSpec kResetShard{"reshard.reset", Dispatch::OneToAll, Collect::AllRanks};
using ResetShard = runtime::NoArgs<kResetShard>;

// The arguments of a transfer: the version, and where each source rank keeps its buffer of it.
template <const MethodSpec& Spec>
struct Transfer {
  static constexpr MethodSpec spec = Spec;
  using Wire = proto::Reshard;
  using Result = runtime::Stats;
  int64_t version = 0;
  std::vector<std::string> holders;
  std::vector<int64_t> objects;
  int64_t bucket_bytes = int64_t{32} << 20;
  int64_t window = 4;
  std::string mode = "plan";
  auto fields() { return std::tie(version, holders, objects, bucket_bytes, window, mode); }
};

// Destinations: fill the buffer (mode "plan": the reshard plan; "baseline": each parameter whole
// from holders[0], one after another) and check it against the model's bytes. Statistics:
// reshard/seconds, reshard/sent_bytes, reshard/local_bytes, reshard/buckets, reshard/identical.
inline constexpr MethodSpec kPullShard{"reshard.pull", Dispatch::OneToAll, Collect::AllRanks};
using PullShard = Transfer<kPullShard>;

// Sources, the baseline's first half: every rank gathers every parameter from the others, one
// parameter after another (ZeRO-3's gathered parameters), and keeps the whole model.
inline constexpr MethodSpec kGatherShards{"reshard.gather", Dispatch::OneToAll, Collect::Keep};
using GatherShards = Transfer<kGatherShards>;

}  // namespace flotilla::actors::weights
