#include "runtime/collective.hpp"
#include "runtime/worker.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "core/error.hpp"

namespace flotilla::runtime {

struct Collective::Impl {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

namespace {
std::string& collective_host() {  // see runtime/worker.hpp
  static std::string host = "127.0.0.1";
  return host;
}
}  // namespace

void set_collective_host(const std::string& host) { collective_host() = host; }

Collective::Collective(const std::filesystem::path& store_file, int rank, int size)
    : impl_(std::make_unique<Impl>()), rank_(rank), size_(size) {
  try {
    auto store = c10::make_intrusive<c10d::FileStore>(store_file.string(), size);
    auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(120));
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(collective_host()));
    options->threads = 1;
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
  } catch (const c10::Error& e) {
    throw Error("rank " + std::to_string(rank) + " of " + std::to_string(size) + " could not join the Gloo group (" +
                store_file.string() + "): " + e.what_without_backtrace());
  }
}

Collective::~Collective() = default;

void Collective::allreduce_mean(const std::vector<at::Tensor>& tensors) {
  if (size_ == 1 || tensors.empty()) return;
  std::vector<at::Tensor> flat_parts;
  for (const auto& t : tensors) flat_parts.push_back(t.reshape({-1}));
  std::vector<at::Tensor> buffer = {at::cat(flat_parts)};
  impl_->group->allreduce(buffer)->wait();
  buffer[0].div_(size_);
  int64_t offset = 0;
  for (const auto& t : tensors) {
    t.copy_(buffer[0].narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

void Collective::all_reduce(at::Tensor& t) {
  if (size_ == 1) return;
  std::vector<at::Tensor> buffer = {t};
  impl_->group->allreduce(buffer)->wait();
}

at::Tensor Collective::all_gather(const at::Tensor& t, int64_t dim) {
  if (size_ == 1) return t;
  std::vector<at::Tensor> in = {t.contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < size_; ++r) out[0].push_back(at::empty_like(in[0]));
  impl_->group->allgather(out, in)->wait();
  return at::cat(out[0], dim);
}

at::Tensor Collective::reduce_scatter(const at::Tensor& flat) {
  if (size_ == 1) return flat;
  if (flat.dim() != 1 || flat.numel() % size_ != 0)
    throw Error("reduce_scatter takes a flat tensor whose size divides by the group's " + std::to_string(size_));
  const int64_t n = flat.numel() / size_;
  at::Tensor in = flat.contiguous(), out = at::empty_like(in);
  std::vector<int64_t> counts(static_cast<size_t>(size_), n);
  impl_->group->alltoall_base(out, in, counts, counts)->wait();
  return out.view({size_, n}).sum(0);
}

void Collective::broadcast(at::Tensor& t, int root) {
  if (size_ == 1) return;
  std::vector<at::Tensor> buffer = {t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  impl_->group->broadcast(buffer, o)->wait();
}

models::TensorParallel Collective::tensor_parallel(bool vocab_parallel) {
  models::TensorParallel tp;
  tp.rank = rank_;
  tp.size = size_;
  tp.vocab_parallel = vocab_parallel;
  tp.all_reduce = [this](at::Tensor& t) { all_reduce(t); };
  tp.all_gather_last = [this](const at::Tensor& t) { return all_gather(t, -1); };
  return tp;
}

LayoutGroup::LayoutGroup(const std::string& store_prefix, int rank, Parallel p) : parallel_(p), rank_(rank) {
  if (rank < 0 || rank >= p.size()) throw Error("rank " + std::to_string(rank) + " is not in layout " + p.str());
  const int dp = p.dp_rank(rank), f = p.fsdp_rank(rank), t = p.tp_rank(rank);
  auto make = [&](const std::string& name, int r, int n) {
    return n > 1 ? std::make_unique<Collective>(store_prefix + "." + name, r, n) : nullptr;
  };
  // Every rank makes its groups in this order, so the rendezvous cannot cross.
  tp_ = make("tp" + std::to_string(p.data_rank(rank)), t, p.tp);
  fsdp_ = make("fsdp" + std::to_string(dp) + "." + std::to_string(t), f, p.fsdp);
  dp_ = make("dp" + std::to_string(f) + "." + std::to_string(t), dp, p.dp);
  data_ = make("data" + std::to_string(t), p.data_rank(rank), p.data_ranks());
}

LayoutGroup::~LayoutGroup() = default;

Collective* LayoutGroup::of(Axis axis) const {
  switch (axis) {
    case Axis::Data: return data_.get();
    case Axis::Dp: return dp_.get();
    case Axis::Fsdp: return fsdp_.get();
    case Axis::Tp: return tp_.get();
  }
  return nullptr;
}

int LayoutGroup::size(Axis axis) const { return of(axis) ? of(axis)->size() : 1; }
int LayoutGroup::rank(Axis axis) const { return of(axis) ? of(axis)->rank() : 0; }

void LayoutGroup::sum(at::Tensor& t, Axis axis) {
  if (Collective* c = of(axis)) c->all_reduce(t);
}

at::Tensor LayoutGroup::reduce_scatter(const at::Tensor& flat) { return fsdp_ ? fsdp_->reduce_scatter(flat) : flat; }
at::Tensor LayoutGroup::all_gather(const at::Tensor& chunk) { return fsdp_ ? fsdp_->all_gather(chunk, 0) : chunk; }

void LayoutGroup::barrier() {
  // Each tensor-parallel group meets, then each data group (one rank of every tensor-parallel
  // group): past the second, every rank has entered the first.
  at::Tensor one = at::ones({1});
  sum(one, Axis::Tp);
  sum(one, Axis::Data);
}

models::TensorParallel LayoutGroup::tensor_parallel(bool vocab_parallel) {
  return tp_ ? tp_->tensor_parallel(vocab_parallel) : models::TensorParallel{};
}

}  // namespace flotilla::runtime
