#pragma once
// How the LM trainers shape sequence batches (the layout of algorithms/lm_trainer.hpp) into
// micro-batches: rows ordered by length or kept with the rows of their prompt, cut to their
// longest row, and moved to each row's response window (the log-prob positions from its first
// response position on) and back.
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/batch.hpp"

namespace flotilla::algorithms {

// The mini-batch's row groups ordered by their longest row (`last`; a stable sort), so that the
// rows of a micro-batch have similar lengths and each micro-batch can be cut to its own longest
// row: with long-tailed responses, most rows are far shorter than the batch's longest.
core::Batch by_length(const core::Batch& mini, int64_t row_group);
// The row groups of each distinct prompt together (in their order), the prompts ordered by their
// longest row (`last`, where the batch has it), so that a micro-batch holds whole GRPO groups of
// rows of similar length. Without a response mask, by_length().
core::Batch by_prompt(const core::Batch& mini, int64_t row_group);
// `part` without the columns past its longest row (`last` is a row's last token). Its
// per-position fields are as wide as the tokens or, at log-prob positions, one column narrower;
// both are cut. Padding is on the right, so no row loses a token.
core::Batch cut_to_longest(const core::Batch& part);

// Each row's first response token: one past its first response position in `response_mask`
// [B, T-1] (T when the row has none).
at::Tensor response_starts(const at::Tensor& response_mask);
// `part` in its response window: the log-prob positions from each row's first response position
// on, as many as the row with the earliest one has. Its fields at log-prob positions are
// gathered to that window (zero past a row's end), `window_start` holds each row's first
// response token, and the tokens stay whole (the model reads them).
core::Batch response_window(const core::Batch& part);
// A response window's columns [B, S] back at their log-prob positions [B, T-1] (zero before each
// row's window); `starts` as response_starts() gives them.
at::Tensor from_response_window(const at::Tensor& window, const at::Tensor& starts, int64_t T);

}  // namespace flotilla::algorithms
