#pragma once
// The methods of the `echo` test role (tests/support/test_programs.cpp), which the runtime tests
// call: dispatch modes, data kept on workers, lanes, failures.
#include "runtime/method.hpp"

namespace flotilla::test {

using runtime::Collect;
using runtime::Dispatch;
using runtime::MethodSpec;

// Each rank's rank.
inline constexpr MethodSpec kEchoRank{"echo.rank", Dispatch::OneToAll, Collect::AllRanks};
using EchoRank = runtime::NoArgs<kEchoRank, runtime::Version>;

// Methods taking a Scale struct.
template <const MethodSpec& Spec, class R>
struct WithScale {
  static constexpr MethodSpec spec = Spec;
  using Wire = proto::Scale;
  using Result = R;
  double factor = 1;
  std::string note;
  auto fields() { return std::tie(factor, note); }
};

// Input `x` times `factor`, with the rank that did it (`rank`); the result counts the rows. The
// same method called on rank 0 only.
inline constexpr MethodSpec kEchoScale{"echo.scale", Dispatch::DpChunks, Collect::AllRanks};
inline constexpr MethodSpec kEchoScaleOnZero{"echo.scale", Dispatch::RankZero, Collect::RankZero};
using EchoScale = WithScale<kEchoScale, runtime::Version>;
using EchoScaleOnZero = WithScale<kEchoScaleOnZero, runtime::Version>;

// The right name with the wrong argument type: the worker refuses it.
struct EchoScaleWrongType {
  static constexpr MethodSpec spec{"echo.scale", Dispatch::OneToAll, Collect::AllRanks};
  using Wire = proto::Count;
  using Result = runtime::Version;
  int64_t n = 0;
  auto fields() { return std::tie(n); }
};

// Throws with `note`.
inline constexpr MethodSpec kEchoFail{"echo.fail", Dispatch::OneToAll, Collect::AllRanks};
using EchoFail = WithScale<kEchoFail, runtime::Void>;

// `n` rows of random float and int64 fields (seeded by the rank), kept on the worker; the result
// is a checksum of their bytes.
struct EchoMake {
  static constexpr MethodSpec spec{"echo.make", Dispatch::OneToAll, Collect::Keep};
  using Wire = proto::Count;
  using Result = runtime::Stats;
  int64_t n = 0;
  auto fields() { return std::tie(n); }
};

// A checksum of the input's bytes, field by field, and its row count.
inline constexpr MethodSpec kEchoChecksum{"echo.checksum", Dispatch::RankZero, Collect::RankZero};
using EchoChecksum = runtime::NoArgs<kEchoChecksum, runtime::Stats>;

// Waits (on the main lane) until echo.release is called or 30 s pass; the result says which.
inline constexpr MethodSpec kEchoBlock{"echo.block", Dispatch::OneToAll, Collect::AllRanks};
using EchoBlock = runtime::NoArgs<kEchoBlock, runtime::Version>;

// Ends an echo.block, from another lane.
inline constexpr MethodSpec kEchoRelease{"echo.release", Dispatch::OneToAll, Collect::AllRanks, "side"};
using EchoRelease = runtime::NoArgs<kEchoRelease>;

}  // namespace flotilla::test
