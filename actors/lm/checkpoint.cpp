#include "actors/lm/checkpoint.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "algorithms/lm_trainer.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"
#include "models/transformer.hpp"
#include "runtime/collective.hpp"
#include "runtime/reshard.hpp"

namespace flotilla::actors::lm {
namespace fs = std::filesystem;
using runtime::Interval;

namespace {

const char* const kFields[] = {"flat", "exp_avg", "exp_avg_sq"};

fs::path shard_file(const fs::path& dir, int rank) { return dir / "shards" / ("rank-" + std::to_string(rank) + ".safetensors"); }

// `whole` (the whole model's flat vector) cut to `layout`'s rank, or the rank's buffer put back
// into `whole`.
at::Tensor cut(const at::Tensor& whole, const runtime::Layout& layout, int rank) {
  at::Tensor out = at::empty({layout.local_size(rank)}, at::kFloat);
  for (const Interval& iv : layout.held(rank)) out.narrow(0, iv.local, iv.length).copy_(whole.narrow(0, iv.global, iv.length));
  return out;
}
void paste(at::Tensor& whole, const at::Tensor& local, const runtime::Layout& layout, int rank) {
  if (local.numel() != layout.local_size(rank))
    throw FormatError("a checkpoint shard of rank " + std::to_string(rank) + " has " + std::to_string(local.numel()) + " elements; layout " +
                      layout.parallel().str() + " gives that rank " + std::to_string(layout.local_size(rank)));
  for (const Interval& iv : layout.held(rank)) whole.narrow(0, iv.global, iv.length).copy_(local.narrow(0, iv.local, iv.length));
}

// The single-process files from whole flat vectors: the model's tensors, and Adam's state per
// parameter in the names algorithms/adam_state.hpp gives it.
void write_whole(const models::CausalLm& model, const runtime::Layout& layout, const std::map<std::string, at::Tensor>& whole,
                 int64_t step, const fs::path& dir) {
  auto tensor = [&](const at::Tensor& flat, size_t i) {
    const auto& p = layout.params()[i];
    return flat.narrow(0, layout.offset(i), p.numel()).view(p.shape);
  };
  std::vector<std::pair<std::string, at::Tensor>> weights, optimizer;
  for (size_t i = 0; i < layout.params().size(); ++i) {
    weights.emplace_back(layout.params()[i].name, tensor(whole.at("flat"), i));
    if (!whole.count("exp_avg")) continue;
    const std::string p = "optimizer." + std::to_string(i);
    optimizer.emplace_back(p + ".exp_avg", tensor(whole.at("exp_avg"), i));
    optimizer.emplace_back(p + ".exp_avg_sq", tensor(whole.at("exp_avg_sq"), i));
    optimizer.emplace_back(p + ".step", at::full({1}, step, at::kLong));
  }
  model.save(dir, weights);
  if (!optimizer.empty()) core::save_safetensors(dir / "optimizer.safetensors", optimizer, {});
}

// The first replica's shards in `dir`/shards joined into the whole files; the shards go.
void join_shards(const models::CausalLm& model, const runtime::Layout& layout, const fs::path& dir) {
  const runtime::Parallel& p = layout.parallel();
  std::map<std::string, at::Tensor> whole;
  int64_t step = 0;
  for (int r = 0; r < p.fsdp * p.tp; ++r) {
    const core::TensorFile f = core::load_safetensors(shard_file(dir, r));
    step = std::stoll(f.metadata.at("step"));
    for (const char* field : kFields) {
      if (!f.contains(field)) continue;
      if (!whole.count(field)) whole[field] = at::zeros({layout.total()}, at::kFloat);
      paste(whole[field], f.at(field), layout, r);
    }
  }
  write_whole(model, layout, whole, step, dir);
  fs::remove_all(dir / "shards");
}

}  // namespace

void save_trained(const models::CausalLm& model, const algorithms::LmTrainer* trainer, runtime::LayoutGroup* group, int rank,
                  const fs::path& dir) {
  const bool whole_model = !group || (group->parallel().fsdp == 1 && group->parallel().tp == 1);
  if (whole_model) {
    if (rank != 0) return;
    model.save(dir);
    if (trainer) core::save_safetensors(dir / "optimizer.safetensors", trainer->state(), {});
    return;
  }
  const runtime::Parallel& p = group->parallel();
  const runtime::Layout layout(runtime::param_infos(model), p);
  if (p.dp_rank(rank) == 0) {
    std::vector<std::pair<std::string, at::Tensor>> mine = {{"flat", runtime::own_buffer(model, layout, rank)}};
    int64_t step = 0;
    if (trainer) {
      const algorithms::LmTrainer::FlatState s = trainer->flat_state();
      if (s.exp_avg.defined()) {
        mine.emplace_back("exp_avg", s.exp_avg);
        mine.emplace_back("exp_avg_sq", s.exp_avg_sq);
        step = s.step;
      }
    }
    fs::create_directories(dir / "shards");
    core::save_safetensors(shard_file(dir, rank), mine, {{"step", std::to_string(step)}, {"layout", p.str()}});
  }
  group->barrier();  // every shard is written
  if (rank == 0) join_shards(model, layout, dir);
  group->barrier();  // no rank goes on (to a load, say) before the files are whole
}

BackgroundSaver::~BackgroundSaver() { wait(); }

void BackgroundSaver::wait() {
  if (thread_.joinable()) thread_.join();
}

at::Tensor BackgroundSaver::copy(const std::string& name, const at::Tensor& t) {
  at::Tensor& host = buffers_[name];
  if (!host.defined() || host.sizes() != t.sizes() || host.dtype() != t.dtype()) host = at::empty_like(t, at::TensorOptions().device(at::kCPU));
  host.copy_(t);
  return host;
}

void BackgroundSaver::save(const models::CausalLm& model, const algorithms::LmTrainer* trainer, runtime::LayoutGroup* group, int rank,
                           const fs::path& dir, int64_t step) {
  wait();
  // Rank 0's thread says how its save went (the other ranks' shards are in its join).
  auto in_background = [this, dir](bool marks, std::function<void()> write) {
    if (marks) fs::remove(dir / "written");
    thread_ = std::thread([dir, marks, write = std::move(write)] {
      std::string outcome = "ok";
      try {
        write();
      } catch (const std::exception& e) {
        outcome = e.what();
      }
      if (!marks) return;
      try {
        fs::create_directories(dir);
        core::write_file_atomically(dir / "written", [&](std::ostream& o) { o << outcome << "\n"; });
      } catch (const std::exception&) {  // nowhere to say it: the checkpoint never completes
      }
    });
  };
  const bool whole_model = !group || (group->parallel().fsdp == 1 && group->parallel().tp == 1);
  if (whole_model) {
    if (rank != 0) return;
    std::vector<std::pair<std::string, at::Tensor>> weights, optimizer;
    for (const auto& [name, t] : model.named_parameters()) weights.emplace_back(name, copy("w." + name, t.detach()));
    if (trainer)
      for (const auto& [name, t] : trainer->state()) optimizer.emplace_back(name, copy("o." + name, t));
    return in_background(true, [&model, dir, weights = std::move(weights), optimizer = std::move(optimizer)] {
      model.save(dir, weights);
      if (!optimizer.empty()) core::save_safetensors(dir / "optimizer.safetensors", optimizer, {});
    });
  }
  const runtime::Parallel& p = group->parallel();
  auto layout = std::make_shared<runtime::Layout>(runtime::param_infos(model), p);
  if (p.dp_rank(rank) != 0) return;
  std::vector<std::pair<std::string, at::Tensor>> mine = {{"flat", runtime::own_buffer(model, *layout, rank)}};  // a new tensor
  int64_t adam_step = 0;
  if (trainer) {
    const algorithms::LmTrainer::FlatState s = trainer->flat_state();
    if (s.exp_avg.defined()) {
      mine.emplace_back("exp_avg", copy("exp_avg", s.exp_avg));
      mine.emplace_back("exp_avg_sq", copy("exp_avg_sq", s.exp_avg_sq));
      adam_step = s.step;
    }
  }
  in_background(rank == 0, [&model, layout, dir, rank, step, adam_step, mine = std::move(mine)] {
    const runtime::Parallel& p = layout->parallel();
    fs::create_directories(dir / "shards");
    core::save_safetensors(shard_file(dir, rank), mine, {{"step", std::to_string(adam_step)}, {"layout", p.str()}, {"save", std::to_string(step)}});
    if (rank != 0) return;
    // Every shard of this save (its "save" mark: an older one may lie there still) before the join.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
    for (int r = 1; r < p.fsdp * p.tp; ++r)
      while (!fs::exists(shard_file(dir, r)) || core::load_safetensors(shard_file(dir, r)).metadata.at("save") != std::to_string(step)) {
        if (std::chrono::steady_clock::now() > deadline) throw TimeoutError("rank " + std::to_string(r) + "'s shard did not come within 10 minutes");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    join_shards(model, *layout, dir);
  });
}

void load_trained(models::CausalLm& model, algorithms::LmTrainer* trainer, runtime::LayoutGroup* group, int rank,
                  const fs::path& dir) {
  model.load_weights(dir);  // each rank its tensor-parallel slice
  if (!trainer) return;
  trainer->parameters_replaced();
  if (!fs::exists(dir / "optimizer.safetensors")) return;
  std::map<std::string, at::Tensor> state;
  for (auto& [n, t] : core::load_safetensors(dir / "optimizer.safetensors").tensors) state[n] = t;
  if (!group || (group->parallel().fsdp == 1 && group->parallel().tp == 1)) {
    trainer->load_state(state);
    return;
  }
  const runtime::Layout layout(runtime::param_infos(model), group->parallel());
  algorithms::LmTrainer::FlatState s;
  std::vector<at::Tensor> avg, sq;
  for (size_t i = 0; i < layout.params().size(); ++i) {
    const std::string p = "optimizer." + std::to_string(i);
    if (!state.count(p + ".step")) return;  // saved before the first step
    for (auto [field, parts] : {std::pair{".exp_avg", &avg}, std::pair{".exp_avg_sq", &sq}}) {
      const at::Tensor& t = state.at(p + field);
      if (t.numel() != layout.params()[i].numel())
        throw FormatError((dir / "optimizer.safetensors").string() + ": " + p + field + " has " + std::to_string(t.numel()) +
                          " elements; parameter '" + layout.params()[i].name + "' has " + std::to_string(layout.params()[i].numel()));
      parts->push_back(t.reshape({-1}).to(at::kFloat));
    }
    s.step = state.at(p + ".step").item<int64_t>();
  }
  s.exp_avg = cut(at::cat(avg), layout, rank);
  s.exp_avg_sq = cut(at::cat(sq), layout, rank);
  trainer->load_flat_state(s);
}

}  // namespace flotilla::actors::lm
