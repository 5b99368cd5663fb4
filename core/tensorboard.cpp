#include "core/tensorboard.hpp"

#include <unistd.h>

#include <boost/crc.hpp>
#include <chrono>
#include <cstring>
#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/process.hpp"
#include "tensorboard.pb.h"

namespace flotilla::core {

uint32_t crc32c(const void* data, size_t size) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data, size);
  return crc.checksum();
}

uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

namespace {

double wall_time_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class TensorboardSink final : public MetricSink {
 public:
  explicit TensorboardSink(const std::filesystem::path& dir) {
    const std::string host = hostname();
    const double now = wall_time_now();
    path_ = dir / ("events.out.tfevents." + std::to_string(static_cast<int64_t>(now)) + "." + host);
    out_.open(path_, std::ios::binary | std::ios::trunc);
    if (!out_) throw IoError(path_.string() + ": cannot create the event file");
    tensorboard::Event version;
    version.set_wall_time(now);
    version.set_file_version("brain.Event:2");
    append(version);
  }
  void write(int64_t step, double, const Scalars& values) override {
    tensorboard::Event event;
    event.set_wall_time(wall_time_now());
    event.set_step(step);
    auto* summary = event.mutable_summary();
    for (const auto& [name, v] : values) {
      auto* value = summary->add_value();
      value->set_tag(name);
      value->set_simple_value(static_cast<float>(v));
    }
    append(event);
  }
  void flush() override { out_.flush(); }

 private:
  void append(const tensorboard::Event& event) {
    const std::string data = event.SerializeAsString();
    const uint64_t length = data.size();
    const uint32_t length_crc = masked_crc32c(&length, sizeof length);
    const uint32_t data_crc = masked_crc32c(data.data(), data.size());
    out_.write(reinterpret_cast<const char*>(&length), sizeof length);
    out_.write(reinterpret_cast<const char*>(&length_crc), sizeof length_crc);
    out_.write(data.data(), static_cast<std::streamsize>(data.size()));
    out_.write(reinterpret_cast<const char*>(&data_crc), sizeof data_crc);
  }
  std::filesystem::path path_;
  std::ofstream out_;
};

}  // namespace

std::unique_ptr<MetricSink> tensorboard_sink(const std::filesystem::path& dir) {
  return std::make_unique<TensorboardSink>(dir);
}

std::vector<EventScalar> read_tensorboard_scalars(const std::filesystem::path& file) {
  const std::string bytes = read_file(file);
  std::vector<EventScalar> out;
  size_t pos = 0;
  int record = 0;
  auto fail = [&](const std::string& what) {
    return FormatError(file.string() + ": record " + std::to_string(record) + ": " + what);
  };
  while (pos < bytes.size()) {
    if (bytes.size() - pos < 12) throw fail("truncated record header");
    uint64_t length;
    uint32_t length_crc, data_crc;
    std::memcpy(&length, bytes.data() + pos, 8);
    std::memcpy(&length_crc, bytes.data() + pos + 8, 4);
    if (length_crc != masked_crc32c(&length, 8)) throw fail("length checksum mismatch");
    if (length > bytes.size() - pos - 12 || bytes.size() - pos - 12 - length < 4) throw fail("truncated record");
    const char* data = bytes.data() + pos + 12;
    std::memcpy(&data_crc, data + length, 4);
    if (data_crc != masked_crc32c(data, length)) throw fail("data checksum mismatch");
    tensorboard::Event event;
    if (!event.ParseFromArray(data, static_cast<int>(length))) throw fail("not an Event message");
    if (event.has_summary())
      for (const auto& v : event.summary().value())
        out.push_back({event.step(), event.wall_time(), v.tag(), v.simple_value()});
    pos += 12 + length + 4;
    ++record;
  }
  return out;
}

}  // namespace flotilla::core
