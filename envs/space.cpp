#include "envs/space.hpp"

#include <cmath>
#include <sstream>

#include "core/error.hpp"

namespace flotilla::envs {

Space Space::box(std::vector<double> low, std::vector<double> high) {
  if (low.size() != high.size() || low.empty()) throw Error("Space::box: low and high must have the same, non-zero length");
  Space s;
  s.kind = Kind::Box;
  s.shape = {static_cast<int64_t>(low.size())};
  s.low = std::move(low);
  s.high = std::move(high);
  s.dtype = "float32";
  return s;
}

Space Space::discrete(int64_t n) {
  if (n < 1) throw Error("Space::discrete: n must be >= 1");
  Space s;
  s.kind = Kind::Discrete;
  s.n = n;
  s.dtype = "int64";
  return s;
}

Space Space::multi_discrete(std::vector<int64_t> nvec) {
  if (nvec.empty()) throw Error("Space::multi_discrete: nvec must not be empty");
  for (int64_t v : nvec)
    if (v < 1) throw Error("Space::multi_discrete: every entry of nvec must be >= 1");
  Space s;
  s.kind = Kind::MultiDiscrete;
  s.shape = {static_cast<int64_t>(nvec.size())};
  s.nvec = std::move(nvec);
  s.dtype = "int64";
  return s;
}

int64_t Space::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {
std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream s;
  s.precision(7);
  s << v;
  std::string out = s.str();
  if (out.find_first_of(".e") == std::string::npos) out += ".0";
  return out;
}
std::string bounds(const std::vector<double>& v) {
  bool same = true;
  for (double x : v) same &= x == v[0];
  if (same) return number(v[0]);
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += ' ';
    out += number(v[i]);
  }
  return out + "]";
}
}  // namespace

std::string Space::str() const {
  switch (kind) {
    case Kind::Discrete: return "Discrete(" + std::to_string(n) + ")";
    case Kind::MultiDiscrete: {
      std::string out = "MultiDiscrete([";
      for (size_t i = 0; i < nvec.size(); ++i) {
        if (i) out += ' ';
        out += std::to_string(nvec[i]);
      }
      return out + "])";
    }
    case Kind::Box: {
      std::string s = "(";
      for (size_t i = 0; i < shape.size(); ++i) s += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
      s += ")";
      return "Box(" + bounds(low) + ", " + bounds(high) + ", " + s + ", " + dtype + ")";
    }
  }
  return "?";
}

}  // namespace flotilla::envs
