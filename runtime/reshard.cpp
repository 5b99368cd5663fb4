#include "runtime/reshard.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/error.hpp"
#include "models/transformer.hpp"

namespace flotilla::runtime {

std::vector<ParamInfo> param_infos(const models::CausalLm& model, bool vocab_parallel) {
  const models::TensorParallel& tp = model.tensor_parallel();
  std::vector<ParamInfo> out;
  for (const auto& [name, p] : model.named_parameters()) {
    std::vector<int64_t> shape(p.sizes().begin(), p.sizes().end());
    if (const int d = models::tensor_parallel_dim(name, tp.vocab_parallel); tp.size > 1 && d >= 0) shape[static_cast<size_t>(d)] *= tp.size;
    out.push_back({name, std::move(shape), models::tensor_parallel_dim(name, vocab_parallel)});
  }
  return out;
}

std::vector<ParamInfo> param_infos(const models::CausalLm& model) {
  return param_infos(model, model.tensor_parallel().size == 1 || model.tensor_parallel().vocab_parallel);
}

at::Tensor own_buffer(const models::CausalLm& model, const Layout& layout, int rank) {
  const models::TensorParallel& tp = model.tensor_parallel();
  if (tp.size != layout.parallel().tp || tp.rank != layout.parallel().tp_rank(rank))
    throw Error("rank " + std::to_string(rank) + " of layout " + layout.parallel().str() + " is tensor-parallel rank " +
                std::to_string(layout.parallel().tp_rank(rank)) + " of " + std::to_string(layout.parallel().tp) + "; its model is " +
                std::to_string(tp.rank) + " of " + std::to_string(tp.size));
  std::vector<at::Tensor> flat;
  for (const auto& [name, p] : model.named_parameters()) flat.push_back(p.detach().reshape({-1}).to(at::kFloat));
  const at::Tensor slice = at::cat(flat);
  if (slice.numel() != layout.slice_size())
    throw Error("the model's tensor-parallel slice has " + std::to_string(slice.numel()) + " elements; layout " + layout.parallel().str() +
                " expects " + std::to_string(layout.slice_size()));
  return slice.narrow(0, layout.chunk_begin(rank), layout.local_size(rank)).clone();
}

at::Tensor local_buffer(const models::CausalLm& model, const Layout& layout, int rank) {
  const auto named = model.named_parameters();
  if (named.size() != layout.params().size())
    throw Error("the model has " + std::to_string(named.size()) + " parameters, the layout " + std::to_string(layout.params().size()));
  std::vector<at::Tensor> flat;
  std::vector<int64_t> offsets;
  for (size_t i = 0; i < named.size(); ++i) {
    flat.push_back(named[i].second.detach().reshape({-1}).to(at::kFloat));
    offsets.push_back(layout.offset(i));
  }
  at::Tensor out = at::empty({layout.local_size(rank)}, at::kFloat);
  for (const Interval& iv : layout.held(rank)) {
    int64_t g = iv.global, l = iv.local, n = iv.length;
    while (n > 0) {
      const auto i = static_cast<size_t>(std::upper_bound(offsets.begin(), offsets.end(), g) - offsets.begin()) - 1;
      const int64_t off = g - offsets[i], k = std::min(n, flat[i].numel() - off);
      out.narrow(0, l, k).copy_(flat[i].narrow(0, off, k));
      g += k, l += k, n -= k;
    }
  }
  return out;
}

Transfer receive(const ReshardPlan& plan, int dst, const std::vector<ShardSource>& sources, int64_t version, at::Tensor into,
                 const TransferOptions& options, Fetcher& fetcher) {
  if (static_cast<int>(sources.size()) != plan.sources())
    throw Error("a weight transfer names " + std::to_string(sources.size()) + " sources; its plan has " + std::to_string(plan.sources()));
  if (dst < 0 || dst >= plan.destinations()) throw Error("destination rank " + std::to_string(dst) + " is not in the plan");
  if (into.scalar_type() != at::kFloat || !into.is_contiguous() || into.dim() != 1)
    throw Error("a weight transfer fills a contiguous one-dimensional float32 buffer");
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t bucket = std::max<int64_t>(1, options.bucket_bytes / static_cast<int64_t>(sizeof(float)));
  Transfer out;
  std::vector<Fetcher::RangeRequest> requests;
  std::vector<std::vector<Copy>> copies;
  auto add = [&](std::vector<Copy> b) {
    const ShardSource& s = sources.at(static_cast<size_t>(b.front().src));
    Fetcher::RangeRequest r{s.holder, s.object, {"flat"}, {}};
    for (const Copy& c : b) {
      if (c.dst_offset < 0 || c.dst_offset + c.length > into.numel())
        throw Error("a weight transfer's copy ends past its destination buffer (" + std::to_string(into.numel()) + " elements)");
      r.ranges.emplace_back(c.src_offset, c.src_offset + c.length);
    }
    requests.push_back(std::move(r));
    copies.push_back(std::move(b));
  };
  for (auto& b : plan.local_buckets(dst, bucket)) {
    for (const Copy& c : b) out.local_bytes += c.length * static_cast<int64_t>(sizeof(float));
    add(std::move(b));
  }
  for (int s = 0; s < plan.sources(); ++s)
    for (auto& b : plan.buckets(dst, s, bucket)) {
      for (const Copy& c : b) out.sent_bytes += c.length * static_cast<int64_t>(sizeof(float));
      add(std::move(b));
    }
  out.buckets = static_cast<int64_t>(requests.size());
  const std::string want = std::to_string(version);
  fetcher.fetch_ranges(requests, options.window, [&](size_t i, const core::Batch& b) {
    const auto v = b.meta().find("version");
    if (v == b.meta().end() || v->second != want)
      throw Error("source rank " + std::to_string(copies[i].front().src) + " (" + requests[i].holder + ") holds weights of version " +
                  (v == b.meta().end() ? std::string("(none)") : v->second) + ", not " + want);
    const at::Tensor got = b["flat"].to(at::kFloat);
    int64_t pos = 0;
    for (const Copy& c : copies[i]) {
      into.narrow(0, c.dst_offset, c.length).copy_(got.narrow(0, pos, c.length));
      pos += c.length;
    }
  });
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

uint64_t checksum(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
  const size_t n = c.nbytes();
  uint64_t h = 1469598103934665603ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, bytes + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return h;
}

}  // namespace flotilla::runtime
