#include "algorithms/lm_batches.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "models/transformer.hpp"

namespace flotilla::algorithms {
namespace {

// Row groups in `order` (indices of groups of `row_group` rows) as row indices.
at::Tensor group_rows(at::Tensor order, int64_t row_group) {
  return row_group > 1 ? (order.unsqueeze(1) * row_group + at::arange(row_group, at::kLong)).reshape({-1}) : order;
}

// The window of `starts` over T tokens: for each row and window column j, the log-prob position
// starts - 1 + j clamped into the row, and whether it is inside.
struct Window {
  at::Tensor index, inside;
  Window(const at::Tensor& starts, int64_t S, int64_t T) {
    const at::Tensor pos = starts.unsqueeze(1) - 1 + at::arange(S, at::kLong);
    inside = pos <= T - 2;
    index = pos.clamp_max(T - 2);
  }
};

}  // namespace

core::Batch by_length(const core::Batch& mini, int64_t row_group) {
  if (!mini.contains("last") || mini.size() <= row_group) return mini;
  const at::Tensor longest = std::get<0>(mini["last"].reshape({-1, row_group}).max(1));
  return mini.index(group_rows(std::get<1>(longest.sort(/*stable=*/true, 0, /*descending=*/false)), row_group));
}

core::Batch by_prompt(const core::Batch& mini, int64_t row_group) {
  if (!mini.contains("response_mask") || mini.size() <= row_group) return by_length(mini, row_group);
  const int64_t units = mini.size() / row_group;
  const at::Tensor heads = at::arange(units, at::kLong) * row_group;  // each row group's first row
  const std::vector<int64_t> prompt =
      models::same_prompts(mini["tokens"].index_select(0, heads), response_starts(mini["response_mask"].index_select(0, heads)));
  const at::Tensor longest_t = mini.contains("last") ? std::get<0>(mini["last"].reshape({-1, row_group}).max(1)).contiguous()
                                                     : at::zeros({units}, at::kLong);
  const auto longest = longest_t.accessor<int64_t, 1>();
  std::vector<int64_t> prompt_longest(static_cast<size_t>(units), 0);
  for (int64_t u = 0; u < units; ++u) {
    auto& l = prompt_longest[static_cast<size_t>(prompt[static_cast<size_t>(u)])];
    l = std::max(l, longest[u]);
  }
  std::vector<int64_t> order(static_cast<size_t>(units));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const int64_t pa = prompt[static_cast<size_t>(a)], pb = prompt[static_cast<size_t>(b)];
    const int64_t la = prompt_longest[static_cast<size_t>(pa)], lb = prompt_longest[static_cast<size_t>(pb)];
    return la != lb ? la < lb : pa < pb;
  });
  return mini.index(group_rows(at::tensor(order, at::kLong), row_group));
}

core::Batch cut_to_longest(const core::Batch& part) {
  if (!part.contains("last") || part.size() == 0) return part;
  const int64_t W = part["tokens"].size(1), w = part["last"].max().item<int64_t>() + 1;
  if (w >= W) return part;
  core::Batch out;
  for (const auto& name : part.names()) {
    const at::Tensor& t = part[name];
    const bool positions = t.dim() >= 2 && (t.size(1) == W || t.size(1) == W - 1);
    out.set(name, positions ? t.slice(1, 0, w - (W - t.size(1))) : t);
  }
  out.meta() = part.meta();
  return out;
}

at::Tensor response_starts(const at::Tensor& response_mask) {
  const at::Tensor mask = response_mask.contiguous();
  const auto m = mask.accessor<float, 2>();
  at::Tensor starts = at::empty({mask.size(0)}, at::kLong);
  auto s = starts.accessor<int64_t, 1>();
  for (int64_t r = 0; r < mask.size(0); ++r) {
    int64_t t = 0;
    while (t < mask.size(1) && m[r][t] == 0.0f) ++t;
    s[r] = t + 1;
  }
  return starts;
}

core::Batch response_window(const core::Batch& part) {
  if (!part.contains("response_mask") || part.size() == 0 || part["tokens"].size(1) < 2) return part;
  const int64_t W = part["tokens"].size(1);
  const at::Tensor starts = response_starts(part["response_mask"]);
  const Window window(starts, W - starts.min().item<int64_t>(), W);
  core::Batch out;
  for (const auto& name : part.names()) {
    const at::Tensor& t = part[name];
    const bool positions = t.dim() == 2 && t.size(1) == W - 1;
    out.set(name, positions ? t.gather(1, window.index) * window.inside.to(t.scalar_type()) : t);
  }
  out.set("window_start", starts);
  out.meta() = part.meta();
  return out;
}

at::Tensor from_response_window(const at::Tensor& window, const at::Tensor& starts, int64_t T) {
  const Window w(starts, window.size(1), T);
  return at::zeros({window.size(0), T - 1}, window.options()).scatter_add(1, w.index, window * w.inside.to(window.scalar_type()));
}

}  // namespace flotilla::algorithms
