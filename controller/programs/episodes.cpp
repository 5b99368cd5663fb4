#include "controller/programs/episodes.hpp"

#include "core/fs.hpp"

#include <cmath>
#include <cstdio>

#include <spdlog/spdlog.h>

namespace flotilla::controller {

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / static_cast<double>(v.size());
}

core::Scalars episode_metrics(const FinishedEpisodes& e) {
  core::Scalars row;
  if (!e.returns.empty()) {
    row.push_back({"charts/episodic_return", mean_of(e.returns)});
    row.push_back({"charts/episodic_length", mean_of(e.lengths)});
  }
  if (!e.wins.empty()) row.push_back({"charts/win_rate", mean_of(e.wins)});
  row.push_back({"charts/episodes", static_cast<double>(e.returns.size())});
  return row;
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

EvalTally::EvalTally(int episodes, int64_t envs) : episodes_(episodes), quota_(envs, episodes / envs) {
  for (int64_t i = 0; i < episodes % envs; ++i) ++quota_[i];
}

void EvalTally::add(const at::Tensor& done, const at::Tensor& ret, const at::Tensor& length, const at::Tensor& won) {
  if (!done.any().item<bool>()) return;
  at::Tensor d = done.to(at::kBool).contiguous(), r = ret.to(at::kDouble).contiguous(), l = length.to(at::kDouble).contiguous();
  at::Tensor w = won.defined() ? won.to(at::kDouble).contiguous() : at::Tensor();
  for (int64_t i = 0; i < d.size(0); ++i) {
    if (!d.data_ptr<bool>()[i] || quota_[i] == 0) continue;
    --quota_[i];
    returns_.push_back(r.data_ptr<double>()[i]);
    lengths_.push_back(l.data_ptr<double>()[i]);
    if (w.defined()) wins_.push_back(w.data_ptr<double>()[i]);
  }
}

double EvalTally::mean_return() const { return mean_of(returns_); }
double EvalTally::mean_length() const { return mean_of(lengths_); }
double EvalTally::win_rate() const { return mean_of(wins_); }
double EvalTally::std_return() const {
  const double m = mean_return();
  double v = 0;
  for (double x : returns_) v += (x - m) * (x - m) / static_cast<double>(returns_.size());
  return std::sqrt(v);
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

bool StopRule::stops(const EpisodeWindow& w, int64_t step, double time_s, RunResult& result) const {
  const std::string line = met(w, step);
  if (line.empty()) return false;
  result.exit_reason = "stop_condition";
  result.summary.push_back({"solved_at_step", static_cast<double>(step)});
  result.summary.push_back({"solved_at_time_s", time_s});
  spdlog::info("{}", line);
  return true;
}

void add_window_summary(const EpisodeWindow& w, RunResult& result) {
  if (!w.returns().empty()) result.summary.push_back({"recent_mean_return", w.mean_return()});
  if (w.has_wins()) result.summary.push_back({"recent_win_rate", w.win_rate()});
}

nlohmann::ordered_json rl_manifest(int64_t iteration, int64_t global_step, double train_time_s, const EpisodeWindow& w,
                                   const std::string& env_id, const std::filesystem::path& run_dir) {
  nlohmann::ordered_json m;
  m["iteration"] = iteration;
  m["global_step"] = global_step;
  m["train_time_s"] = train_time_s;
  m["recent_returns"] = w.returns();
  m["recent_wins"] = w.wins();
  m["env"] = env_id;
  m["config"] = core::read_file(run_dir / "config.yaml");
  return m;
}

}  // namespace flotilla::controller
