// Training and generation layouts: a tensor-parallel model (ranks as threads of this process,
// each with its own Gloo group) computes what the whole model does, forward, backward and
// cached generation.
#include <ATen/ATen.h>

#include <functional>
#include <mutex>
#include <thread>

#include "algorithms/lm_trainer.hpp"
#include "core/batch.hpp"
#include "models/generation.hpp"
#include "models/transformer.hpp"
#include "runtime/collective.hpp"
#include "support/temp_dir.hpp"
#include "support/tiny_lm.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;

namespace {

// Runs f(rank, group) on `size` threads, each a rank of one Gloo group; rethrows the first error.
void on_ranks(int size, const std::filesystem::path& store, const std::function<void(int, runtime::Collective&)>& f) {
  std::vector<std::thread> threads;
  std::mutex m;
  std::string error;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        runtime::Collective group(store, r, size);
        f(r, group);
      } catch (const std::exception& e) {
        std::lock_guard lock(m);
        if (error.empty()) error = "rank " + std::to_string(r) + ": " + e.what();
      } catch (...) {
        std::lock_guard lock(m);
        if (error.empty()) error = "rank " + std::to_string(r) + " failed a check";
      }
    });
  for (auto& t : threads) t.join();
  if (!error.empty()) throw std::runtime_error(error);
}

// The gradient of a next-token loss on `tokens`, per parameter name.
std::map<std::string, at::Tensor> loss_gradients(models::CausalLm& lm, const at::Tensor& tokens) {
  const at::Tensor logp = at::log_softmax(lm.forward(tokens).slice(1, 0, -1), -1);
  const at::Tensor loss = -logp.gather(2, tokens.slice(1, 1).unsqueeze(2)).mean();
  loss.backward();
  lm.reduce_tensor_parallel_gradients();
  std::map<std::string, at::Tensor> out;
  for (auto& [name, p] : lm.named_parameters()) out[name] = p.grad().clone();
  return out;
}

}  // namespace

TEST_CASE("a tensor-parallel model computes the whole model's logits, gradients and greedy generations") {
  for (const bool tied : {true, false})
    for (const bool vocab_parallel : {true, false}) {
      CAPTURE(tied);
      CAPTURE(vocab_parallel);
      test::TempDir dir;
      models::CausalLm whole = test::spread_model("qwen3", tied, 3.0);
      whole.save(dir.path() / "model");
      at::manual_seed(5);
      const at::Tensor tokens = at::randint(0, whole.config().vocab_size, {3, 9}, at::kLong);
      const at::Tensor logits = whole.forward(tokens).detach();
      const auto grads = loss_gradients(whole, tokens);
      models::GenerationEngine engine(whole, {});
      for (int64_t i = 0; i < 3; ++i) engine.submit({i, {1, static_cast<int32_t>(10 + i), 7}, {.temperature = 0, .max_new_tokens = 6}});
      const auto expected = engine.run();

      on_ranks(2, dir.path() / "tp.store", [&](int rank, runtime::Collective& group) {
        models::CausalLm lm = models::CausalLm::load(dir.path() / "model", "", group.tensor_parallel(vocab_parallel));
        const at::Tensor got = lm.forward(tokens).detach();
        CHECK(at::allclose(got, logits, 1e-4, 1e-4));
        const auto g = loss_gradients(lm, tokens);
        for (auto& [name, p] : lm.named_parameters()) {
          const int d = models::tensor_parallel_dim(name, vocab_parallel);
          const at::Tensor want = d >= 0 ? grads.at(name).chunk(2, d)[static_cast<size_t>(rank)] : grads.at(name);
          INFO(name);
          CHECK(at::allclose(g.at(name), want, 1e-4, 1e-5));
        }
        models::GenerationEngine e(lm, {});
        for (int64_t i = 0; i < 3; ++i) e.submit({i, {1, static_cast<int32_t>(10 + i), 7}, {.temperature = 0, .max_new_tokens = 6}});
        const auto out = e.run();
        CHECK(out.size() == expected.size());
        for (size_t i = 0; i < std::min(out.size(), expected.size()); ++i) CHECK(out[i].tokens == expected[i].tokens);
      });
    }
}

TEST_CASE("a tensor-parallel model with random weights is the whole model's with the same seed, sliced") {
  const models::LmConfig c = models::LmConfig::preset("qwen2", "tiny", 300);
  at::manual_seed(9);
  const models::CausalLm whole(c);
  test::TempDir dir;
  on_ranks(2, dir.path() / "tp.store", [&](int rank, runtime::Collective& group) {
    static std::mutex seeding;  // libtorch's default generator is shared by the threads
    std::lock_guard lock(seeding);
    at::manual_seed(9);
    const models::CausalLm lm(c, group.tensor_parallel());
    const auto mine = lm.named_parameters();
    const auto all = whole.named_parameters();
    for (size_t i = 0; i < mine.size(); ++i) {
      const int d = models::tensor_parallel_dim(mine[i].first);
      CHECK(at::equal(mine[i].second, d >= 0 ? all[i].second.chunk(2, d)[static_cast<size_t>(rank)] : all[i].second));
    }
  });
}

namespace {

// Six rows of different lengths: a prompt then a response, right-padded.
core::Batch sft_rows() {
  at::manual_seed(21);
  const int64_t B = 6, T = 12;
  core::Batch b;
  b.set("tokens", at::randint(0, 300, {B, T}, at::kLong));
  at::Tensor mask = at::zeros({B, T - 1});
  std::vector<int64_t> last = {11, 7, 9, 5, 11, 8};
  for (int64_t i = 0; i < B; ++i) mask[i].slice(0, 2, last[static_cast<size_t>(i)]).fill_(1.0);
  b.set("response_mask", mask);
  b.set("last", at::tensor(last, at::kLong));
  return b;
}

// Three SFT updates of a tiny model on `rows`, micro-batches of 2; the trained parameters, and
// the first update's statistics in `first`.
std::vector<at::Tensor> train(models::CausalLm& lm, const core::Batch& rows, algorithms::TrainingGroup* group,
                              core::Scalars& first) {
  algorithms::LmOptimConfig o;
  o.lr = 0.01;
  o.micro_batch = 2;
  algorithms::LmTrainer trainer(lm, o);
  trainer.set_group(group);
  algorithms::PolicyLossConfig loss;
  loss.loss = "sft";
  for (uint64_t step = 0; step < 3; ++step) {
    core::Scalars stats = trainer.update_policy(rows, loss, step);
    if (step == 0) first = stats;
  }
  std::vector<at::Tensor> out;
  for (auto& [name, p] : lm.named_parameters()) out.push_back(p.detach().clone());
  return out;
}

}  // namespace

TEST_CASE("each training layout trains to the weights one process trains to") {
  test::TempDir dir;
  models::CausalLm init = test::spread_model("qwen3", false, 1.0);
  init.save(dir.path() / "model");
  const core::Batch rows = sft_rows();
  models::CausalLm one = models::CausalLm::load(dir.path() / "model");
  core::Scalars expected_stats;
  const auto expected = train(one, rows, nullptr, expected_stats);
  const auto names = one.named_parameters();
  for (const std::string layout : {"dp=2", "fsdp=2", "tp=2", "fsdp=2,tp=2", "dp=2,tp=2", "dp=2,fsdp=2"}) {
    CAPTURE(layout);
    const runtime::Parallel p = runtime::Parallel::parse(layout);
    std::vector<std::vector<at::Tensor>> got(static_cast<size_t>(p.size()));
    std::vector<core::Scalars> stats(static_cast<size_t>(p.size()));
    std::vector<std::thread> threads;
    std::mutex m;
    std::string error;
    for (int r = 0; r < p.size(); ++r)
      threads.emplace_back([&, r] {
        try {
          runtime::LayoutGroup group((dir.path() / layout).string(), r, p);
          models::CausalLm lm = models::CausalLm::load(dir.path() / "model", "", group.tensor_parallel());
          // Data rank d takes the d-th of as-equal-as-possible consecutive chunks, as DpChunks does.
          const auto sizes = core::chunk_sizes(rows.size(), p.data_ranks());
          const int d = p.data_rank(r);
          int64_t begin = 0;
          for (int i = 0; i < d; ++i) begin += sizes[static_cast<size_t>(i)];
          got[static_cast<size_t>(r)] = train(lm, rows.slice(begin, begin + sizes[static_cast<size_t>(d)]), &group, stats[static_cast<size_t>(r)]);
        } catch (const std::exception& e) {
          std::lock_guard lock(m);
          error = e.what();
        }
      });
    for (auto& t : threads) t.join();
    REQUIRE_MESSAGE(error.empty(), error);
    // Every rank reports the whole batch's statistics (the loss, the entropy, the norm), not its
    // own rows'.
    for (const auto& rank_stats : stats) {
      REQUIRE(rank_stats.size() == expected_stats.size());
      for (size_t i = 0; i < rank_stats.size(); ++i) {
        CAPTURE(rank_stats[i].first);
        CHECK(rank_stats[i].first == expected_stats[i].first);
        CHECK(rank_stats[i].second == doctest::Approx(expected_stats[i].second).epsilon(1e-5));
      }
    }
    for (int r = 0; r < p.size(); ++r)
      for (size_t i = 0; i < names.size(); ++i) {
        const int dim = models::tensor_parallel_dim(names[i].first);
        const at::Tensor want = p.tp > 1 && dim >= 0 ? expected[i].chunk(p.tp, dim)[static_cast<size_t>(p.tp_rank(r))] : expected[i];
        const at::Tensor diff = (got[static_cast<size_t>(r)][i] - want).abs();
        INFO(names[i].first << " on rank " << r << " differs by " << diff.max().item<double>() << " at most, "
                            << diff.mean().item<double>() << " on average");
        // Adam moves every weight by about lr per step whatever its gradient's size, so rounding in
        // a tiny gradient can move a weight a little differently (1.7e-4 at most was seen here);
        // a wrong gradient moves many weights by lr-sized amounts (0.01 per step).
        CHECK(diff.max().item<double>() < 1e-3);
        CHECK(diff.mean().item<double>() < 1e-5);
      }
    // The weights moved: an update that did nothing would pass the comparison too.
    CHECK(!at::allclose(expected[3], init.named_parameters()[3].second, 1e-3, 1e-3));
  }
}
