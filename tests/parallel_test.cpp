// Training and generation layouts: a tensor-parallel model (ranks as threads of this process,
// each with its own Gloo group) computes what the whole model does, forward, backward and
// cached generation.
#include <ATen/ATen.h>

#include <functional>
#include <mutex>
#include <thread>

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
