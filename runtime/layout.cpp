#include "runtime/layout.hpp"

#include <algorithm>
#include <numeric>
#include <sstream>

#include "core/error.hpp"

namespace flotilla::runtime {

int64_t ParamInfo::numel() const {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

Parallel Parallel::parse(const std::string& text) {
  Parallel p;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    if (part.empty()) continue;
    const size_t eq = part.find('=');
    const std::string key = part.substr(0, eq);
    int* degree = key == "dp" ? &p.dp : key == "fsdp" ? &p.fsdp : key == "tp" ? &p.tp : nullptr;
    if (!degree || eq == std::string::npos)
      throw ConfigError("layout '" + text + "': '" + part + "' is not dp=N, fsdp=N or tp=N");
    try {
      size_t used = 0;
      *degree = std::stoi(part.substr(eq + 1), &used);
      if (used != part.size() - eq - 1) throw std::invalid_argument(part);
    } catch (const std::exception&) {
      throw ConfigError("layout '" + text + "': '" + part + "' needs a whole number after '='");
    }
    if (*degree < 1) throw ConfigError("layout '" + text + "': " + key + " must be at least 1");
  }
  return p;
}

std::string Parallel::str() const {
  std::string s;
  auto add = [&](const char* k, int v) {
    if (v > 1) s += (s.empty() ? "" : ",") + std::string(k) + "=" + std::to_string(v);
  };
  add("dp", dp);
  add("fsdp", fsdp);
  add("tp", tp);
  return s.empty() ? "dp=1" : s;
}

namespace {

// Appends a run, merging it with the last one when both offsets continue it.
void append(std::vector<Interval>& runs, Interval r) {
  if (r.length <= 0) return;
  if (!runs.empty()) {
    Interval& last = runs.back();
    if (last.global + last.length == r.global && last.local + last.length == r.local) {
      last.length += r.length;
      return;
    }
  }
  runs.push_back(r);
}

}  // namespace

Layout::Layout(std::vector<ParamInfo> params, Parallel parallel) : params_(std::move(params)), parallel_(parallel) {
  const int tp = parallel_.tp;
  for (const auto& p : params_) {
    offsets_.push_back(total_);
    total_ += p.numel();
    if (tp > 1 && p.tp_dim >= 0) {
      if (p.tp_dim >= static_cast<int>(p.shape.size()))
        throw ConfigError("parameter " + p.name + " has no dimension " + std::to_string(p.tp_dim) + " to split");
      if (p.shape[static_cast<size_t>(p.tp_dim)] % tp != 0)
        throw ConfigError("parameter " + p.name + ": dimension " + std::to_string(p.tp_dim) + " (" +
                          std::to_string(p.shape[static_cast<size_t>(p.tp_dim)]) + ") does not split over tp=" + std::to_string(tp));
    }
  }
  // Each tensor-parallel rank's slice: global runs at consecutive slice offsets.
  std::vector<std::vector<Interval>> slices(static_cast<size_t>(tp));
  for (int t = 0; t < tp; ++t) {
    int64_t pos = 0;
    for (size_t i = 0; i < params_.size(); ++i) {
      const ParamInfo& p = params_[i];
      if (tp == 1 || p.tp_dim < 0) {
        append(slices[t], {offsets_[i], pos, p.numel()});
        pos += p.numel();
        continue;
      }
      const auto d = static_cast<size_t>(p.tp_dim);
      const int64_t outer = std::accumulate(p.shape.begin(), p.shape.begin() + static_cast<long>(d), int64_t{1}, std::multiplies<>());
      const int64_t inner = std::accumulate(p.shape.begin() + static_cast<long>(d) + 1, p.shape.end(), int64_t{1}, std::multiplies<>());
      const int64_t part = p.shape[d] / tp * inner;
      for (int64_t o = 0; o < outer; ++o) append(slices[t], {offsets_[i] + o * p.shape[d] * inner + t * part, pos + o * part, part});
      pos += outer * part;
    }
    slice_size_ = pos;
  }
  // Each rank's fully-sharded chunk of its slice.
  for (int r = 0; r < parallel_.size(); ++r) {
    const int64_t begin = chunk_begin(r), end = std::min(slice_size_, begin + (slice_size_ + parallel_.fsdp - 1) / parallel_.fsdp);
    const auto& slice = slices[static_cast<size_t>(parallel_.tp_rank(r))];
    std::vector<Interval> runs;
    auto it = std::upper_bound(slice.begin(), slice.end(), begin, [](int64_t v, const Interval& iv) { return v < iv.local; });
    if (it != slice.begin()) --it;
    for (; it != slice.end() && it->local < end; ++it) {
      const int64_t b = std::max(begin, it->local), e = std::min(end, it->local + it->length);
      if (b < e) append(runs, {it->global + (b - it->local), b - begin, e - b});
    }
    held_.push_back(std::move(runs));
    local_size_.push_back(std::max<int64_t>(0, end - begin));
  }
}

std::vector<int64_t> Layout::local_shape(size_t param) const {
  std::vector<int64_t> s = params_.at(param).shape;
  if (parallel_.tp > 1 && params_[param].tp_dim >= 0) s[static_cast<size_t>(params_[param].tp_dim)] /= parallel_.tp;
  return s;
}

int64_t Layout::chunk_begin(int rank) const {
  const int64_t chunk = (slice_size_ + parallel_.fsdp - 1) / parallel_.fsdp;
  return std::min(slice_size_, parallel_.fsdp_rank(rank) * chunk);
}

int64_t Layout::max_local_size() const { return *std::max_element(local_size_.begin(), local_size_.end()); }

std::vector<Interval> Layout::runs_within(int rank, int64_t begin, int64_t end) const {
  std::vector<Interval> out;
  const auto& runs = held(rank);
  auto it = std::upper_bound(runs.begin(), runs.end(), begin, [](int64_t g, const Interval& iv) { return g < iv.global; });
  if (it != runs.begin()) --it;
  for (; it != runs.end() && it->global < end; ++it) {
    const int64_t b = std::max(begin, it->global), e = std::min(end, it->global + it->length);
    if (b < e) out.push_back({b, it->local + (b - it->global), e - b});
  }
  return out;
}

int64_t overlap(const std::vector<Interval>& a, const std::vector<Interval>& b) {
  int64_t n = 0;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const int64_t lo = std::max(a[i].global, b[j].global);
    const int64_t hi = std::min(a[i].global + a[i].length, b[j].global + b[j].length);
    if (lo < hi) n += hi - lo;
    if (a[i].global + a[i].length < b[j].global + b[j].length) ++i;
    else ++j;
  }
  return n;
}

namespace {

// Who holds each stretch of the model: cuts[s] .. cuts[s+1] is held by holders[s], each a source
// rank and the local offset of the stretch's first element there.
struct Coverage {
  struct Holder {
    int rank;
    int64_t local;
  };
  std::vector<int64_t> cuts;
  std::vector<std::vector<Holder>> holders;

  Coverage(const Layout& layout, int64_t grain) {
    for (int64_t g = 0; g < layout.total(); g += grain) cuts.push_back(g);
    for (int r = 0; r < layout.ranks(); ++r)
      for (const auto& iv : layout.held(r)) {
        cuts.push_back(iv.global);
        cuts.push_back(iv.global + iv.length);
      }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    holders.resize(cuts.empty() ? 0 : cuts.size() - 1);
    for (int r = 0; r < layout.ranks(); ++r)
      for (const auto& iv : layout.held(r)) {
        auto s = static_cast<size_t>(std::lower_bound(cuts.begin(), cuts.end(), iv.global) - cuts.begin());
        for (; cuts[s] < iv.global + iv.length; ++s) holders[s].push_back({r, iv.local + (cuts[s] - iv.global)});
      }
  }
  // The stretch holding global offset g.
  size_t find(int64_t g) const {
    return static_cast<size_t>(std::upper_bound(cuts.begin(), cuts.end(), g) - cuts.begin()) - 1;
  }
};

void check_same_model(const Layout& from, const Layout& to) {
  const auto& a = from.params();
  const auto& b = to.params();
  if (a.size() != b.size()) throw Error("resharding between models with " + std::to_string(a.size()) + " and " +
                                        std::to_string(b.size()) + " parameters");
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].name != b[i].name || a[i].shape != b[i].shape)
      throw Error("resharding between different models: parameter " + std::to_string(i) + " is " + a[i].name + " in one and " +
                  b[i].name + " in the other (or their shapes differ)");
}

// Sorts copies by (dst, src, dst_offset) and merges those that continue one another.
std::vector<Copy> coalesced(std::vector<Copy> copies) {
  std::sort(copies.begin(), copies.end(), [](const Copy& x, const Copy& y) {
    return std::tie(x.dst, x.src, x.dst_offset) < std::tie(y.dst, y.src, y.dst_offset);
  });
  std::vector<Copy> out;
  for (const Copy& c : copies) {
    if (!out.empty()) {
      Copy& l = out.back();
      if (l.dst == c.dst && l.src == c.src && l.dst_offset + l.length == c.dst_offset && l.src_offset + l.length == c.src_offset) {
        l.length += c.length;
        continue;
      }
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace

ReshardPlan ReshardPlan::make(const Layout& from, const Layout& to, const std::vector<int>& same_process, int64_t grain) {
  check_same_model(from, to);
  if (grain < 1) throw Error("a reshard plan's grain must be at least one element");
  std::vector<int> colocated = same_process;
  if (colocated.empty()) colocated.assign(static_cast<size_t>(to.ranks()), -1);
  if (static_cast<int>(colocated.size()) != to.ranks())
    throw Error("a reshard plan needs one colocation entry per destination rank (" + std::to_string(to.ranks()) + "), got " +
                std::to_string(colocated.size()));
  for (int s : colocated)
    if (s < -1 || s >= from.ranks()) throw Error("colocated source rank " + std::to_string(s) + " is not a rank of the source layout");

  ReshardPlan plan;
  plan.destinations_ = to.ranks();
  plan.load_.assign(static_cast<size_t>(from.ranks()), 0);
  const Coverage cover(from, grain);
  std::vector<Copy> sent, local;
  for (int d = 0; d < to.ranks(); ++d) {
    const int mine = colocated[static_cast<size_t>(d)];
    plan.lower_bound_ += to.local_size(d) - (mine >= 0 ? overlap(to.held(d), from.held(mine)) : 0);
    for (const Interval& need : to.held(d)) {
      int64_t g = need.global;
      const int64_t end = need.global + need.length;
      for (size_t s = cover.find(g); g < end; ++s) {
        if (s >= cover.holders.size() || cover.holders[s].empty())
          throw Error("the source layout " + from.parallel().str() + " holds no copy of model element " + std::to_string(g));
        const int64_t stop = std::min(end, cover.cuts[s + 1]), n = stop - g;
        const auto& hs = cover.holders[s];
        const Coverage::Holder* pick = nullptr;
        for (const auto& h : hs)
          if (h.rank == mine) pick = &h;
        const bool here = pick != nullptr;
        if (!here)
          for (const auto& h : hs)
            if (!pick || plan.load_[static_cast<size_t>(h.rank)] < plan.load_[static_cast<size_t>(pick->rank)]) pick = &h;
        const Copy c{pick->rank, d, pick->local + (g - cover.cuts[s]), need.local + (g - need.global), n};
        if (here) {
          local.push_back(c);
        } else {
          sent.push_back(c);
          plan.load_[static_cast<size_t>(pick->rank)] += n;
        }
        g = stop;
      }
    }
  }
  plan.sent_ = coalesced(std::move(sent));
  plan.local_ = coalesced(std::move(local));
  return plan;
}

std::vector<int> ReshardPlan::best_colocation(const Layout& from, const Layout& to) {
  check_same_model(from, to);
  struct Pair {
    int64_t common;
    int src, dst;
  };
  std::vector<Pair> pairs;
  for (int s = 0; s < from.ranks(); ++s)
    for (int d = 0; d < to.ranks(); ++d) pairs.push_back({overlap(from.held(s), to.held(d)), s, d});
  std::stable_sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) { return a.common > b.common; });
  std::vector<int> out(static_cast<size_t>(to.ranks()), -1);
  std::vector<bool> used(static_cast<size_t>(from.ranks()), false);
  for (const Pair& p : pairs)
    if (!used[static_cast<size_t>(p.src)] && out[static_cast<size_t>(p.dst)] < 0) {
      used[static_cast<size_t>(p.src)] = true;
      out[static_cast<size_t>(p.dst)] = p.src;
    }
  return out;
}

int64_t ReshardPlan::sent_elements() const {
  int64_t n = 0;
  for (const auto& c : sent_) n += c.length;
  return n;
}

int64_t ReshardPlan::local_elements() const {
  int64_t n = 0;
  for (const auto& c : local_) n += c.length;
  return n;
}

namespace {

// The copies of `copies` (sorted by (dst, src, dst_offset)) to `dst` from `src` (any when -1),
// packed into buckets of at most `bucket` elements.
std::vector<std::vector<Copy>> pack(const std::vector<Copy>& copies, int dst, int src, int64_t bucket) {
  if (bucket < 1) throw ConfigError("a reshard bucket must hold at least one element");
  auto it = std::lower_bound(copies.begin(), copies.end(), std::make_pair(dst, std::max(src, 0)), [](const Copy& c, const std::pair<int, int>& k) {
    return std::tie(c.dst, c.src) < std::tie(k.first, k.second);
  });
  std::vector<std::vector<Copy>> out;
  int64_t room = 0;
  for (; it != copies.end() && it->dst == dst && (src < 0 || it->src == src); ++it) {
    Copy c = *it;
    while (c.length > 0) {
      if (room == 0 || (!out.empty() && out.back().back().src != c.src)) {
        out.emplace_back();
        room = bucket;
      }
      const int64_t n = std::min(room, c.length);
      out.back().push_back({c.src, c.dst, c.src_offset, c.dst_offset, n});
      c.src_offset += n, c.dst_offset += n, c.length -= n;
      room -= n;
    }
  }
  return out;
}

}  // namespace

std::vector<std::vector<Copy>> ReshardPlan::buckets(int dst, int src, int64_t bucket) const {
  return pack(sent_, dst, src, bucket);
}

std::vector<std::vector<Copy>> ReshardPlan::local_buckets(int dst, int64_t bucket) const { return pack(local_, dst, -1, bucket); }

}  // namespace flotilla::runtime
