#pragma once
// `flotilla plot`: PNG line charts of a run's metrics, drawn by gnuplot, so a person can look
// at a run rather than read it.
#include <filesystem>
#include <string>
#include <vector>

namespace flotilla::controller {

// Plots each named metric (all of them when `metrics` is empty) of RUN_DIR/metrics.jsonl against
// the step, one PNG per metric in `out_dir`; returns the files written.
std::vector<std::filesystem::path> plot_run(const std::filesystem::path& run_dir, const std::vector<std::string>& metrics,
                                            const std::filesystem::path& out_dir);

}  // namespace flotilla::controller
