#pragma once
// TensorBoard event files (events.out.tfevents.*): TFRecord framing (length, masked CRC32C of
// the length, an Event protobuf, masked CRC32C of the data) with scalar summaries.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/metrics.hpp"

namespace flotilla::core {

// A sink that writes `events.out.tfevents.<seconds>.<host>` inside `dir`.
std::unique_ptr<MetricSink> tensorboard_sink(const std::filesystem::path& dir);

struct EventScalar {
  int64_t step;
  double wall_time;
  std::string tag;
  float value;
};
// Every scalar in an event file, checking each record's framing and checksums.
std::vector<EventScalar> read_tensorboard_scalars(const std::filesystem::path& file);

// CRC-32C (Castagnoli) and TensorBoard's masking of it.
uint32_t crc32c(const void* data, size_t size);
uint32_t masked_crc32c(const void* data, size_t size);

}  // namespace flotilla::core
