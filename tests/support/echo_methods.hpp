#pragma once
// The methods of the `echo` test role (tests/support/test_programs.cpp), which the runtime tests
// call: dispatch modes, data kept on workers, lanes, failures.
#include "runtime/method.hpp"

namespace flotilla::test {

using runtime::Collect;
using runtime::Dispatch;
using runtime::MethodSpec;

// Each rank's rank.
struct EchoRank {
  static constexpr MethodSpec spec{"echo.rank", Dispatch::OneToAll, Collect::AllRanks};
  using Wire = proto::Empty;
  using Result = runtime::Version;
  auto fields() { return std::tie(); }
};

// Input `x` times `factor`, with the rank that did it (`rank`); the result counts the rows.
struct EchoScale {
  static constexpr MethodSpec spec{"echo.scale", Dispatch::DpChunks, Collect::AllRanks};
  using Wire = proto::Scale;
  using Result = runtime::Version;
  double factor = 1;
  std::string note;
  auto fields() { return std::tie(factor, note); }
};

// The same, rank 0 only.
struct EchoScaleOnZero {
  static constexpr MethodSpec spec{"echo.scale", Dispatch::RankZero, Collect::RankZero};
  using Wire = proto::Scale;
  using Result = runtime::Version;
  double factor = 1;
  std::string note;
  auto fields() { return std::tie(factor, note); }
};

// The right name with the wrong argument type: the worker refuses it.
struct EchoScaleWrongType {
  static constexpr MethodSpec spec{"echo.scale", Dispatch::OneToAll, Collect::AllRanks};
  using Wire = proto::Count;
  using Result = runtime::Version;
  int64_t n = 0;
  auto fields() { return std::tie(n); }
};

// Throws with `note`.
struct EchoFail {
  static constexpr MethodSpec spec{"echo.fail", Dispatch::OneToAll, Collect::AllRanks};
  using Wire = proto::Scale;
  using Result = runtime::Void;
  double factor = 1;
  std::string note;
  auto fields() { return std::tie(factor, note); }
};

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
struct EchoChecksum {
  static constexpr MethodSpec spec{"echo.checksum", Dispatch::RankZero, Collect::RankZero};
  using Wire = proto::Empty;
  using Result = runtime::Stats;
  auto fields() { return std::tie(); }
};

// Waits (on the main lane) until echo.release is called or 30 s pass; the result says which.
struct EchoBlock {
  static constexpr MethodSpec spec{"echo.block", Dispatch::OneToAll, Collect::AllRanks};
  using Wire = proto::Empty;
  using Result = runtime::Version;
  auto fields() { return std::tie(); }
};

// Ends an echo.block, from another lane.
struct EchoRelease {
  static constexpr MethodSpec spec{"echo.release", Dispatch::OneToAll, Collect::AllRanks, "side"};
  using Wire = proto::Empty;
  using Result = runtime::Void;
  auto fields() { return std::tie(); }
};

}  // namespace flotilla::test
