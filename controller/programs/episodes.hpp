#pragma once
// Episode bookkeeping shared by the RL programs: the window of recent finished episodes and the
// `stop:` rule (mean return or win rate over that window).
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "controller/run/program.hpp"
#include "core/config.hpp"
#include "core/metrics.hpp"
#include "envs/vec_env.hpp"

namespace flotilla::controller {

using envs::FinishedEpisodes;

double mean_of(const std::vector<double>& v);

// charts/episodic_return, charts/episodic_length, charts/win_rate (envs with one), charts/episodes.
core::Scalars episode_metrics(const FinishedEpisodes& e);

class EpisodeWindow {
 public:
  explicit EpisodeWindow(int size) : size_(size) {}
  void add(const FinishedEpisodes& e);
  bool full() const { return static_cast<int>(returns_.size()) >= size_; }
  double mean_return() const;
  double win_rate() const;
  bool has_wins() const { return !wins_.empty(); }
  std::vector<double> returns() const { return {returns_.begin(), returns_.end()}; }
  std::vector<double> wins() const { return {wins_.begin(), wins_.end()}; }
  void restore(const std::vector<double>& returns, const std::vector<double>& wins);

 private:
  int size_;
  std::deque<double> returns_, wins_;
};

// Evaluation: exactly `episodes` episodes from N envs, each env running a fixed share, so short
// episodes are not over-counted.
class EvalTally {
 public:
  EvalTally(int episodes, int64_t envs);
  // Per env [N]: whether its episode ended, and that episode's return, length and outcome
  // (`won` undefined for envs without one).
  void add(const at::Tensor& done, const at::Tensor& ret, const at::Tensor& length, const at::Tensor& won);
  bool complete() const { return static_cast<int>(returns_.size()) >= episodes_; }
  int episodes() const { return episodes_; }
  double mean_return() const;
  double std_return() const;
  double mean_length() const;
  double win_rate() const;  // NaN without outcomes

 private:
  int episodes_;
  std::vector<int64_t> quota_;
  std::vector<double> returns_, lengths_, wins_;
};

struct StopRule {
  std::optional<double> mean_return, win_rate;
  int window = 20;
  // Reads `stop:`; `has_outcome` says whether the env's episodes are won or lost.
  static StopRule read(const core::ConfigView& root, bool has_outcome, const std::string& env_id);
  // A line for the log when the rule is met, or "" when it is not.
  std::string met(const EpisodeWindow& w, int64_t step) const;
  // When the rule is met: logs it, marks `result` stopped with solved_at_step and
  // solved_at_time_s, and returns true.
  bool stops(const EpisodeWindow& w, int64_t step, double time_s, RunResult& result) const;
};

// The manifest fields every RL checkpoint shares: iteration, step, training seconds, the episode
// window, the env and the run's config.
nlohmann::ordered_json rl_manifest(int64_t iteration, int64_t global_step, double train_time_s, const EpisodeWindow& w,
                                   const std::string& env_id, const std::filesystem::path& run_dir);

// recent_mean_return and recent_win_rate of the window, for summary.json.
void add_window_summary(const EpisodeWindow& w, RunResult& result);

}  // namespace flotilla::controller
