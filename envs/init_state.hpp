#pragma once
// Reading an env's --init-state JSON (flotilla env trace, set_state_json) in the env's own terms:
// every error names the field it is about.
#include <nlohmann/json.hpp>

#include <string>

#include "core/error.hpp"

namespace flotilla::envs::init_state {

inline nlohmann::json parse(const std::string& text) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(std::string("--init-state is not valid JSON: ") + e.what());
  }
}

inline double number(const nlohmann::json& j, const std::string& where) {
  if (!j.is_number()) throw ConfigError("--init-state: " + where + " must be a number, got " + j.dump());
  return j.get<double>();
}

inline int integer(const nlohmann::json& j, const std::string& where) {
  if (!j.is_number_integer()) throw ConfigError("--init-state: " + where + " must be an integer, got " + j.dump());
  return j.get<int>();
}

}  // namespace flotilla::envs::init_state
