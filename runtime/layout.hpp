#pragma once
// How a model's parameters are spread over the ranks of a worker group (a Layout), and the copies
// that move them from one spread to another (a ReshardPlan). Both speak of the model as one flat
// vector: every parameter row-major, one after another in the model's order ("global" offsets).
// A rank keeps what it holds as one flat buffer of its own ("local" offsets): its tensor-parallel
// slice of every parameter, in the model's order, then cut to its fully-sharded chunk. Nothing
// here touches tensors; runtime/reshard.hpp moves the bytes.
#include <cstdint>
#include <string>
#include <vector>

namespace flotilla::runtime {

// One parameter. `tp_dim` is the dimension tensor parallelism splits (0: a column-parallel
// weight's output rows, 1: a row-parallel weight's input columns), or -1 when every
// tensor-parallel rank holds all of it (norms).
struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  int tp_dim = -1;
  int64_t numel() const;
};

// A layout's degrees: dp replicas, each of fsdp shards, each of tp slices; a rank's coordinates
// are rank = (dp_rank * fsdp + fsdp_rank) * tp + tp_rank (tensor parallelism innermost, so a
// tensor-parallel group is consecutive ranks).
struct Parallel {
  int dp = 1, fsdp = 1, tp = 1;
  int size() const { return dp * fsdp * tp; }
  int dp_rank(int rank) const { return rank / (fsdp * tp); }
  int fsdp_rank(int rank) const { return rank / tp % fsdp; }
  int tp_rank(int rank) const { return rank % tp; }
  // The ranks that hold the same data (one data-parallel rank: fsdp x tp ranks see the same rows
  // only when fsdp is 1; tensor-parallel ranks always do).
  int data_rank(int rank) const { return rank / tp; }
  int data_ranks() const { return dp * fsdp; }
  // "dp=2,tp=2", "fsdp=4", "tp=2" (missing degrees are 1); a ConfigError names a bad part.
  static Parallel parse(const std::string& text);
  std::string str() const;
  bool operator==(const Parallel& o) const { return dp == o.dp && fsdp == o.fsdp && tp == o.tp; }
};

// A run of elements: global [global, global + length) sits at local [local, local + length).
struct Interval {
  int64_t global = 0, local = 0, length = 0;
};

class Layout {
 public:
  // Throws ConfigError when a split dimension does not divide by tp, naming the parameter.
  Layout(std::vector<ParamInfo> params, Parallel parallel);

  const Parallel& parallel() const { return parallel_; }
  int ranks() const { return parallel_.size(); }
  const std::vector<ParamInfo>& params() const { return params_; }
  int64_t total() const { return total_; }             // elements of the whole model
  int64_t offset(size_t param) const { return offsets_[param]; }  // a parameter's global offset
  // The shape of parameter `param`'s tensor-parallel slice (the same on every tp rank).
  std::vector<int64_t> local_shape(size_t param) const;
  // What rank `rank` holds, sorted by local (and global) offset, adjacent runs merged.
  const std::vector<Interval>& held(int rank) const { return held_[static_cast<size_t>(rank)]; }
  // The runs of `rank` inside global [begin, end), clipped to it.
  std::vector<Interval> runs_within(int rank, int64_t begin, int64_t end) const;
  int64_t local_size(int rank) const { return local_size_[static_cast<size_t>(rank)]; }
  // The tensor-parallel slice's size (before the fully-sharded cut) and where rank's chunk of it
  // begins: local offset l of `rank` is offset chunk_begin(rank) + l of its slice.
  int64_t slice_size() const { return slice_size_; }
  int64_t chunk_begin(int rank) const;
  // Elements of the whole model held by one rank at most (the largest local buffer).
  int64_t max_local_size() const;

 private:
  std::vector<ParamInfo> params_;
  Parallel parallel_;
  std::vector<int64_t> offsets_;
  int64_t total_ = 0, slice_size_ = 0;
  std::vector<std::vector<Interval>> held_;
  std::vector<int64_t> local_size_;
};

// One copy: `length` elements from source rank `src` at its local `src_offset` to destination
// rank `dst` at its local `dst_offset`.
struct Copy {
  int src = 0, dst = 0;
  int64_t src_offset = 0, dst_offset = 0, length = 0;
};

// The copies that take every destination rank from nothing to its part of the model. A
// destination element is written exactly once: by a copy within its process when the source rank
// that shares the process holds it (`local`), else by one copy over the transport (`sent`) from
// a source rank that holds it, picked greedily as the least loaded so far (ReaLHF's rule), so no
// byte a destination already has is sent and replicas share the sending. Computed once per pair
// of layouts and reused for every weight version.
class ReshardPlan {
 public:
  // `same_process[d]` is the source rank living in destination rank d's process, or -1; empty
  // means none do (split placement). Runs held by several source ranks are shared out in pieces
  // of at most `grain` elements, so no sender carries more than `grain` beyond another that
  // holds the same.
  static constexpr int64_t kGrain = int64_t{1} << 18;
  static ReshardPlan make(const Layout& from, const Layout& to, const std::vector<int>& same_process = {},
                          int64_t grain = kGrain);

  // Which source rank's process should host each destination rank when both layouts share
  // processes: pairs with the most elements in common first (greedy), each process hosting one
  // destination rank; -1 for destination ranks beyond the source's.
  static std::vector<int> best_colocation(const Layout& from, const Layout& to);

  const std::vector<Copy>& sent() const { return sent_; }    // sorted by (dst, src, dst_offset)
  const std::vector<Copy>& local() const { return local_; }  // sorted by (dst, dst_offset)
  int64_t sent_elements() const;
  int64_t local_elements() const;
  // Elements sent by each source rank.
  const std::vector<int64_t>& load() const { return load_; }
  // The least any plan must send: for each destination rank, what it needs minus what the
  // source rank in its process holds (computed apart from the copies, as a check).
  int64_t lower_bound() const { return lower_bound_; }
  // The copies sent to `dst` from `src`, packed into buckets of at most `bucket` elements in
  // destination order (a copy longer than a bucket is cut).
  std::vector<std::vector<Copy>> buckets(int dst, int src, int64_t bucket) const;
  // The same for the copies within destination `dst`'s process.
  std::vector<std::vector<Copy>> local_buckets(int dst, int64_t bucket) const;
  int sources() const { return static_cast<int>(load_.size()); }
  int destinations() const { return destinations_; }

 private:
  std::vector<Copy> sent_, local_;
  std::vector<int64_t> load_;
  int64_t lower_bound_ = 0;
  int destinations_ = 0;
};

// Elements of the intersection of two sorted, disjoint lists of global runs.
int64_t overlap(const std::vector<Interval>& a, const std::vector<Interval>& b);

}  // namespace flotilla::runtime
