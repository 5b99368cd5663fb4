#include "controller/cli/plot.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/metrics.hpp"
#include "core/process.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;

namespace {

std::string file_stem_for(const std::string& metric) {
  std::string s = metric;
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
  return s;
}

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::vector<fs::path> plot_run(const fs::path& run_dir, const std::vector<std::string>& metrics, const fs::path& out_dir) {
  const fs::path jsonl = run_dir / "metrics.jsonl";
  if (!fs::exists(jsonl))
    throw ConfigError(run_dir.string() + ": no metrics.jsonl here; is this a run directory (with the jsonl sink on)?");
  std::vector<core::MetricRow> rows = core::read_metrics_jsonl(jsonl);

  std::vector<std::string> available;
  std::map<std::string, std::vector<std::pair<int64_t, double>>> series;
  for (const auto& row : rows)
    for (const auto& [name, v] : row.values) {
      if (!series.count(name)) available.push_back(name);
      if (std::isfinite(v)) series[name].emplace_back(row.step, v);
    }
  std::vector<std::string> wanted = metrics.empty() ? available : metrics;
  for (const auto& m : wanted) {
    if (!series.count(m)) {
      std::string hint = core::closest_match(m, available);
      throw ConfigError("metric '" + m + "' is not in " + jsonl.string() +
                        (hint.empty() ? "" : "; did you mean '" + hint + "'?"));
    }
  }
  if (wanted.empty()) throw ConfigError(jsonl.string() + " holds no metrics yet");

  fs::create_directories(out_dir);
  const fs::path data_dir = out_dir / ".data";
  fs::create_directories(data_dir);
  std::string script;
  std::vector<fs::path> written;
  for (const auto& m : wanted) {
    const fs::path data = data_dir / (file_stem_for(m) + ".dat");
    std::ofstream d(data);
    for (const auto& [step, v] : series[m]) d << step << ' ' << v << '\n';
    const fs::path png = out_dir / (file_stem_for(m) + ".png");
    script += "set output " + quoted(png.string()) + "\n";
    script += "set title " + quoted(m + " — " + run_dir.filename().string()) + " noenhanced\n";
    script += "plot " + quoted(data.string()) + " using 1:2 with lines lw 2 notitle\n";
    written.push_back(png);
  }
  const std::string header =
      "set terminal pngcairo size 960,540 font 'sans,11'\n"
      "set grid\nset xlabel 'step'\nset key off\nset format x '%.3s%c'\n";
  struct RemoveData {
    fs::path dir;
    ~RemoveData() { fs::remove_all(dir); }
  } remove{data_dir};
  if (core::find_program("gnuplot").empty()) throw Error("gnuplot is not installed (scripts/setup installs gnuplot-nox)");
  core::run_with_input({"gnuplot", {}, "gnuplot"}, header + script, std::chrono::minutes(5));
  return written;
}

}  // namespace flotilla::controller
