#pragma once
// Worker methods, declared once and shared by the worker that serves them and the controller
// that calls them (verl's `@register(dispatch_mode=...)`, in C++). A method is a struct: its
// members are the arguments, `Result` is the result struct, `Wire` the Cap'n Proto struct the
// arguments travel as (runtime/codec.hpp), and `spec` says how a call is dispatched over a
// group's ranks and how the replies are collected:
//
//   struct UpdateActor {
//     static constexpr MethodSpec spec{"actor.update", Dispatch::DpChunks, Collect::RankZero};
//     using Wire = proto::Seed;
//     using Result = Stats;
//     uint64_t seed = 0;
//     auto fields() { return std::tie(seed); }
//   };
//
// The controller writes `actor.call(UpdateActor{.seed = step}, batch)` and gets a typed future;
// the worker registers `methods.on<UpdateActor>([](const UpdateActor& a, const core::Batch& b)
// { ... return Stats{...}; })`.
#include <concepts>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "core/batch.hpp"
#include "core/metrics.hpp"
#include "methods.capnp.h"

namespace flotilla::runtime {

// How a call's input rows go to a group's ranks.
enum class Dispatch {
  OneToAll,  // every rank gets all of them
  RankZero,  // rank 0 only
  DpChunks,  // consecutive chunks, one per rank, as equal as whole groups allow (uneven is fine)
  OneRank,   // the rank the caller names (WorkerGroup::call_on)
};

// What the caller gets back.
enum class Collect {
  RankZero,  // the first rank's result and output rows (every rank called is still waited for)
  AllRanks,  // every rank's result; their output rows concatenated in rank order
  Keep,      // every rank's result; the output rows stay on the workers (a DataRef)
};

struct MethodSpec {
  const char* name;
  Dispatch dispatch = Dispatch::OneToAll;
  Collect collect = Collect::AllRanks;
  // Methods on one lane run one after another; lanes run concurrently. Methods on the main lane
  // wait while the worker is paused; the others (the lifecycle's "control", a rollout's
  // "weights") run whatever the state.
  const char* lane = "main";
};

// A struct that travels as its Cap'n Proto `Wire` struct.
template <class T>
concept WireStruct = requires(T t) {
  typename T::Wire;
  t.fields();
};

template <class M>
concept WorkerMethod = WireStruct<M> && WireStruct<typename M::Result> && requires {
  { M::spec } -> std::convertible_to<MethodSpec>;
};

// ---- results many methods share ----

struct Void {
  using Wire = proto::Empty;
  auto fields() { return std::tie(); }
};

struct Stats {
  core::Scalars values;
  using Wire = proto::Stats;
  auto fields() { return std::tie(values); }
};

struct Version {
  int64_t version = 0;
  using Wire = proto::Version;
  auto fields() { return std::tie(version); }
};

struct Status {
  std::string worker, state;
  core::Scalars counters;
  using Wire = proto::Status;
  auto fields() { return std::tie(worker, state, counters); }
  // A counter's value, or `fallback` when the worker does not report it.
  double counter(const std::string& name, double fallback = 0) const {
    for (const auto& [k, v] : counters)
      if (k == name) return v;
    return fallback;
  }
};

// What a handler returns when its method has output rows besides its result.
template <class R>
struct Output {
  R result;
  core::Batch rows;
};

// A method whose arguments name a directory to save to or load from (models, checkpoint shards).
template <const MethodSpec& Spec>
struct DirectoryMethod {
  static constexpr MethodSpec spec = Spec;
  using Wire = proto::Directory;
  using Result = Version;
  std::string dir;
  bool optimizer = true;  // with the optimizer's state
  int64_t version = 0;    // the version loaded weights become
  int64_t step = 0;       // the step (trainer version, fragment boundary) saved or loaded
  bool background = false;  // save: copy the state now and write it while the worker goes on
  auto fields() { return std::tie(dir, optimizer, version, step, background); }
};

// ---- the lifecycle every worker serves (runtime/worker.cpp) ----

// Reads the run's resolved config; the role builds what it needs from it.
struct Configure {
  static constexpr MethodSpec spec{"configure", Dispatch::OneToAll, Collect::AllRanks};
  using Wire = proto::RunConfig;
  using Result = Void;
  std::string yaml;
  auto fields() { return std::tie(yaml); }
};

// A method without arguments: its rows, if any, are its input.
template <const MethodSpec& Spec, class R = Void>
struct NoArgs {
  static constexpr MethodSpec spec = Spec;
  using Wire = proto::Empty;
  using Result = R;
  auto fields() { return std::tie(); }
};

// Start: the role's background loops (if it has any), and the worker runs. Pause: loops and
// main-lane methods park at their next safe point; it returns once they have. Resume. Poll: the
// worker's state and counters, answered at once whatever else runs. Stop: answered by the I/O
// thread (whatever the lanes are doing), then the process stops its loops and exits.
inline constexpr MethodSpec kStart{"start", Dispatch::OneToAll, Collect::AllRanks, "control"};
inline constexpr MethodSpec kPause{"pause", Dispatch::OneToAll, Collect::AllRanks, "control"};
inline constexpr MethodSpec kResume{"resume", Dispatch::OneToAll, Collect::AllRanks, "control"};
inline constexpr MethodSpec kPoll{"poll", Dispatch::OneToAll, Collect::AllRanks, "control"};
inline constexpr MethodSpec kStop{"stop", Dispatch::OneToAll, Collect::AllRanks, "control"};
using Start = NoArgs<kStart, Status>;
using Pause = NoArgs<kPause, Status>;
using Resume = NoArgs<kResume, Status>;
using Poll = NoArgs<kPoll, Status>;
using Stop = NoArgs<kStop>;

}  // namespace flotilla::runtime
