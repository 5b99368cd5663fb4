#include "controller/episodes.hpp"

#include <cmath>
#include <cstdio>

namespace flotilla::controller {

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / static_cast<double>(v.size());
}

void EpisodeWindow::add(const FinishedEpisodes& e) {
  auto push = [&](std::deque<double>& q, const std::vector<double>& v) {
    for (double x : v) {
      q.push_back(x);
      if (static_cast<int>(q.size()) > size_) q.pop_front();
    }
  };
  push(returns_, e.returns);
  push(wins_, e.wins);
}

double EpisodeWindow::mean_return() const { return mean_of(returns()); }
double EpisodeWindow::win_rate() const { return mean_of(wins()); }

void EpisodeWindow::restore(const std::vector<double>& returns, const std::vector<double>& wins) {
  returns_.assign(returns.begin(), returns.end());
  wins_.assign(wins.begin(), wins.end());
}

StopRule StopRule::read(const core::ConfigView& root, bool has_outcome, const std::string& env_id) {
  StopRule r;
  core::ConfigView stop = root.section("stop");
  if (stop.has("mean_return")) r.mean_return = stop.get<double>("mean_return", 0.0);
  if (stop.has("win_rate")) {
    r.win_rate = stop.get<double>("win_rate", 1.0, core::in_range(0.0, 1.0));
    if (!has_outcome) stop.fail("win_rate", env_id + " has no win or loss; stop on mean_return instead");
  }
  r.window = stop.get<int>("window", r.window, core::at_least(1));
  return r;
}

std::string StopRule::met(const EpisodeWindow& w, int64_t step) const {
  if (!w.full()) return "";
  char line[160];
  if (win_rate && w.has_wins() && w.win_rate() >= *win_rate) {
    std::snprintf(line, sizeof line, "stop condition met: win rate %.2f over the last %d episodes at step %lld",
                  w.win_rate(), window, static_cast<long long>(step));
    return line;
  }
  if (mean_return && w.mean_return() >= *mean_return) {
    std::snprintf(line, sizeof line, "stop condition met: mean return %.1f over the last %d episodes at step %lld",
                  w.mean_return(), window, static_cast<long long>(step));
    return line;
  }
  return "";
}

}  // namespace flotilla::controller
