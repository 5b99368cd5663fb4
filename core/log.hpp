#pragma once
// Logging through spdlog: one default logger whose sinks are the terminal and the run's log file.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <string>

namespace flotilla::core {

// Sets the default logger's level ("trace" ... "off") and pattern; adds a stderr sink unless the
// caller provides its own terminal sink later. Safe to call more than once.
void init_logging(const std::string& level = "info", bool stderr_sink = true);
void add_log_sink(spdlog::sink_ptr sink);
// Appends every log line to `path` as well.
void log_to_file(const std::filesystem::path& path);

}  // namespace flotilla::core
