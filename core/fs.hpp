#pragma once
// File helpers shared by everything that writes results a user must be able to trust.
#include <filesystem>
#include <functional>
#include <ostream>
#include <string>

namespace flotilla::core {

// Writes through `write` into a temporary file beside `path`, flushes it to disk and renames it
// over `path`, so a reader sees the old file or the new one, never half of one.
void write_file_atomically(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write);

// The whole file as a string; throws IoError naming the file.
std::string read_file(const std::filesystem::path& path);

// The SHA-256 of a file's bytes, as 64 hex digits (OpenSSL); throws IoError naming the file.
std::string sha256_of_file(const std::filesystem::path& path);

}  // namespace flotilla::core
