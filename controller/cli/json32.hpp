#pragma once
// JSON whose numbers are float32, for commands that print a model's or an env's float32 values:
// each prints as the shortest text that reads back to the same float.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace flotilla::controller {

using Json32 = nlohmann::basic_json<nlohmann::ordered_map, std::vector, std::string, bool, std::int64_t, std::uint64_t, float>;

inline Json32 f32_list(const float* v, int64_t n) {
  Json32 out = Json32::array();
  for (int64_t i = 0; i < n; ++i) out.push_back(v[i]);
  return out;
}

}  // namespace flotilla::controller
