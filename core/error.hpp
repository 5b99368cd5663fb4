#pragma once
// Flotilla's exception types. Each is thrown where the user can act on it and says what went
// wrong, in which file, key or worker; the CLI maps them to exit codes (2 for usage and config
// errors, 1 for failures at run time).
#include <stdexcept>
#include <string>

namespace flotilla {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad command-line usage or an invalid experiment config: nothing has run.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A file or message that does not follow its format (safetensors, event files, schemas).
class FormatError : public Error {
 public:
  using Error::Error;
};

// Reading or writing a file failed at the operating-system level.
class IoError : public Error {
 public:
  using Error::Error;
};

// A wait ran out of time; the message names what was waited for.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

}  // namespace flotilla
