#pragma once
// The message of what `f` throws, or "" when it throws nothing: for tests of error texts.
#include <exception>
#include <functional>
#include <string>

namespace flotilla::test {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace flotilla::test
