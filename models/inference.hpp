#pragma once
// The generation engine's forward pass (models/generation.hpp). One engine step's new tokens, of
// every sequence, prefilling or decoding, are the rows of one matrix: each weight matrix is read
// once per step for all of them (a prefill chunk carries the decode tokens with it, as in
// Sarathi-Serve), and split by output columns over the threads, each running a single-threaded
// sgemm on its share. Attention reads the paged cache in place (no gathers), one task per row
// and key/value head serving all of that head's query heads. Only the rows that sample get
// logits. The weights are the model's own tensors in float32 (nothing copied, a weight update
// seen at once), or bfloat16 copies refreshed when the model's parameters change.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/transformer.hpp"

namespace flotilla::models {

// One step's new tokens, back to back: a run of consecutive positions per sequence.
struct StepRows {
  std::vector<int64_t> tokens, positions, slots;  // per row: the token, its position, its cache slot
  struct Run {
    int64_t first = 0, rows = 0;                   // its rows
    const std::vector<int64_t>* blocks = nullptr;  // the sequence's block table
    bool logits = false;                           // the run's last row samples
  };
  std::vector<Run> runs;
  void add(const std::vector<int64_t>& blocks, int64_t block_size, int64_t first_position, const int32_t* tokens, int64_t n,
           bool logits);
};

// out [N, n] = x [N, k] w^T for float32 w [n, k] with OpenBLAS's sgemm, split the way
// InferenceModel splits its weights: the output columns evenly over libtorch's threads, each a
// single-threaded sgemm writing its columns of `out` in place (the bench's sgemm roofline).
void split_mm(const at::Tensor& out, const at::Tensor& x, const at::Tensor& w);

class InferenceModel {
 public:
  // `weights`: "float32" (the model's tensors) or "bfloat16" (matrix weights rounded to bfloat16,
  // products accumulated in float32).
  InferenceModel(CausalLm& model, const std::string& weights);
  ~InferenceModel();
  // Writes the rows' keys and values to their cache slots and returns the logits [runs with
  // `logits`, vocabulary] (float32) of those runs' last rows, in run order.
  at::Tensor forward(const StepRows& step, KvCache& cache);
  const std::string& weights() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla::models
