#include "algorithms/staleness.hpp"

#include <algorithm>
#include <limits>

#include "core/error.hpp"

namespace flotilla::algorithms {

Staleness::Staleness(int64_t max, int64_t batch) : max_(max), batch_(batch) {
  if (max < kUnbounded) throw Error("a staleness bound is at least 0, or unbounded; not " + std::to_string(max));
  if (batch < 1) throw Error("a staleness bound needs a batch of at least 1, not " + std::to_string(batch));
}

int64_t Staleness::admissible(int64_t version, int64_t submitted) const {
  if (!bounded()) return std::numeric_limits<int64_t>::max();
  return std::max<int64_t>(0, (max_ + version + 1) * batch_ - submitted);
}

bool Staleness::fresh(int64_t made, int64_t version) const { return !bounded() || version - made <= max_; }

std::vector<size_t> Staleness::pick(const std::vector<int64_t>& ready, const std::vector<int64_t>& running, int64_t version) const {
  if (static_cast<int64_t>(ready.size()) < batch_) return {};
  std::vector<size_t> out(static_cast<size_t>(batch_));
  for (size_t i = 0; i < out.size(); ++i) out[i] = i;  // ready is in admission order: the oldest
  if (!bounded()) return out;
  // What stays untrained, by admission version: every unit admitted at version - max + k or
  // before must fit in the k batches after this one.
  std::vector<int64_t> left(running);
  left.insert(left.end(), ready.begin() + batch_, ready.end());
  std::sort(left.begin(), left.end());
  for (size_t i = 0; i < left.size(); ++i) {
    const int64_t k = left[i] - (version - max_);  // it is due in the batch k after this one
    if (static_cast<int64_t>(i) + 1 > std::max<int64_t>(k, 0) * batch_) return {};
  }
  return out;
}

std::string Staleness::str() const { return bounded() ? std::to_string(max_) : "unbounded"; }

}  // namespace flotilla::algorithms
