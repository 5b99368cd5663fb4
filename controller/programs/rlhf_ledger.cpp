#include "controller/programs/rlhf_ledger.hpp"

#include <algorithm>

#include "core/batch.hpp"
#include "core/error.hpp"

namespace flotilla::controller {

// ---- schedule ----

nlohmann::json Schedule::to_json() const {
  nlohmann::json j = {{"starts", nlohmann::json::array()}, {"syncs", nlohmann::json::array()}, {"trained", nlohmann::json::array()},
                      {"drains", drains}};
  for (const auto& [group, at] : starts) j["starts"].push_back({group, at.first, at.second});
  for (const auto& [version, steps] : syncs) j["syncs"].push_back({{"version", version}, {"steps", steps}});
  for (const auto& [version, groups] : trained) j["trained"].push_back({{"version", version}, {"groups", groups}});
  return j;
}

Schedule Schedule::from_json(const nlohmann::json& j, const std::string& source) {
  try {
    Schedule s;
    for (const auto& x : j.at("starts")) s.starts[x.at(0).get<int64_t>()] = {x.at(1).get<int64_t>(), x.at(2).get<int64_t>()};
    for (const auto& x : j.at("syncs")) s.syncs[x.at("version").get<int64_t>()] = x.at("steps").get<std::vector<int64_t>>();
    for (const auto& x : j.at("trained")) s.trained[x.at("version").get<int64_t>()] = x.at("groups").get<std::vector<int64_t>>();
    if (j.contains("drains")) s.drains = j.at("drains").get<std::set<int64_t>>();
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(source + ": not a schedule recorded by an RLHF run (" + e.what() + ")");
  }
}

actors::lm::Follow Schedule::follow(int rank, int64_t from_step) const {
  actors::lm::Follow f;
  f.from_step = from_step;
  f.replay = true;
  for (const auto& [group, at] : starts)
    if (at.first == rank && at.second >= from_step) f.start_groups.push_back(group), f.start_steps.push_back(at.second);
  for (const auto& [version, steps] : syncs)
    if (rank < static_cast<int>(steps.size()) && steps[static_cast<size_t>(rank)] >= from_step)
      f.sync_versions.push_back(version), f.sync_steps.push_back(steps[static_cast<size_t>(rank)]);
  return f;
}

// ---- ledger ----

GroupLedger::GroupLedger(algorithms::Staleness bound, int64_t n, int ranks, int64_t max_inflight, uint64_t base)
    : bound_(bound), n_(n), max_inflight_(max_inflight), ranks_(ranks), base_(base) {
  if (n < 1 || ranks < 1 || max_inflight < 0)
    throw Error("a sample stream needs at least one sample per prompt and one rollout worker");
}

GroupLedger::Group GroupLedger::place(int64_t id, int64_t example, int64_t version) const {
  const int64_t batch = bound_.batch(), step = id / batch + 1, p = id % batch;
  // The rank whose chunk of the step's batch holds prompt p, and p's place in that chunk.
  const std::vector<int64_t> sizes = core::chunk_sizes(batch, ranks_);
  int64_t rank = 0, first = 0;
  while (p >= first + sizes[static_cast<size_t>(rank)]) first += sizes[static_cast<size_t>(rank++)];
  Group g{.id = id, .example = example, .admitted = version, .rank = rank};
  g.seed = base_ + static_cast<uint64_t>(step) + static_cast<uint64_t>(p - first) * static_cast<uint64_t>(n_);
  return g;
}

std::vector<GroupLedger::Group> GroupLedger::admit(int64_t version, const std::function<std::vector<int64_t>(int64_t)>& examples) {
  int64_t k = bound_.admissible(version, next_);
  if (max_inflight_ > 0) k = std::min(k, max_inflight_ - running());
  // With no bound and no cap, keep one batch ahead of what is generating or waiting.
  if (!bound_.bounded() && max_inflight_ == 0) k = std::max<int64_t>(0, 2 * bound_.batch() - running() - ready());
  if (k <= 0) return {};
  const std::vector<int64_t> picked = examples(k);
  if (static_cast<int64_t>(picked.size()) != k)
    throw Error("the prompt sampler gave " + std::to_string(picked.size()) + " prompts for " + std::to_string(k));
  std::vector<Group> out;
  for (int64_t example : picked) {
    Group g = place(next_++, example, version);
    running_[g.id] = g;
    out.push_back(g);
  }
  return out;
}

void GroupLedger::finished(int64_t id, int64_t oldest) {
  auto it = running_.find(id);
  if (it == running_.end()) throw Error("group " + std::to_string(id) + " finished, but it is not generating");
  Group g = it->second;
  running_.erase(it);
  g.oldest = oldest;
  // Admission order, whatever order they finish in.
  ready_.insert(std::upper_bound(ready_.begin(), ready_.end(), g, [](const Group& a, const Group& b) { return a.id < b.id; }), g);
}

std::vector<GroupLedger::Group> GroupLedger::take(int64_t version) {
  std::vector<int64_t> ready, running;
  for (const auto& g : ready_) ready.push_back(g.admitted);
  for (const auto& [id, g] : running_) running.push_back(g.admitted);
  const std::vector<size_t> picked = bound_.pick(ready, running, version);
  if (picked.empty()) return {};
  std::vector<Group> out;
  std::vector<bool> taken(ready_.size(), false);
  for (size_t i : picked) {
    out.push_back(ready_[i]);
    taken[i] = true;
  }
  std::vector<Group> rest;
  for (size_t i = 0; i < ready_.size(); ++i)
    if (!taken[i]) rest.push_back(ready_[i]);
  ready_.swap(rest);
  return out;
}

std::vector<GroupLedger::Group> GroupLedger::take_ids(const std::vector<int64_t>& ids) {
  std::vector<Group> out, rest;
  for (const auto& g : ready_) (std::find(ids.begin(), ids.end(), g.id) != ids.end() ? out : rest).push_back(g);
  if (out.size() != ids.size()) return {};
  ready_.swap(rest);
  return out;
}

void GroupLedger::again(const std::vector<Group>& groups) {
  for (Group g : groups) {
    ready_.erase(std::remove_if(ready_.begin(), ready_.end(), [&](const Group& r) { return r.id == g.id; }), ready_.end());
    g.oldest = -1;
    running_[g.id] = g;
  }
}

std::vector<GroupLedger::Group> GroupLedger::again(const std::set<int64_t>& ids) {
  std::vector<Group> back;
  for (const auto& g : ready_)
    if (ids.count(g.id)) back.push_back(g);
  again(back);
  std::vector<Group> out;
  for (int64_t id : ids)
    if (auto it = running_.find(id); it != running_.end()) out.push_back(it->second);
  return out;
}

nlohmann::json GroupLedger::state() const {
  if (!running_.empty())
    throw Error("the sample stream is saved only once nothing generates (" + std::to_string(running()) + " groups are)");
  nlohmann::json ready = nlohmann::json::array();
  for (const auto& g : ready_)
    ready.push_back({{"id", g.id}, {"example", g.example}, {"admitted", g.admitted}, {"rank", g.rank}, {"seed", g.seed}, {"oldest", g.oldest}});
  return {{"submitted", next_}, {"ready", ready}};
}

void GroupLedger::restore(const nlohmann::json& s) {
  if (!running_.empty() || !ready_.empty()) throw Error("a sample stream is restored before it admits any group");
  next_ = s.at("submitted").get<int64_t>();
  for (const auto& r : s.at("ready"))
    ready_.push_back(Group{.id = r.at("id").get<int64_t>(), .example = r.at("example").get<int64_t>(),
                           .admitted = r.at("admitted").get<int64_t>(), .rank = r.at("rank").get<int64_t>(),
                           .seed = r.at("seed").get<uint64_t>(), .oldest = r.at("oldest").get<int64_t>()});
}

}  // namespace flotilla::controller
