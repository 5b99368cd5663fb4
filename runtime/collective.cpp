#include "runtime/collective.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "core/error.hpp"

namespace flotilla::runtime {

struct Collective::Impl {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

Collective::Collective(const std::filesystem::path& store_file, int rank, int size)
    : impl_(std::make_unique<Impl>()), rank_(rank), size_(size) {
  try {
    auto store = c10::make_intrusive<c10d::FileStore>(store_file.string(), size);
    auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(120));
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
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

}  // namespace flotilla::runtime
