// RLHF training pieces at hand-computed values: the advantage estimators (GAE with and without a
// KL penalty, GRPO over uneven groups), the trainers' updates (SFT, DPO pairs, reward model), a
// model loaded with another head, preference data made from a verifiable task, and the bookkeeping of
// asynchronous RLHF's sample stream (admission, placement, seeds, batches within the staleness bound).
#include <ATen/ATen.h>

#include <cmath>
#include <deque>
#include <map>
#include <random>
#include <set>

#include "algorithms/advantages.hpp"
#include "algorithms/lm_losses.hpp"
#include "algorithms/lm_trainer.hpp"
#include "actors/lm/data.hpp"
#include "controller/programs/rlhf_stream.hpp"
#include "core/fs.hpp"
#include "core/error.hpp"
#include "envs/text_tasks.hpp"
#include "models/transformer.hpp"
#include "support/temp_dir.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using namespace flotilla::algorithms;

namespace {
at::Tensor t2(std::vector<float> v, int64_t rows) { return at::tensor(v).view({rows, -1}); }
float at2(const at::Tensor& t, int64_t r, int64_t c) { return t[r][c].item<float>(); }

models::CausalLm tiny_lm(const std::string& head = "lm", uint64_t seed = 5) {
  models::LmConfig c = models::LmConfig::preset("qwen3", "tiny", 40);
  c.head = head;
  at::manual_seed(seed);
  return models::CausalLm(c);
}
}  // namespace

TEST_CASE("gae_advantages_and_returns_by_hand") {
  // Row 0: prompt position 0, response positions 1 and 2, score 1. Row 1: response positions 0
  // and 1, score 0. gamma 1, lam 0.5.
  AdvantageInputs in;
  in.scores = at::tensor(std::vector<float>{1, 0});
  in.response_mask = t2({0, 1, 1, 1, 1, 0}, 2);
  in.values = t2({9, 0.5, 0.2, 0.3, 0.4, 7}, 2);
  in.gamma = 1.0, in.lam = 0.5;
  Advantages a = advantage_estimators().at("gae")(in);
  // Row 0: delta2 = 1 - 0.2 = 0.8; delta1 = 0.2 - 0.5 = -0.3, adv1 = -0.3 + 0.5 * 0.8 = 0.1.
  CHECK(at2(a.returns, 0, 2) == doctest::Approx(1.0));
  CHECK(at2(a.returns, 0, 1) == doctest::Approx(0.6));
  CHECK(at2(a.returns, 0, 0) == 0.0f);  // the prompt position is not an action
  // Row 1: past its last token nothing flows back (the 7 is padding); adv1 = -0.4,
  // adv0 = 0.1 + 0.5 * -0.4 = -0.1.
  CHECK(at2(a.returns, 1, 1) == doctest::Approx(0.0));
  CHECK(at2(a.returns, 1, 0) == doctest::Approx(0.2));
  // Advantages are whitened over the four response tokens [0.1, 0.8, -0.1, -0.4].
  const double mean = 0.1, sd = std::sqrt((0.0 + 0.49 + 0.04 + 0.25) / 4);
  CHECK(at2(a.advantages, 0, 2) == doctest::Approx((0.8 - mean) / sd).epsilon(1e-4));
  CHECK(at2(a.advantages, 1, 1) == doctest::Approx((-0.4 - mean) / sd).epsilon(1e-4));
  CHECK(at2(a.advantages, 1, 2) == 0.0f);

  // The KL in the reward: -coef * kl on every response token.
  in.kl = t2({0, 0.1, 0.1, 0, 0, 0}, 2);
  in.kl_coef = 1.0;
  Advantages k = advantage_estimators().at("gae")(in);
  CHECK(at2(k.returns, 0, 2) == doctest::Approx(0.9));   // 1 - 0.1
  CHECK(at2(k.returns, 0, 1) == doctest::Approx(0.45));  // adv1 = (-0.1 + 0.2 - 0.5) + 0.5 * 0.7 = -0.05
  in.values = at::Tensor();
  CHECK_THROWS_AS(advantage_estimators().at("gae")(in), ConfigError);
  CHECK_THROWS_WITH_AS(advantage_estimators().at("grop"),
                       doctest::Contains("unknown advantage estimator 'grop'; did you mean 'grpo'? (known: gae, grpo, reinforce_pp, rloo)"),
                       ConfigError);
}

TEST_CASE("grpo_over_uneven_groups") {
  const at::Tensor r = at::tensor(std::vector<float>{1, 0, 2, 2, 5, 7});
  const at::Tensor ids = at::tensor(std::vector<int64_t>{0, 0, 1, 1, 1, 2});
  const at::Tensor a = grpo_advantages(r, ids);
  // Group 0: mean 0.5, std sqrt(0.5); group 1: mean 3, std sqrt(3); group 2 has one sample: 0.
  CHECK(a[0].item<float>() == doctest::Approx(0.5 / std::sqrt(0.5)).epsilon(1e-4));
  CHECK(a[1].item<float>() == doctest::Approx(-0.5 / std::sqrt(0.5)).epsilon(1e-4));
  CHECK(a[2].item<float>() == doctest::Approx(-1 / std::sqrt(3.0)).epsilon(1e-4));
  CHECK(a[4].item<float>() == doctest::Approx(2 / std::sqrt(3.0)).epsilon(1e-4));
  CHECK(a[5].item<float>() == 0.0f);
  CHECK(grpo_advantages(r, ids, false)[4].item<float>() == doctest::Approx(2.0));  // no-std variant
  // Equal groups give what the fixed-size version gives.
  const at::Tensor even = at::tensor(std::vector<float>{1, 0, 0, 1, 3, 5});
  CHECK(at::allclose(grpo_advantages(even, at::tensor(std::vector<int64_t>{0, 0, 0, 1, 1, 1})), grpo_advantages(even, 3)));
  // The registry's grpo spreads each sequence's advantage over its response tokens only.
  AdvantageInputs in;
  in.scores = at::tensor(std::vector<float>{1, 0});
  in.response_mask = t2({1, 1, 0, 1, 0, 0}, 2);
  in.group_size = 2;
  const at::Tensor g = advantage_estimators().at("grpo")(in).advantages;
  CHECK(at2(g, 0, 1) == doctest::Approx(at2(g, 0, 0)));
  CHECK(at2(g, 0, 2) == 0.0f);
  CHECK(at2(g, 1, 0) == doctest::Approx(-at2(g, 0, 0)));
}

TEST_CASE("sft_update_lowers_the_loss_and_reports_the_actor_metrics") {
  models::CausalLm lm = tiny_lm();
  LmOptimConfig o;
  o.lr = 1e-2, o.micro_batch = 2;  // gradients accumulate over two micro-batches
  LmTrainer trainer(lm, o);
  core::Batch b;
  b.set("tokens", at::tensor(std::vector<int64_t>{1, 2, 3, 4, 5, 1, 2, 6, 7, 0, 3, 3, 3, 3, 3, 9, 8, 7, 6, 5}).view({4, 5}));
  b.set("response_mask", t2({0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1}, 4));
  PolicyLossConfig loss;
  loss.loss = "sft";
  auto value = [](const core::Scalars& s, const std::string& k) {
    for (const auto& [n, v] : s)
      if (n == k) return v;
    FAIL("no metric " << k);
    return 0.0;
  };
  const double first = value(trainer.update_policy(b, loss, 1), "actor/sft_loss");
  core::Scalars last;
  for (int i = 0; i < 30; ++i) last = trainer.update_policy(b, loss, 1);
  CHECK(value(last, "actor/sft_loss") < first * 0.5);
  CHECK(value(last, "actor/grad_norm") > 0);
  CHECK(value(last, "actor/entropy") > 0);
  for (const auto& [name, p] : lm.named_parameters()) CHECK_FALSE(p.grad().defined());  // freed after the update
  // The optimizer state round-trips for checkpoints.
  CHECK(trainer.state().size() == lm.named_parameters().size() * 3);
}

TEST_CASE("micro_batches_of_similar_length_give_the_whole_batch_update") {
  // Six rows of lengths 3 to 9, padded to 10 columns. In micro-batches of two, the rows are sorted
  // by length and each micro-batch is cut to its longest row; the update must still be the one the
  // whole batch gives in one pass (a token cut off, a field cut at the wrong width or misaligned by
  // the sort, or a micro-batch weighted by the wrong share would part them).
  const std::vector<int64_t> last = {8, 2, 5, 3, 6, 4};
  at::manual_seed(3);
  core::Batch b;
  at::Tensor tokens = at::randint(1, 40, {6, 10}, at::kLong), mask = at::zeros({6, 9});
  for (int64_t r = 0; r < 6; ++r) {
    tokens[r].slice(0, last[r] + 1).fill_(0);
    mask[r].slice(0, 1, last[r]).fill_(1.0);  // the prompt is the first two tokens
  }
  b.set("tokens", tokens);
  b.set("response_mask", mask);
  b.set("last", at::tensor(last, at::kLong));
  b.set("advantages", at::randn({6, 9}) * mask);
  for (const std::string loss_name : {"ppo", "sft"}) {
    CAPTURE(loss_name);
    PolicyLossConfig loss;
    loss.loss = loss_name;
    models::CausalLm whole = tiny_lm(), parts = tiny_lm();
    LmOptimConfig o;
    o.lr = 1e-2, o.micro_batch = 6;
    LmTrainer one_pass(whole, o);
    o.micro_batch = 2;
    LmTrainer in_parts(parts, o);
    const core::Scalars a = one_pass.update_policy(b, loss, 1), c = in_parts.update_policy(b, loss, 1);
    REQUIRE(a.size() == c.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(a[i].first);
      CHECK(c[i].second == doctest::Approx(a[i].second).epsilon(1e-4).scale(1e-6));
    }
    // The gradient's norm (among the statistics) and the losses agree to rounding. Adam's first
    // step is about lr * sign(gradient), so where a gradient is near zero rounding can move a
    // weight by a part of lr (1e-2); a token cut off would move many by all of it.
    const auto pw = whole.named_parameters(), pp = parts.named_parameters();
    for (size_t i = 0; i < pw.size(); ++i) {
      CAPTURE(pw[i].first);
      CHECK((pw[i].second - pp[i].second).abs().max().item<double>() < 1e-3);
    }
  }
}

namespace {
// Rows of four prompts: A (3 tokens) for rows 0, 1, 2 and 9, B (5 tokens) for rows 3 to 5, C (5
// tokens, B's length, other tokens) for rows 6 and 7, D (4 tokens) for row 8 alone; responses of 1
// to 6 tokens, right-padded to 10 columns. `starts` holds each row's first response token.
struct PromptRows {
  at::Tensor tokens, starts, mask, last;
};
PromptRows prompt_rows() {
  const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7}, {8, 9, 10, 11, 12}, {8, 9, 10, 11, 13}, {14, 15, 16, 17}};
  const std::vector<int64_t> of = {0, 0, 0, 1, 1, 1, 2, 2, 3, 0}, response = {1, 4, 6, 2, 5, 3, 4, 1, 6, 2};
  const int64_t B = 10, T = 10;
  PromptRows r{at::zeros({B, T}, at::kLong), at::zeros({B}, at::kLong), at::zeros({B, T - 1}), at::zeros({B}, at::kLong)};
  at::manual_seed(11);
  for (int64_t i = 0; i < B; ++i) {
    const auto& p = prompts[static_cast<size_t>(of[static_cast<size_t>(i)])];
    const int64_t s = static_cast<int64_t>(p.size()), n = response[static_cast<size_t>(i)];
    r.tokens[i].slice(0, 0, s).copy_(at::tensor(p, at::kLong));
    r.tokens[i].slice(0, s, s + n).copy_(at::randint(18, 40, {n}, at::kLong));
    r.mask[i].slice(0, s - 1, s - 1 + n).fill_(1.0);
    r.starts[i] = s;
    r.last[i] = s + n - 1;
  }
  return r;
}
}  // namespace

TEST_CASE("response_logits_share_each_prompt_and_equal_the_whole_forward_pass") {
  const PromptRows r = prompt_rows();
  CHECK(models::same_prompts(r.tokens, r.starts) == std::vector<int64_t>{0, 0, 0, 1, 1, 1, 2, 2, 3, 0});
  models::CausalLm lm = tiny_lm();
  const at::Tensor whole = lm.forward(r.tokens), window = lm.response_logits(r.tokens, r.starts);
  const int64_t T = r.tokens.size(1);
  REQUIRE(window.sizes() == at::IntArrayRef({10, T - 3, 40}));  // from the shortest prompt (3) on
  // Every window column inside the row's width is forward()'s logits at that position: a prompt
  // position shared with the wrong rows, a rotary position off by one or a mask letting a row see
  // another's response would each differ.
  int compared = 0;
  for (int64_t i = 0; i < 10; ++i)
    for (int64_t j = 0; j < window.size(1); ++j) {
      const int64_t pos = r.starts[i].item<int64_t>() - 1 + j;
      if (pos >= T) continue;
      CAPTURE(i);
      CAPTURE(j);
      CHECK((window[i][j] - whole[i][pos]).abs().max().item<float>() < 1e-4f);
      ++compared;
    }
  CHECK(compared == 65);
  // The value head at the same positions.
  models::CausalLm critic = tiny_lm("value");
  {
    at::NoGradGuard no_grad;
    for (auto& [name, p] : critic.named_parameters())
      if (name == "score.weight") p.normal_();
  }
  const at::Tensor values = critic.scores(r.tokens), window_values = critic.response_scores(r.tokens, r.starts);
  for (int64_t i = 0; i < 10; ++i)
    for (int64_t j = 0; j < window_values.size(1); ++j)
      if (const int64_t pos = r.starts[i].item<int64_t>() - 1 + j; pos < T)
        CHECK(std::abs(window_values[i][j].item<float>() - values[i][pos].item<float>()) < 1e-4f);
  // The log-prob and value passes given the response mask: forward()'s figures from each row's
  // first response position on, zero before it.
  const at::Tensor lp = sequence_log_probs(lm, r.tokens, 4), lp_window = sequence_log_probs(lm, r.tokens, 4, r.mask);
  const at::Tensor v = sequence_values(critic, r.tokens, 4), v_window = sequence_values(critic, r.tokens, 4, r.mask);
  const at::Tensor from = at::arange(T - 1, at::kLong).unsqueeze(0) >= (r.starts - 1).unsqueeze(1);
  CHECK(at::allclose(lp_window, lp * from, 1e-4, 1e-4));
  CHECK(at::allclose(v_window, v * from, 1e-4, 1e-4));
  CHECK(lp_window.masked_select(from.logical_not()).abs().max().item<float>() == 0.0f);
  // A start outside the row is named.
  at::Tensor bad = r.starts.clone();
  bad[4] = 0;
  CHECK_THROWS_WITH_AS(lm.response_logits(r.tokens, bad), doctest::Contains("row 4's response starts at 0"), Error);
  bad[4] = T + 1;
  CHECK_THROWS_WITH_AS(lm.response_logits(r.tokens, bad), doctest::Contains("outside [1, 10]"), Error);
}

TEST_CASE("updates_with_shared_prompts_equal_the_whole_sequence_updates") {
  // The same batch through both paths of each trainer, in micro-batches of 4 (groups of three and
  // four rows: some straddle micro-batches): the statistics and the weights after the step agree
  // to rounding. A per-position field gathered to the wrong column, a micro-batch weighted by the
  // wrong share or a row trained against another row's prompt would part them.
  const PromptRows r = prompt_rows();
  core::Batch b;
  b.set("tokens", r.tokens);
  b.set("response_mask", r.mask);
  b.set("last", r.last);
  at::manual_seed(12);
  b.set("advantages", at::randn({10, 9}) * r.mask);
  b.set("rollout_log_prob", (at::randn({10, 9}) * 0.1 - 3.0) * r.mask);
  b.set("ref_log_prob", (at::randn({10, 9}) * 0.1 - 3.0) * r.mask);
  b.set("values", at::randn({10, 9}) * r.mask);
  b.set("returns", at::randn({10, 9}) * r.mask);
  auto same = [](const core::Scalars& a, const core::Scalars& c) {
    REQUIRE(a.size() == c.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(a[i].first);
      CHECK(c[i].second == doctest::Approx(a[i].second).epsilon(1e-4).scale(1e-6));
    }
  };
  auto same_weights = [](const models::CausalLm& a, const models::CausalLm& c) {
    const auto pa = a.named_parameters(), pc = c.named_parameters();
    for (size_t i = 0; i < pa.size(); ++i) {
      CAPTURE(pa[i].first);
      CHECK((pa[i].second - pc[i].second).abs().max().item<double>() < 1e-3);  // see the test above
    }
  };
  for (const std::string loss_name : {"ppo", "sft", "dpo"}) {  // DPO: pairs (2i, 2i+1) stay together
    CAPTURE(loss_name);
    PolicyLossConfig loss;
    loss.loss = loss_name;
    // (DPO weighs micro-batches by rows, so its token means, the entropy bonus and RPO's NLL,
    // depend on which pairs share a micro-batch; its own loss does not.)
    if (loss_name != "dpo") loss.kl_loss_coef = 0.1, loss.entropy_coef = 0.01;
    models::CausalLm whole = tiny_lm(), shared = tiny_lm();
    LmOptimConfig o;
    o.lr = 1e-2, o.micro_batch = 4, o.shared_prompts = false;
    LmTrainer a(whole, o);
    o.shared_prompts = true;
    LmTrainer c(shared, o);
    same(a.update_policy(b, loss, 1), c.update_policy(b, loss, 1));
    same_weights(whole, shared);
  }
  models::CausalLm whole = tiny_lm("value"), shared = tiny_lm("value");
  LmOptimConfig o;
  o.lr = 1e-2, o.micro_batch = 4, o.shared_prompts = false;
  LmTrainer a(whole, o);
  o.shared_prompts = true;
  LmTrainer c(shared, o);
  same(a.update_critic(b, 0.2, 1), c.update_critic(b, 0.2, 1));
  same_weights(whole, shared);
}

TEST_CASE("pair_updates_keep_pairs_together") {
  models::CausalLm lm = tiny_lm("reward");
  LmOptimConfig o;
  o.lr = 1e-2, o.micro_batch = 3;  // odd: a micro-batch still holds whole pairs
  LmTrainer trainer(lm, o);
  core::Batch b;
  // Pairs (chosen, rejected) that differ in the last token.
  b.set("tokens", at::tensor(std::vector<int64_t>{1, 2, 3, 1, 2, 4, 5, 6, 3, 5, 6, 4}).view({4, 3}));
  b.set("last", at::full({4}, 2, at::kLong));
  PolicyLossConfig bt;
  bt.loss = "bradley_terry";
  double accuracy = 0;
  for (int i = 0; i < 40; ++i)
    for (const auto& [k, v] : trainer.update_policy(b, bt, 1))
      if (k == "reward_model/accuracy") accuracy = v;
  CHECK(accuracy == doctest::Approx(1.0));
  const at::Tensor r = lm.rewards(b["tokens"], b["last"]);
  CHECK(r[0].item<float>() > r[1].item<float>());
  CHECK(r[2].item<float>() > r[3].item<float>());
  CHECK_THROWS_WITH_AS(trainer.update_policy(b.slice(0, 3), bt, 1), doctest::Contains("odd number of rows"), Error);
  // A micro-batch smaller than a pair still takes whole pairs, and every pair of the batch.
  models::CausalLm small = tiny_lm("reward", 6);
  LmOptimConfig one = o;
  one.micro_batch = 1;
  LmTrainer by_pairs(small, one);
  for (int i = 0; i < 40; ++i) by_pairs.update_policy(b, bt, 1);
  const at::Tensor rs = small.rewards(b["tokens"], b["last"]);
  CHECK(rs[0].item<float>() > rs[1].item<float>());
  CHECK(rs[2].item<float>() > rs[3].item<float>());

  // DPO: raising the chosen response's log-probability against the reference.
  models::CausalLm policy = tiny_lm();
  LmTrainer dpo(policy, o);
  core::Batch d = b.select({"tokens"});
  d.set("response_mask", t2({0, 1, 0, 1, 0, 1, 0, 1}, 4));
  d.set("ref_log_prob", sequence_log_probs(policy, d["tokens"]));
  PolicyLossConfig loss;
  loss.loss = "dpo";
  double margin = 0;
  for (int i = 0; i < 20; ++i)
    for (const auto& [k, v] : dpo.update_policy(d, loss, 2))
      if (k == "actor/reward_margin") margin = v;
  CHECK(margin > 0.1);
  // With the chosen responses' NLL added (RPO), their likelihood rises as well.
  loss.dpo_nll_coef = 1.0;
  auto nll = [&] {
    for (const auto& [k, v] : dpo.update_policy(d, loss, 3))
      if (k == "actor/chosen_nll") return v;
    FAIL("no actor/chosen_nll");
    return 0.0;
  };
  const double before = nll();
  for (int i = 0; i < 10; ++i) nll();
  CHECK(nll() < before);
}

TEST_CASE("a_policy_checkpoint_loads_with_a_value_head") {
  test::TempDir dir;
  models::CausalLm lm = tiny_lm();
  lm.save(dir.path() / "m");
  models::CausalLm critic = models::CausalLm::load(dir.path() / "m", "value");
  CHECK(critic.config().head == "value");
  const at::Tensor tokens = at::tensor(std::vector<int64_t>{1, 2, 3}).view({1, 3});
  CHECK(sequence_values(critic, tokens).abs().max().item<float>() == 0.0f);  // the new head starts at zero
  auto a = lm.named_parameters(), b = critic.named_parameters();
  CHECK(at::equal(a.front().second, b.front().second));  // the body is the policy's
  CHECK_THROWS_AS(models::CausalLm::load(dir.path() / "m", "critic"), ConfigError);
}

TEST_CASE("preference_and_sft_data_from_a_verifiable_task") {
  auto xs = envs::make_text_task("addition", 50, 7);
  auto pairs = xs;
  envs::set_kind(pairs, "preference", 7);
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto& p = pairs[i];
    CHECK(p.chosen == xs[i].answer);
    REQUIRE(p.rejected.size() == p.chosen.size());
    int differ = 0;
    for (size_t k = 0; k < p.chosen.size(); ++k) differ += p.chosen[k] != p.rejected[k];
    CHECK(differ == 1);
    CHECK(envs::exact_match_reward(p.rejected, xs[i].answer) == 0.0);
  }
  envs::set_kind(xs, "sft", 7);
  CHECK(xs[0].response == xs[0].answer);
  CHECK_THROWS_AS(envs::set_kind(xs, "pairs", 7), ConfigError);
}

TEST_CASE("prompts_are_formatted_tokenized_and_limited_as_configured") {
  test::TempDir dir;
  core::write_file_atomically(dir.path() / "d.jsonl", [](std::ostream& o) {
    o << "{\"prompt\": \"short\", \"response\": \"ok\"}\n{\"prompt\": \"a much longer prompt\", \"response\": \"fine\"}\n";
  });
  auto tok = models::byte_tokenizer({"<|endoftext|>", "<|im_start|>", "<|im_end|>"});
  actors::lm::DataConfig c;
  c.eos = "<|im_end|>";
  c.format = "chat";
  c.chat_template = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n";
  c.system = "Be brief.";
  actors::lm::Formatter chat(c, *tok);
  CHECK(chat.prompt_text("hi") ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  const int32_t im_start = *tok->token_id("<|im_start|>");
  c.system.clear();
  c.max_prompt_tokens = 30;  // the chat wrapping takes 19 tokens: "short" fits, the longer one does not
  actors::lm::Dataset filtered = chat.load((dir.path() / "d.jsonl").string(), "sft");
  CHECK(filtered.read == 2);
  CHECK(filtered.filtered == 1);
  REQUIRE(filtered.examples.size() == 1);
  CHECK(filtered.examples[0].prompt.front() == im_start);  // the special is one token
  CHECK(filtered.examples[0].response.back() == chat.eos());
  CHECK(chat.decode_response(filtered.examples[0].response) == "ok");
  c.overlong_prompts = "truncate";
  actors::lm::Dataset truncated = chat.load((dir.path() / "d.jsonl").string(), "sft");
  CHECK(truncated.truncated == 1);
  REQUIRE(truncated.examples.size() == 2);
  CHECK(truncated.examples[1].prompt.size() == 30u);
  const std::string kept = tok->decode(truncated.examples[1].prompt);
  CHECK(kept.substr(kept.size() - 10) == "assistant\n");  // the end is kept, the start cut
  CHECK(truncated.examples[1].prompt.front() != im_start);
  c.overlong_prompts = "error";
  CHECK_THROWS_WITH_AS(chat.load((dir.path() / "d.jsonl").string(), "sft"), doctest::Contains("example 2"), ConfigError);
  c.eos = "</s>";
  CHECK_THROWS_WITH_AS(actors::lm::Formatter(c, *tok), doctest::Contains("not a single token"), ConfigError);

  // The sampler: every example once per epoch, in an order that depends on the seed and the epoch.
  actors::lm::Sampler s(5, 9);
  std::vector<int64_t> first = s.next(5), second = s.next(5);
  CHECK(std::set<int64_t>(first.begin(), first.end()).size() == 5);
  CHECK(std::set<int64_t>(second.begin(), second.end()).size() == 5);
  actors::lm::Sampler again(5, 9);
  again.restore(s.state());
  CHECK((again.next(3) == s.next(3)));
}

// ---- the asynchronous sample stream's bookkeeping (controller/programs/rlhf_stream.hpp) ----

namespace {
using controller::GroupLedger;
// Example indices 100, 101, ... in order.
struct Counting {
  int64_t next = 100;
  std::vector<int64_t> operator()(int64_t k) {
    std::vector<int64_t> out;
    for (int64_t i = 0; i < k; ++i) out.push_back(next++);
    return out;
  }
};
}  // namespace

TEST_CASE("group_ledger_places_and_seeds_groups_as_the_synchronous_generate_call") {
  // 5 prompts per step over 2 rollout ranks: data-parallel chunks of 3 and 2, and within a chunk
  // the seed advances by n per prompt from the step's base, as rollout.generate seeds them.
  GroupLedger ledger(Staleness(1, 5), 4, 2, 0, 1000);
  Counting examples;
  const auto groups = ledger.admit(0, std::ref(examples));
  REQUIRE(groups.size() == 10);  // bound 1: this version's batch and the next one's
  const std::vector<int64_t> rank = {0, 0, 0, 1, 1, 0, 0, 0, 1, 1};
  const std::vector<uint64_t> seed = {1001, 1005, 1009, 1001, 1005, 1002, 1006, 1010, 1002, 1006};
  for (size_t i = 0; i < groups.size(); ++i) {
    CAPTURE(i);
    CHECK(groups[i].id == static_cast<int64_t>(i));
    CHECK(groups[i].example == 100 + static_cast<int64_t>(i));
    CHECK(groups[i].admitted == 0);
    CHECK(groups[i].rank == rank[i]);
    CHECK(groups[i].seed == seed[i]);
  }
  CHECK(ledger.admit(0, std::ref(examples)).empty());
  CHECK(ledger.running() == 10);
}

TEST_CASE("group_ledger_takes_batches_in_admission_order_within_the_bound") {
  Counting examples;
  // Staleness 0 is synchronous: one batch at a time, taken only when all of it has finished.
  GroupLedger sync(Staleness(0, 3), 2, 1, 0, 0);
  CHECK(sync.admit(0, std::ref(examples)).size() == 3);
  CHECK(sync.admit(0, std::ref(examples)).empty());
  sync.finished(2, 0);
  sync.finished(0, 0);
  CHECK(sync.take(0).empty());
  sync.finished(1, 0);
  const auto batch = sync.take(0);
  REQUIRE(batch.size() == 3);
  for (int64_t i = 0; i < 3; ++i) CHECK(batch[static_cast<size_t>(i)].id == i);  // admission order
  CHECK(sync.admit(1, std::ref(examples)).size() == 3);
  CHECK_THROWS_AS(sync.finished(0, 0), Error);  // already taken
  CHECK_THROWS_AS(sync.finished(99, 0), Error);

  // Bound 1: groups of the same admission may train in either order, but a batch is not taken
  // while older groups that are due now still run.
  GroupLedger one(Staleness(1, 2), 1, 1, 0, 0);
  CHECK(one.admit(0, std::ref(examples)).size() == 4);  // ids 0-3, admitted at version 0
  one.finished(2, 0);
  one.finished(3, 0);
  auto b = one.take(0);  // 0 and 1 can still train version 1
  REQUIRE(b.size() == 2);
  CHECK(b[0].id == 2);
  CHECK(b[1].id == 3);
  CHECK(one.admit(1, std::ref(examples)).size() == 2);  // ids 4, 5
  one.finished(5, 1);
  one.finished(4, 1);
  CHECK(one.take(1).empty());  // 0 and 1 are due at version 1 and still generating
  one.finished(1, 0);
  one.finished(0, 0);
  b = one.take(1);
  REQUIRE(b.size() == 2);
  CHECK(b[0].id == 0);
  CHECK(b[1].id == 1);
  CHECK(one.take(2).size() == 2);
  // The in-flight cap holds admissions below what the bound allows.
  GroupLedger capped(Staleness(4, 2), 1, 1, 3, 0);
  CHECK(capped.admit(0, std::ref(examples)).size() == 3);
  capped.finished(0, 0);
  CHECK(capped.admit(0, std::ref(examples)).size() == 1);
  CHECK_THROWS_AS(GroupLedger(Staleness(0, 2), 0, 1, 0, 0), Error);
}

TEST_CASE("group_ledger_state_holds_the_counter_and_finished_groups") {
  Counting examples;
  GroupLedger a(Staleness(1, 2), 1, 1, 0, 0);
  a.admit(0, std::ref(examples));
  CHECK_THROWS_AS(a.state(), Error);  // groups are generating
  for (int64_t i = 0; i < 4; ++i) a.finished(i, i / 2);
  a.take(0);
  const nlohmann::json s = a.state();
  GroupLedger b(Staleness(1, 2), 1, 1, 0, 0);
  b.restore(s);
  CHECK(b.submitted() == 4);
  CHECK(b.ready() == 2);
  CHECK_THROWS_AS(b.restore(s), Error);  // only into an empty ledger
  const auto batch = b.take(1);
  REQUIRE(batch.size() == 2);
  CHECK(batch[0].id == 2);
  CHECK(batch[0].oldest == 1);
  CHECK(batch[1].example == 103);
}

TEST_CASE("group_ledger_never_trains_past_the_bound_with_skewed_rollouts") {
  // A simulated run over the ledger: 3 rollout ranks, one 20 times slower than another, long-tailed
  // generation times, each rank working its queue in order with the weights current when a group
  // starts; the trainer takes a batch whenever the ledger gives one. 10,200 groups are trained per
  // bound; none may be staler than the bound, counted from its oldest token.
  std::mt19937_64 rng(11);
  std::lognormal_distribution<double> length(0.0, 1.0);
  const std::vector<double> speed = {1.0, 0.25, 0.05};
  for (int64_t max : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{4}, Staleness::kUnbounded}) {
    CAPTURE(max);
    const int64_t batch = 6, versions = 1700;
    GroupLedger ledger(Staleness(max, batch), 2, 3, 0, 0);
    Counting examples;
    std::vector<std::deque<GroupLedger::Group>> queue(3);
    std::vector<double> free_at(3, 0.0);
    // (finish time, id, made-by version) of what is generating
    std::multimap<double, std::pair<int64_t, int64_t>> generating;
    std::vector<bool> busy(3, false);
    int64_t version = 0, worst = 0, trained = 0;
    double now = 0;
    while (version < versions) {
      for (const auto& g : ledger.admit(version, std::ref(examples))) queue[static_cast<size_t>(g.rank)].push_back(g);
      for (size_t r = 0; r < 3; ++r)
        if (!busy[r] && !queue[r].empty()) {
          const auto g = queue[r].front();
          queue[r].pop_front();
          busy[r] = true;
          generating.insert({now + length(rng) / speed[r], {g.id * 8 + static_cast<int64_t>(r), version}});
        }
      auto batch_groups = ledger.take(version);
      if (!batch_groups.empty()) {
        for (const auto& g : batch_groups) worst = std::max(worst, version - g.oldest);
        trained += static_cast<int64_t>(batch_groups.size());
        ++version;
        continue;
      }
      if (generating.empty()) FAIL("nothing to train and nothing generating: the stream is stuck at version " << version);
      const auto next = generating.begin();
      now = next->first;
      const int64_t id = next->second.first / 8, r = next->second.first % 8;
      ledger.finished(id, next->second.second);
      busy[static_cast<size_t>(r)] = false;
      generating.erase(next);
    }
    CHECK(trained == versions * batch);
    if (max >= 0) CHECK(worst <= max);
    if (max > 0) CHECK(worst >= 1);  // the bound was used, not only respected by never going async
  }
}
