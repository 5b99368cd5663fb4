#include "core/metrics.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace flotilla::core {

Metrics::Metrics() : start_(std::chrono::steady_clock::now()) {}

void Metrics::add_sink(std::unique_ptr<MetricSink> sink) {
  std::lock_guard lock(mutex_);
  sinks_.push_back(std::move(sink));
}

void Metrics::log(int64_t step, const Scalars& values) {
  std::lock_guard lock(mutex_);
  const double t = elapsed_s();
  for (auto& s : sinks_) s->write(step, t, values);
}

void Metrics::flush() {
  std::lock_guard lock(mutex_);
  for (auto& s : sinks_) s->flush();
}

double Metrics::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

namespace {

std::ofstream open_for_append(const std::filesystem::path& path) {
  std::ofstream out(path, std::ios::app);
  if (!out) throw IoError(path.string() + ": cannot open for writing");
  return out;
}

class JsonlSink final : public MetricSink {
 public:
  explicit JsonlSink(const std::filesystem::path& path) : out_(open_for_append(path)) {}
  void write(int64_t step, double time_s, const Scalars& values) override {
    nlohmann::ordered_json row;
    row["step"] = step;
    row["time_s"] = time_s;
    for (const auto& [name, v] : values) row[name] = v;  // NaN and inf become null
    out_ << row.dump() << '\n';
  }
  void flush() override { out_.flush(); }

 private:
  std::ofstream out_;
};

std::string csv_number(double v) {
  if (std::isnan(v)) return "nan";
  std::ostringstream s;
  s.precision(9);
  s << v;
  return s.str();
}

class CsvSink final : public MetricSink {
 public:
  // An existing file (a resumed run) keeps its rows and columns.
  explicit CsvSink(std::filesystem::path path) : path_(std::move(path)) {
    if (std::filesystem::exists(path_)) {
      std::istringstream in(read_file(path_));
      std::string header, cell;
      std::getline(in, header);
      std::istringstream cells(header);
      for (int i = 0; std::getline(cells, cell, ','); ++i)
        if (i >= 2) columns_.push_back(cell);
    } else {
      std::ofstream(path_, std::ios::trunc);
    }
    out_ = open_for_append(path_);
  }
  void write(int64_t step, double time_s, const Scalars& values) override {
    std::vector<std::string> added;
    for (const auto& [name, v] : values)
      if (std::find(columns_.begin(), columns_.end(), name) == columns_.end()) added.push_back(name);
    if (!added.empty()) widen(added);
    std::vector<std::string> cells(columns_.size());
    for (const auto& [name, v] : values)
      cells[std::find(columns_.begin(), columns_.end(), name) - columns_.begin()] = csv_number(v);
    out_ << step << ',' << csv_number(time_s);
    for (const auto& c : cells) out_ << ',' << c;
    out_ << '\n';
  }
  void flush() override { out_.flush(); }

 private:
  // Rewrites the file with more columns; rare (new metric names appear in the first rows).
  void widen(const std::vector<std::string>& added) {
    out_.close();
    std::istringstream old(read_file(path_));
    columns_.insert(columns_.end(), added.begin(), added.end());
    std::string line, padding(added.size(), ',');
    std::string text = "step,time_s";
    for (const auto& c : columns_) text += "," + c;
    text += '\n';
    bool header = true;
    while (std::getline(old, line)) {
      if (header) {
        header = false;
        continue;
      }
      text += line + padding + '\n';
    }
    write_file_atomically(path_, [&](std::ostream& o) { o << text; });
    out_ = open_for_append(path_);
  }
  std::filesystem::path path_;
  std::ofstream out_;
  std::vector<std::string> columns_;
};

}  // namespace

std::unique_ptr<MetricSink> jsonl_sink(const std::filesystem::path& path) { return std::make_unique<JsonlSink>(path); }
std::unique_ptr<MetricSink> csv_sink(const std::filesystem::path& path) { return std::make_unique<CsvSink>(path); }

std::vector<MetricRow> read_metrics_jsonl(const std::filesystem::path& path) {
  std::istringstream in(read_file(path));
  std::vector<MetricRow> rows;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(line);
    } catch (const nlohmann::json::exception&) {
      // A run killed mid-write leaves a partial last line; anything else is corruption.
      if (in.peek() == EOF) break;
      throw FormatError(path.string() + ":" + std::to_string(number) + ": not a JSON object");
    }
    MetricRow row;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() == "step") row.step = it.value().get<int64_t>();
      else if (it.key() == "time_s") row.time_s = it.value().get<double>();
      else if (it.value().is_number()) row.values.emplace_back(it.key(), it.value().get<double>());
      else if (it.value().is_null()) row.values.emplace_back(it.key(), NAN);
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace flotilla::core
