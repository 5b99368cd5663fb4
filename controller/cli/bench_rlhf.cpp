// `flotilla bench rlhf`: one RLHF config run once per variant (synchronous and asynchronous
// settings, say), compared by held-out accuracy against wall time.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "controller/cli/commands.hpp"
#include "controller/run/experiment.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/metrics.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;

namespace {

struct Variant {
  std::string label;
  std::vector<std::string> overrides;
};

// "label:key=value,key=value"; commas inside [] or {} belong to a value (a YAML list or map).
Variant parse_variant(const std::string& text) {
  const size_t colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || text.find('=') < colon)
    throw ConfigError("--variant '" + text + "': write it as LABEL:key=value,key=value (e.g. s1:placement=split,async.max_staleness=1)");
  Variant v{text.substr(0, colon), {}};
  std::string item;
  int depth = 0;
  for (char ch : text.substr(colon + 1)) {
    depth += (ch == '[' || ch == '{') - (ch == ']' || ch == '}');
    if (ch == ',' && depth == 0) {
      if (!item.empty()) v.overrides.push_back(item);
      item.clear();
    } else {
      item += ch;
    }
  }
  if (!item.empty()) v.overrides.push_back(item);
  return v;
}

struct Outcome {
  std::string label;
  struct Point {
    int64_t step = 0;
    double wall_s = 0, accuracy = 0;
  };
  std::vector<Point> curve;  // at each evaluation
  double final_accuracy = NAN, wall_s = NAN, step_s = NAN, gen_share = NAN, staleness = NAN;
  double reach_s = NAN;  // when it first reached the baseline's final accuracy
};

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Outcome read_outcome(const std::string& label, const fs::path& run) {
  Outcome o;
  o.label = label;
  std::vector<double> step_s, share, stale;
  for (const auto& row : core::read_metrics_jsonl(run / "metrics.jsonl")) {
    std::map<std::string, double> m(row.values.begin(), row.values.end());
    if (m.count("val/accuracy")) o.curve.push_back({row.step, row.time_s, m["val/accuracy"]});
    if (m.count("timing_s/step")) step_s.push_back(m["timing_s/step"]);
    if (m.count("timing_s/step") && m.count("timing_s/gen")) share.push_back(m["timing_s/gen"] / std::max(m["timing_s/step"], 1e-9));
    if (m.count("async/staleness_mean")) stale.push_back(m["async/staleness_mean"]);
  }
  if (o.curve.empty()) throw Error(run.string() + ": no held-out accuracy was logged; give the config data.val and eval.every");
  o.final_accuracy = o.curve.back().accuracy;
  o.wall_s = o.curve.back().wall_s;
  o.step_s = median(step_s);
  o.gen_share = median(share);
  double sum = 0;
  for (double s : stale) sum += s;
  o.staleness = stale.empty() ? NAN : sum / static_cast<double>(stale.size());
  return o;
}

}  // namespace

int bench_rlhf(const RlhfBenchArgs& args) {
  if (args.variants.empty()) throw ConfigError("bench rlhf: give at least one --variant LABEL:key=value,...");
  std::vector<Variant> variants;
  for (const auto& v : args.variants) variants.push_back(parse_variant(v));
  std::string baseline = args.baseline.empty() ? variants.front().label : args.baseline;
  if (std::none_of(variants.begin(), variants.end(), [&](const Variant& v) { return v.label == baseline; }))
    throw ConfigError("bench rlhf: --baseline '" + baseline + "' is not one of the variants' labels");
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  const fs::path root = fs::path(args.out_dir) / stamp;

  std::vector<Outcome> outcomes;
  for (const auto& v : variants) {
    std::vector<std::string> overrides = args.overrides;
    overrides.insert(overrides.end(), v.overrides.begin(), v.overrides.end());
    overrides.push_back("run.dir=" + (root / v.label).string());
    if (!args.json) std::cout << v.label << ": running\n" << std::flush;
    LoadedExperiment loaded = load_experiment(args.config, overrides);
    RunOptions options;
    options.progress = ProgressMode::Quiet;
    if (const int code = run_experiment(loaded, options); code != 0)
      throw Error("bench rlhf: variant " + v.label + " failed (exit code " + std::to_string(code) + "); its log is in " +
                  (root / v.label / "log.txt").string());
    outcomes.push_back(read_outcome(v.label, root / v.label));
  }
  const Outcome& base = *std::find_if(outcomes.begin(), outcomes.end(), [&](const Outcome& o) { return o.label == baseline; });
  const double target = base.final_accuracy, base_s = base.wall_s;
  for (auto& o : outcomes)
    for (const auto& p : o.curve)
      if (p.step > 0 && p.accuracy >= target - 1e-12) {  // trained to it, not there from the start
        o.reach_s = p.wall_s;
        break;
      }

  std::ofstream csv(root / "curves.csv");
  csv << "variant,step,wall_s,val_accuracy\n";
  for (const auto& o : outcomes)
    for (const auto& p : o.curve) csv << o.label << "," << p.step << "," << p.wall_s << "," << p.accuracy << "\n";
  if (args.json) {
    nlohmann::ordered_json out = {{"config", args.config}, {"baseline", baseline}, {"target_accuracy", target}, {"runs", root.string()}};
    for (const auto& o : outcomes)
      out["variants"].push_back({{"label", o.label}, {"final_accuracy", o.final_accuracy}, {"wall_s", o.wall_s},
                                 {"median_step_s", o.step_s}, {"median_wait_share", o.gen_share}, {"mean_staleness", o.staleness},
                                 {"reach_s", std::isnan(o.reach_s) ? nlohmann::ordered_json() : nlohmann::ordered_json(o.reach_s)},
                                 {"speedup", std::isnan(o.reach_s) ? nlohmann::ordered_json() : nlohmann::ordered_json(base_s / o.reach_s)},
                                 {"wall_ratio", base_s / o.wall_s}});
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::cout << "baseline " << baseline << ": final held-out accuracy " << std::fixed << std::setprecision(3) << target << " at "
            << std::setprecision(1) << base_s << " s\n"
            << "variant            final acc   wall s   s/step   gen share   staleness   reaches " << std::setprecision(3) << target
            << " at   speedup   wall ratio\n";
  for (const auto& o : outcomes) {
    std::cout << std::left << std::setw(18) << o.label << std::right << std::setprecision(3) << std::setw(10) << o.final_accuracy
              << std::setprecision(1) << std::setw(9) << o.wall_s << std::setprecision(3) << std::setw(9) << o.step_s
              << std::setw(12) << o.gen_share << std::setw(12) << o.staleness;
    if (std::isnan(o.reach_s)) std::cout << "            never        -";
    else std::cout << std::setprecision(1) << std::setw(15) << o.reach_s << " s" << std::setprecision(2) << std::setw(9) << base_s / o.reach_s << "x";
    std::cout << std::setprecision(2) << std::setw(12) << base_s / o.wall_s << "x\n";
  }
  // A baseline that reached its final accuracy well before its end has a flat curve there, and any
  // variant crossing that level early looks faster than it is: the same steps' wall ratio is the
  // fair figure then.
  if (!std::isnan(base.reach_s) && base.reach_s < 0.9 * base_s)
    std::cout << "note: " << baseline << " reached its final accuracy at " << std::setprecision(1) << base.reach_s << " s of "
              << base_s << " s (a flat curve after); compare the wall ratio (the same steps' wall time)\n";
  std::cout << "curves: " << (root / "curves.csv").string() << "\n";
  return 0;
}

}  // namespace flotilla::controller
