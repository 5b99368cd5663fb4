#include "core/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include "core/error.hpp"

namespace flotilla::core {

void init_logging(const std::string& level, bool stderr_sink) {
  auto logger = std::make_shared<spdlog::logger>("flotilla");
  if (stderr_sink) logger->sinks().push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  logger->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off")
    throw ConfigError("log level '" + level + "' is not one of trace, debug, info, warn, error, critical, off");
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
}

void add_log_sink(spdlog::sink_ptr sink) {
  auto logger = spdlog::default_logger();
  sink->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  logger->sinks().push_back(std::move(sink));
}

void log_to_file(const std::filesystem::path& path) {
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path.string());
    sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
    spdlog::default_logger()->sinks().push_back(std::move(sink));
    // The file is read while the run goes on (flotilla status, a Slurm job followed from the login
    // node): each line goes out as it is logged.
    spdlog::default_logger()->flush_on(spdlog::level::info);
  } catch (const spdlog::spdlog_ex& e) {
    throw IoError(path.string() + ": cannot open the log file: " + e.what());
  }
}

}  // namespace flotilla::core
