#pragma once
// Episode bookkeeping shared by the RL programs: the window of recent finished episodes and the
// `stop:` rule (mean return or win rate over that window).
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "envs/vec_env.hpp"

namespace flotilla::controller {

using envs::FinishedEpisodes;

double mean_of(const std::vector<double>& v);

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

struct StopRule {
  std::optional<double> mean_return, win_rate;
  int window = 20;
  // Reads `stop:`; `has_outcome` says whether the env's episodes are won or lost.
  static StopRule read(const core::ConfigView& root, bool has_outcome, const std::string& env_id);
  // A line for the log when the rule is met, or "" when it is not.
  std::string met(const EpisodeWindow& w, int64_t step) const;
};

}  // namespace flotilla::controller
