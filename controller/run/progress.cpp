#include "controller/run/progress.hpp"

#include <cmath>
#include <cstdio>

namespace flotilla::controller {

Progress::Progress(Mode mode, int64_t total_steps, std::vector<std::string> shown, double line_interval_s)
    : mode_(mode),
      total_(total_steps),
      shown_(std::move(shown)),
      line_interval_s_(line_interval_s),
      start_(std::chrono::steady_clock::now()) {}

double Progress::now_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::human(double v) {
  char buf[32];
  const double a = std::fabs(v);
  if (std::isnan(v)) return "nan";
  if (a >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (a >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (a >= 1e4) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else if (a >= 100 || v == std::floor(v)) std::snprintf(buf, sizeof buf, "%.0f", v);
  else if (a >= 0.01) std::snprintf(buf, sizeof buf, "%.3g", v);
  else std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

std::string Progress::duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  long t = std::lround(s);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

std::string Progress::render_locked(double now) const {
  const double rate = now > 0 ? step_ / now : 0;
  std::string s;
  if (total_ > 0) {
    const double frac = std::min(1.0, static_cast<double>(step_) / total_);
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3.0f%%", frac * 100);
    s += pct;
    if (mode_ == Mode::Bar) {
      constexpr int kWidth = 24;
      const int filled = static_cast<int>(frac * kWidth);
      s += " |" + std::string(filled, '#') + std::string(kWidth - filled, '.') + "|";
    }
    s += " " + human(step_) + "/" + human(total_) + " steps";
    const double eta = rate > 0 ? (total_ - step_) / rate : NAN;
    s += "  " + human(rate) + "/s  " + duration(now) + " < " + duration(eta);
  } else {
    s += human(step_) + " steps  " + human(rate) + "/s  " + duration(now);
  }
  for (const auto& name : shown_)
    for (const auto& [n, v] : latest_)
      if (n == name) s += "  " + name.substr(name.find('/') + 1) + " " + human(v);
  return s;
}

void Progress::draw_locked(bool force) {
  if (mode_ == Mode::Quiet) return;
  const double now = now_s();
  if (mode_ == Mode::Bar) {
    if (!force && now - last_draw_s_ < 0.1) return;
    std::fprintf(stderr, "\r\033[K%s", render_locked(now).c_str());
    bar_visible_ = true;
  } else {
    if (!force && now - last_draw_s_ < line_interval_s_) return;
    std::fprintf(stderr, "%s\n", render_locked(now).c_str());
  }
  std::fflush(stderr);
  last_draw_s_ = now;
}

void Progress::update(int64_t step) {
  std::lock_guard lock(mutex_);
  step_ = step;
  draw_locked(false);
}

void Progress::write(int64_t step, double, const core::Scalars& values) {
  std::lock_guard lock(mutex_);
  step_ = std::max(step_, step);
  for (const auto& [name, v] : values) {
    bool found = false;
    for (auto& [n, old] : latest_)
      if (n == name) old = v, found = true;
    if (!found) latest_.emplace_back(name, v);
  }
  draw_locked(false);
}

void Progress::print_line(const std::string& line) {
  std::lock_guard lock(mutex_);
  if (mode_ == Mode::Bar && bar_visible_) std::fprintf(stderr, "\r\033[K");
  std::fputs(line.c_str(), stderr);
  if (line.empty() || line.back() != '\n') std::fputc('\n', stderr);
  if (mode_ == Mode::Bar && bar_visible_) std::fprintf(stderr, "%s", render_locked(now_s()).c_str());
  std::fflush(stderr);
}

void Progress::finish() {
  std::lock_guard lock(mutex_);
  if (mode_ == Mode::Quiet) return;
  draw_locked(true);
  if (mode_ == Mode::Bar) std::fputc('\n', stderr);
  bar_visible_ = false;
  std::fflush(stderr);
}

void ProgressLogSink::sink_it_(const spdlog::details::log_msg& msg) {
  spdlog::memory_buf_t formatted;
  formatter_->format(msg, formatted);
  progress_.print_line(fmt::to_string(formatted));
}

}  // namespace flotilla::controller
