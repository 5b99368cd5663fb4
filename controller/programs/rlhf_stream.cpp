#include "controller/programs/rlhf_stream.hpp"

#include <algorithm>

#include "core/batch.hpp"
#include "core/error.hpp"

namespace flotilla::controller {

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
