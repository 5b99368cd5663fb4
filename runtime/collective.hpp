#pragma once
// Collectives among the ranks of one worker group, through libtorch's c10d: Gloo on CPU (NCCL
// where GPUs are, later). The ranks meet through a file store in the run directory.
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <vector>

namespace flotilla::runtime {

class Collective {
 public:
  Collective(const std::filesystem::path& store_file, int rank, int size);
  ~Collective();
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Replaces each tensor by its mean over the ranks (one flat all-reduce).
  void allreduce_mean(const std::vector<at::Tensor>& tensors);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_, size_;
};

}  // namespace flotilla::runtime
