#pragma once
// Collectives among the ranks of one worker group, or of a subgroup of it (the tensor-parallel
// ranks of one replica, the fully-sharded ranks of one slice), through libtorch's c10d: Gloo on
// CPU (NCCL where GPUs are, later). The ranks meet through a file store in the run directory.
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "algorithms/lm_trainer.hpp"
#include "models/transformer.hpp"
#include "runtime/layout.hpp"

namespace flotilla::runtime {

class Collective {
 public:
  Collective(const std::filesystem::path& store_file, int rank, int size);
  ~Collective();
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Replaces each tensor by its mean over the ranks (one flat all-reduce).
  void allreduce_mean(const std::vector<at::Tensor>& tensors);
  // Sums a contiguous tensor over the ranks, in place.
  void all_reduce(at::Tensor& t);
  // Every rank's tensor (the same shape on each) concatenated along `dim` in rank order.
  at::Tensor all_gather(const at::Tensor& t, int64_t dim);
  // A flat tensor of size * n elements summed over the ranks, this rank's n (its chunk), with one
  // all-to-all (each rank receives only its chunk of every other rank's).
  at::Tensor reduce_scatter(const at::Tensor& flat);
  // Rank `root`'s tensor into every rank's (same shape), in place.
  void broadcast(at::Tensor& t, int root);
  // This group as a model's tensor-parallel group.
  models::TensorParallel tensor_parallel(bool vocab_parallel = true);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_, size_;
};

// One rank's collectives in a layout (runtime/layout.hpp): its tensor-parallel group (the ranks of
// one data rank), its fsdp group (the chunks of one slice of one replica), its replica group (the
// same chunk of every replica) and its data group (every data rank with its tensor-parallel
// rank), each meeting through a file store of its own named from `store_prefix`. Groups of one
// rank are not made.
class LayoutGroup final : public algorithms::TrainingGroup {
 public:
  LayoutGroup(const std::string& store_prefix, int rank, Parallel parallel);
  ~LayoutGroup() override;
  int size(Axis axis) const override;
  int rank(Axis axis) const override;
  void sum(at::Tensor& t, Axis axis) override;
  at::Tensor reduce_scatter(const at::Tensor& flat) override;
  at::Tensor all_gather(const at::Tensor& chunk) override;
  const Parallel& parallel() const { return parallel_; }
  int global_rank() const { return rank_; }
  // Returns once every rank of the layout has called it.
  void barrier();
  // The model's tensor-parallel group (one rank when tp is 1).
  models::TensorParallel tensor_parallel(bool vocab_parallel = true);

 private:
  Collective* of(Axis axis) const;
  Parallel parallel_;
  int rank_;
  std::unique_ptr<Collective> tp_, fsdp_, dp_, data_;
};

}  // namespace flotilla::runtime
