#pragma once
// Observation and action spaces, as Gymnasium names them: Box, Discrete, MultiDiscrete.
#include <cstdint>
#include <string>
#include <vector>

namespace flotilla::envs {

struct Space {
  enum class Kind { Box, Discrete, MultiDiscrete };
  Kind kind = Kind::Box;
  std::vector<int64_t> shape;  // of one env's value
  std::vector<double> low, high;  // Box: per element
  int64_t n = 0;                  // Discrete: values 0 .. n-1
  std::vector<int64_t> nvec;      // MultiDiscrete: values 0 .. nvec[k]-1
  std::string dtype;              // "float32" or "int64"

  static Space box(std::vector<double> low, std::vector<double> high);
  static Space discrete(int64_t n);
  static Space multi_discrete(std::vector<int64_t> nvec);

  int64_t numel() const;
  bool is_discrete() const { return kind != Kind::Box; }
  // Gymnasium's notation: Discrete(2), MultiDiscrete([3 2]), Box(-1.0, 1.0, (1,), float32).
  std::string str() const;
};

}  // namespace flotilla::envs
