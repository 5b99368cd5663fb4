#include "algorithms/lm_trainer.hpp"

#include <torch/torch.h>

#include <map>

#include "algorithms/adam_state.hpp"
#include "algorithms/lm_batches.hpp"
#include "algorithms/lm_losses.hpp"
#include "core/error.hpp"
#include "models/transformer.hpp"

namespace flotilla::algorithms {
namespace {

// Log-softmax at the log-prob positions, and the log-probs of each row's next tokens from it.
at::Tensor position_log_softmax(const at::Tensor& logits) { return at::log_softmax(logits.slice(1, 0, -1), -1); }
at::Tensor next_token_log_probs(const at::Tensor& lsm, const at::Tensor& tokens) {
  return lsm.gather(2, tokens.slice(1, 1).unsqueeze(2)).squeeze(2);
}

// `f` over the rows of `tokens`, `micro` at a time, without gradients, concatenated along the
// rows; `empty` when there are none (a data-parallel rank's empty chunk).
template <class F>
at::Tensor in_micro_batches(const at::Tensor& tokens, int64_t micro, at::Tensor empty, F f) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  const int64_t rows = tokens.size(0);
  for (int64_t b = 0; b < rows; b += micro) parts.push_back(f(b, std::min(rows, b + micro)));
  return parts.empty() ? empty : at::cat(parts);
}

at::Tensor no_positions(const at::Tensor& tokens) { return at::zeros({0, std::max<int64_t>(tokens.size(1) - 1, 0)}); }

}  // namespace

LmOptimConfig LmOptimConfig::read(core::ConfigView s, double default_lr) {
  LmOptimConfig c;
  c.lr = s.get<double>("lr", default_lr, core::greater_than(0.0));
  c.max_grad_norm = s.get<double>("max_grad_norm", 1.0, core::at_least(0.0));
  c.epochs = s.get<int>("epochs", 1, core::in_range(1, 1000));
  c.mini_batches = s.get<int>("mini_batches", 1, core::in_range(1, 100000));
  c.micro_batch = s.get<int64_t>("micro_batch", 16, core::at_least<int64_t>(1));
  c.shared_prompts = s.get<bool>("shared_prompts", true);
  return c;
}

using Axis = TrainingGroup::Axis;

struct LmTrainer::Impl {
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::Adam> adam;  // over params, or over `master` under fsdp
  TrainingGroup* group = nullptr;
  std::vector<bool> replicated;  // held whole by every tensor-parallel rank: counted once in the norm
  // fsdp: this rank's chunk of the flat parameters (Adam steps it), which of its elements belong
  // to replicated parameters, the flat size and the chunk size.
  torch::Tensor master, master_replicated;
  int64_t flat = 0, chunk = 0;

  int size(Axis a) const { return group ? group->size(a) : 1; }

  torch::Tensor flat_grads() const {
    std::vector<torch::Tensor> g;
    for (const auto& p : params) g.push_back(p.grad().reshape({-1}));
    return torch::cat(g);
  }

  // The gradients of a mini-batch in place, summed over the ranks as one process would have
  // them, clipped, and Adam's step; returns the norm before clipping and this rank's share of the
  // mini-batch's weight.
  struct Stepped {
    double norm = 0, share = 1;
  };
  Stepped step(double weight, double max_norm, models::CausalLm& model) {
    for (auto& p : params)
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    if (!group) {  // one process: exactly as libtorch clips and steps
      const double norm = torch::nn::utils::clip_grad_norm_(params, max_norm > 0 ? max_norm : 1e30);
      adam->step();
      return {norm, 1.0};
    }
    torch::NoGradGuard no_grad;
    model.reduce_tensor_parallel_gradients();
    double share = 1;
    if (size(Axis::Data) > 1) {  // each data rank's mean gradient counts by its share of the rows or tokens
      torch::Tensor w = torch::full({1}, weight, torch::kDouble);
      group->sum(w, Axis::Data);
      const double total = w.item<double>();
      share = total > 0 ? weight / total : 0.0;
      for (auto& p : params) p.mutable_grad().mul_(share);
    }
    if (size(Axis::Fsdp) == 1) {
      if (size(Axis::Data) > 1) {
        torch::Tensor g = flat_grads();
        group->sum(g, Axis::Data);
        int64_t at = 0;
        for (auto& p : params) {
          p.mutable_grad().copy_(g.narrow(0, at, p.numel()).view_as(p));
          at += p.numel();
        }
      }
      torch::Tensor split = torch::zeros({1}, torch::kDouble), whole = torch::zeros({1}, torch::kDouble);
      for (size_t i = 0; i < params.size(); ++i) (replicated[i] ? whole : split) += params[i].grad().pow(2).sum().to(torch::kDouble);
      if (size(Axis::Tp) > 1) group->sum(split, Axis::Tp);
      const double norm = std::sqrt((split + whole).item<double>());
      const double coef = (max_norm > 0 ? max_norm : 1e30) / (norm + 1e-6);
      if (coef < 1)
        for (auto& p : params) p.mutable_grad().mul_(coef);
      adam->step();
      return {norm, share};
    }
    // fsdp: the gradient reduce-scattered to chunks (and summed over replicas), Adam on the chunk,
    // the chunks gathered back into the parameters.
    const int shards = size(Axis::Fsdp);
    torch::Tensor g = torch::constant_pad_nd(flat_grads(), {0, chunk * shards - flat}, 0);
    torch::Tensor mine = group->reduce_scatter(g);
    if (size(Axis::Dp) > 1) group->sum(mine, Axis::Dp);
    torch::Tensor sq = torch::stack({mine.masked_fill(master_replicated, 0).pow(2).sum(), mine.masked_fill(~master_replicated, 0).pow(2).sum()})
                           .to(torch::kDouble);
    group->sum(sq, Axis::Fsdp);
    torch::Tensor split = sq.narrow(0, 0, 1).clone();
    if (size(Axis::Tp) > 1) group->sum(split, Axis::Tp);
    const double norm = std::sqrt(split.item<double>() + sq[1].item<double>());
    const double coef = (max_norm > 0 ? max_norm : 1e30) / (norm + 1e-6);
    if (coef < 1) mine.mul_(coef);
    master.mutable_grad() = mine;
    adam->step();
    const torch::Tensor all = group->all_gather(master.detach());
    int64_t at = 0;
    for (auto& p : params) {
      p.copy_(all.narrow(0, at, p.numel()).view_as(p));
      at += p.numel();
    }
    return {norm, share};
  }

  // Statistics of this rank's rows, each already weighted by the rank's share, summed over the
  // data ranks into the whole batch's. A rank that had no rows has no statistics and adds zeros.
  void sum_over_data_ranks(core::Scalars& stats) {
    if (!group || size(Axis::Data) == 1) return;
    torch::Tensor counts = torch::tensor({static_cast<double>(stats.size()), stats.empty() ? 0.0 : 1.0}, torch::kDouble);
    group->sum(counts, Axis::Data);
    const auto reporting = static_cast<size_t>(counts[1].item<double>());
    const size_t n = reporting ? static_cast<size_t>(counts[0].item<double>()) / reporting : 0;
    if (n * reporting != static_cast<size_t>(counts[0].item<double>()) || (!stats.empty() && stats.size() != n))
      throw Error("the data ranks of an update report different statistics (" + std::to_string(stats.size()) + " here)");
    torch::Tensor values = torch::zeros({static_cast<int64_t>(n)}, torch::kDouble);
    for (size_t i = 0; i < stats.size(); ++i) values[static_cast<int64_t>(i)] = stats[i].second;
    group->sum(values, Axis::Data);
    for (size_t i = 0; i < stats.size(); ++i) stats[i].second = values[static_cast<int64_t>(i)].item<double>();
  }
};

LmTrainer::LmTrainer(models::CausalLm& model, LmOptimConfig optim)
    : impl_(std::make_unique<Impl>()), model_(model), optim_(optim) {
  for (auto& [name, p] : model.named_parameters()) impl_->params.push_back(p);
  impl_->adam = std::make_unique<torch::optim::Adam>(impl_->params, torch::optim::AdamOptions(optim.lr));
}

LmTrainer::~LmTrainer() = default;

void LmTrainer::set_group(TrainingGroup* group) {
  Impl& m = *impl_;
  m.group = group;
  m.replicated.clear();
  const models::TensorParallel& tp = model_.tensor_parallel();
  std::vector<torch::Tensor> marks;
  for (auto& [name, p] : model_.named_parameters()) {
    const bool whole = tp.size > 1 && models::tensor_parallel_dim(name, tp.vocab_parallel) < 0;
    m.replicated.push_back(whole);
    marks.push_back(torch::full({p.numel()}, whole, torch::kBool));
  }
  if (!group || group->size(Axis::Fsdp) == 1) {
    m.master = torch::Tensor();
    m.adam = std::make_unique<torch::optim::Adam>(m.params, torch::optim::AdamOptions(optim_.lr));
    return;
  }
  // This rank's chunk of the flat parameters, as runtime::Layout cuts it: chunks of
  // ceil(flat / shards), the last one shorter (padded here with zeros that never change).
  const int shards = group->size(Axis::Fsdp), r = group->rank(Axis::Fsdp);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> flat;
  for (const auto& p : m.params) flat.push_back(p.detach().reshape({-1}));
  const torch::Tensor all = torch::cat(flat), mark = torch::cat(marks);
  m.flat = all.numel();
  m.chunk = (m.flat + shards - 1) / shards;
  m.master = torch::constant_pad_nd(all, {0, m.chunk * shards - m.flat}, 0).narrow(0, r * m.chunk, m.chunk).clone();
  m.master_replicated = torch::constant_pad_nd(mark, {0, m.chunk * shards - m.flat}, 0).narrow(0, r * m.chunk, m.chunk).clone();
  m.adam = std::make_unique<torch::optim::Adam>(std::vector<torch::Tensor>{m.master}, torch::optim::AdamOptions(optim_.lr));
}

namespace {

// A micro-batch's share of its mini-batch, by rows and by response tokens (where there is a mask).
struct Share {
  double rows = 1, tokens = 1;
};

// Runs `epochs` passes of `mini_batches` optimizer steps over the batch; `loss_of(micro, share,
// stats)` returns a micro-batch's loss weighted by its share of the mini-batch, and adds its
// statistics, which are weighted the same way (by response tokens when `token_stats`, else by
// rows) into a mini-batch's figure, averaged over the optimizer steps. Over several data ranks
// (`step` returns each rank's share of the mini-batch) the figures are the whole batch's. Rows stay in groups of
// `row_group` (DPO and reward-model pairs) when shuffled and split, micro-batches included. With
// more than one micro-batch per mini-batch, micro-batches are made of rows of similar length, each
// cut to its longest row.
template <class Impl, class LossOf>
core::Scalars train_loop(const core::Batch& batch, const LmOptimConfig& o, uint64_t seed, Impl& impl,
                         models::CausalLm& model, const std::string& prefix, LossOf loss_of, bool token_stats,
                         int64_t row_group = 1) {
  std::vector<torch::Tensor>& params = impl.params;
  if (batch.size() % row_group)
    throw Error("a batch of pairs has an odd number of rows (" + std::to_string(batch.size()) + ")");
  std::map<std::string, double> sums;
  double grad_norm = 0;
  int64_t steps = 0;
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t groups = batch.size() / row_group;
  for (int e = 0; e < o.epochs; ++e) {
    // Shuffle whole groups (a DPO pair stays together).
    at::Tensor order = torch::randperm(groups, gen, torch::kLong);
    if (row_group > 1)
      order = (order.unsqueeze(1) * row_group + torch::arange(row_group, torch::kLong)).reshape({-1});
    const core::Batch shuffled = batch.size() ? batch.index(order) : batch;
    std::vector<int64_t> sizes = core::chunk_sizes(groups, o.mini_batches);
    for (auto& n : sizes) n *= row_group;
    const int64_t micro = std::max(row_group, o.micro_batch - o.micro_batch % row_group);
    for (const core::Batch& shuffled_mini : shuffled.split(sizes)) {
      for (auto& p : params)
        if (p.grad().defined()) p.mutable_grad().zero_();
      const int64_t rows = shuffled_mini.size();
      const core::Batch mini = rows > micro ? (o.shared_prompts ? by_prompt : by_length)(shuffled_mini, row_group) : shuffled_mini;
      const bool masked = mini.contains("response_mask");
      const double mini_tokens = masked ? std::max(1.0, mini["response_mask"].sum().item<double>()) : 1.0;
      std::map<std::string, double> mini_sums;
      for (int64_t begin = 0; begin < rows; begin += micro) {
        core::Batch part = cut_to_longest(mini.slice(begin, std::min(rows, begin + micro)));
        if (o.shared_prompts) part = response_window(part);
        const Share share{static_cast<double>(part.size()) / static_cast<double>(rows),
                          masked ? part["response_mask"].sum().item<double>() / mini_tokens : 1.0};
        core::Scalars stats;
        torch::Tensor loss = loss_of(part, share, stats);
        loss.backward();
        const double weight = token_stats && masked ? share.tokens : share.rows;
        for (const auto& [k, v] : stats) mini_sums[k] += v * weight;
      }
      // A rank with an empty part still takes part in the collectives, with zero gradients and
      // a weight of zero.
      const double weight = token_stats && masked ? mini["response_mask"].sum().item<double>() : static_cast<double>(rows);
      const auto stepped = impl.step(weight, o.max_grad_norm, model);
      for (const auto& [k, v] : mini_sums) sums[k] += v * stepped.share;
      grad_norm += stepped.norm;
      ++steps;
    }
  }
  // Gradient buffers are freed between updates, so a colocated rollout does not generate next to
  // them.
  for (auto& p : params) p.mutable_grad().reset();
  core::Scalars out;
  for (const auto& [k, v] : sums) out.push_back({k, v / std::max<int64_t>(steps, 1)});
  impl.sum_over_data_ranks(out);
  out.push_back({prefix + "/grad_norm", grad_norm / std::max<int64_t>(steps, 1)});
  return out;
}

}  // namespace

namespace {

// A micro-batch's log-softmax at the log-prob positions and its tokens' log-probabilities.
struct TokenLogProbs {
  at::Tensor lsm, lp;
};
// In the response window of `starts` (response_window()).
TokenLogProbs window_log_probs(models::CausalLm& model, const at::Tensor& tokens, const at::Tensor& starts) {
  const at::Tensor lsm = at::log_softmax(model.response_logits(tokens, starts), -1);
  const at::Tensor next = tokens.gather(1, (starts.unsqueeze(1) + at::arange(lsm.size(1), at::kLong)).clamp_max(tokens.size(1) - 1));
  return {lsm, lsm.gather(2, next.unsqueeze(2)).squeeze(2)};
}

TokenLogProbs token_log_probs(models::CausalLm& model, const core::Batch& micro) {
  const at::Tensor& tokens = micro["tokens"];
  if (micro.contains("window_start")) return window_log_probs(model, tokens, micro["window_start"]);
  const at::Tensor lsm = position_log_softmax(model.forward(tokens));
  return {lsm, next_token_log_probs(lsm, tokens)};
}

// The entropy of the policy over the response tokens (a metric, and a bonus when configured).
at::Tensor with_entropy(at::Tensor loss, const at::Tensor& lsm, const at::Tensor& mask, const PolicyLossConfig& c,
                        core::Scalars& stats) {
  const at::Tensor ent = masked_mean(-(lsm.exp() * lsm).sum(-1), mask);
  if (c.entropy_coef > 0) loss = loss - c.entropy_coef * ent;
  stats.push_back({"actor/entropy", ent.item<double>()});
  return loss;
}

at::Tensor sft_policy_loss(models::CausalLm& model, const core::Batch& micro, const PolicyLossConfig& c, core::Scalars& stats) {
  const at::Tensor& mask = micro["response_mask"];
  const TokenLogProbs t = token_log_probs(model, micro);
  const at::Tensor loss = sft_loss(t.lp, mask);
  stats.push_back({"actor/sft_loss", loss.item<double>()});
  return with_entropy(loss, t.lsm, mask, c, stats);
}

// Pairs are rows 2i (chosen) and 2i+1 (rejected).
at::Tensor dpo_policy_loss(models::CausalLm& model, const core::Batch& micro, const PolicyLossConfig& c, core::Scalars& stats) {
  const at::Tensor& mask = micro["response_mask"];
  const TokenLogProbs t = token_log_probs(model, micro);
  const at::Tensor seq = (t.lp * mask).sum(1), ref = (micro["ref_log_prob"] * mask).sum(1);
  const at::Tensor chosen = seq.slice(0, 0, {}, 2), rejected = seq.slice(0, 1, {}, 2);
  const at::Tensor ref_c = ref.slice(0, 0, {}, 2), ref_r = ref.slice(0, 1, {}, 2);
  at::Tensor loss = dpo_loss(chosen, rejected, ref_c, ref_r, c.dpo_beta, c.dpo_kind, c.label_smoothing);
  if (c.dpo_nll_coef > 0) {
    // RPO: the chosen responses' token NLL keeps DPO from lowering both likelihoods.
    const at::Tensor nll = sft_loss(t.lp.slice(0, 0, {}, 2), mask.slice(0, 0, {}, 2));
    loss = loss + c.dpo_nll_coef * nll;
    stats.push_back({"actor/chosen_nll", nll.item<double>()});
  }
  {
    torch::NoGradGuard ng;
    const at::Tensor margin = ((chosen - ref_c) - (rejected - ref_r)) * c.dpo_beta;
    stats.push_back({"actor/dpo_loss", loss.item<double>()});
    stats.push_back({"actor/reward_accuracy", (margin > 0).to(at::kFloat).mean().item<double>()});
    stats.push_back({"actor/reward_margin", margin.mean().item<double>()});
  }
  return with_entropy(loss, t.lsm, mask, c, stats);
}

at::Tensor ppo_policy_loss(models::CausalLm& model, const core::Batch& micro, const PolicyLossConfig& c, core::Scalars& stats) {
  const at::Tensor& mask = micro["response_mask"];
  const TokenLogProbs t = token_log_probs(model, micro);
  // Without old log-probs the batch is one optimizer step: the policy before it is this one.
  at::Tensor old = micro.contains("old_log_prob") ? micro["old_log_prob"] : t.lp.detach(), weight;
  if (micro.contains("rollout_log_prob")) {
    const at::Tensor& behaviour = micro["rollout_log_prob"];
    if (c.off_policy == "plain") old = behaviour;
    else if (c.off_policy == "decoupled") weight = behaviour_weight(old, behaviour, c.is_cap);
    else throw ConfigError("off-policy objective '" + c.off_policy + "' is not one of decoupled, plain");
    if (weight.defined()) {
      torch::NoGradGuard ng;
      stats.push_back({"actor/behaviour_weight/mean", masked_mean(weight, mask).item<double>()});
      stats.push_back({"actor/behaviour_weight/capped", masked_mean((weight >= c.is_cap).to(weight.scalar_type()), mask).item<double>()});
    }
  }
  LmPolicyLoss pl = ppo_token_loss(t.lp, old, micro["advantages"], mask, c.clip_low, c.clip_high, c.aggregation, weight);
  at::Tensor loss = pl.loss;
  stats.push_back({"actor/pg_loss", pl.loss.item<double>()});
  stats.push_back({"actor/pg_clipfrac", pl.clipfrac.item<double>()});
  stats.push_back({"actor/ppo_kl", pl.approx_kl.item<double>()});
  if (c.kl_loss_coef > 0) {
    const at::Tensor kl = masked_mean(kl_estimate(t.lp, micro["ref_log_prob"], c.kl_estimator), mask);
    loss = loss + c.kl_loss_coef * kl;
    stats.push_back({"actor/kl_loss", kl.item<double>()});
  }
  return with_entropy(loss, t.lsm, mask, c, stats);
}

// A reward model's loss on pairs (rows 2i chosen, 2i+1 rejected) scored at each row's `last` token.
at::Tensor bradley_terry_loss(models::CausalLm& model, const core::Batch& micro, const PolicyLossConfig&, core::Scalars& stats) {
  const at::Tensor r = model.rewards(micro["tokens"], micro["last"]);
  const at::Tensor margin = r.slice(0, 0, {}, 2) - r.slice(0, 1, {}, 2);
  const at::Tensor loss = -at::log_sigmoid(margin).mean();
  stats.push_back({"reward_model/loss", loss.item<double>()});
  stats.push_back({"reward_model/accuracy", (margin > 0).to(at::kFloat).mean().item<double>()});
  stats.push_back({"reward_model/margin", margin.detach().mean().item<double>()});
  return loss;
}

}  // namespace

core::Registry<PolicyLoss>& policy_losses() {
  static core::Registry<PolicyLoss> r("policy loss", [](auto& r) {
    r.add("ppo", {ppo_policy_loss, 1, true, "actor"});
    r.add("sft", {sft_policy_loss, 1, true, "actor"});
    r.add("dpo", {dpo_policy_loss, 2, false, "actor"});
    r.add("bradley_terry", {bradley_terry_loss, 2, false, "reward_model"});
  });
  return r;
}

core::Scalars LmTrainer::update_policy(const core::Batch& batch, const PolicyLossConfig& c, uint64_t seed) {
  const PolicyLoss& l = policy_losses().at(c.loss);
  const bool by_tokens = l.token_weighted && c.aggregation == "token-mean";
  auto loss_of = [&](const core::Batch& micro, Share share, core::Scalars& stats) {
    return l.loss(model_, micro, c, stats) * (by_tokens ? share.tokens : share.rows);
  };
  return train_loop(batch, optim_, seed, *impl_, model_, l.prefix, loss_of, by_tokens, l.row_group);
}

core::Scalars LmTrainer::update_critic(const core::Batch& batch, double clip, uint64_t seed) {
  auto loss_of = [&](const core::Batch& micro, Share share, core::Scalars& stats) {
    const at::Tensor& mask = micro["response_mask"];
    const at::Tensor v = micro.contains("window_start") ? model_.response_scores(micro["tokens"], micro["window_start"])
                                                         : model_.scores(micro["tokens"]).slice(1, 0, -1);
    const at::Tensor old = micro["values"], ret = micro["returns"];
    const at::Tensor clipped = old + (v - old).clamp(-clip, clip);
    const at::Tensor l1 = (v - ret).pow(2), l2 = (clipped - ret).pow(2);
    const torch::Tensor loss = 0.5 * masked_mean(at::max(l1, l2), mask);
    stats.push_back({"critic/vf_loss", loss.item<double>()});
    // Tokens whose value moved past the clip and whose clipped loss is the larger: where clipping
    // decided the loss. (l2 > l1 alone also counts unclipped tokens by a rounding of old + (v - old).)
    const at::Tensor decided = ((v - old).abs() > clip) & (l2 > l1);
    stats.push_back({"critic/vf_clipfrac", masked_mean(decided.to(at::kFloat), mask).item<double>()});
    stats.push_back({"critic/vpred_mean", masked_mean(v.detach(), mask).item<double>()});
    return loss * share.tokens;
  };
  return train_loop(batch, optim_, seed, *impl_, model_, "critic", loss_of, true);
}

std::vector<std::pair<std::string, at::Tensor>> LmTrainer::state() const {
  return impl_->master.defined() ? adam_state(*impl_->adam, {impl_->master}) : adam_state(*impl_->adam, impl_->params);
}

LmTrainer::FlatState LmTrainer::flat_state() const {
  const Impl& m = *impl_;
  const std::vector<torch::Tensor> params = m.master.defined() ? std::vector<torch::Tensor>{m.master} : m.params;
  auto& states = const_cast<torch::optim::Adam&>(*m.adam).state();
  FlatState out;
  std::vector<torch::Tensor> avg, sq;
  for (const auto& p : params) {
    auto it = states.find(c10::guts::to_string(p.unsafeGetTensorImpl()));
    if (it == states.end()) return {};  // no step taken yet
    auto& s = static_cast<torch::optim::AdamParamState&>(*it->second);
    avg.push_back(s.exp_avg().reshape({-1}));
    sq.push_back(s.exp_avg_sq().reshape({-1}));
    out.step = s.step();
  }
  out.exp_avg = torch::cat(avg);
  out.exp_avg_sq = torch::cat(sq);
  if (m.master.defined()) {  // the chunk without its padding
    const int64_t local = std::clamp<int64_t>(m.flat - m.group->rank(Axis::Fsdp) * m.chunk, 0, m.chunk);
    out.exp_avg = out.exp_avg.narrow(0, 0, local).clone();
    out.exp_avg_sq = out.exp_avg_sq.narrow(0, 0, local).clone();
  }
  return out;
}

void LmTrainer::load_flat_state(const FlatState& s) {
  Impl& m = *impl_;
  if (!s.exp_avg.defined()) return;
  const std::vector<torch::Tensor> params = m.master.defined() ? std::vector<torch::Tensor>{m.master} : m.params;
  int64_t total = 0;
  for (const auto& p : params) total += p.numel();
  const int64_t given = s.exp_avg.numel();
  if (given > total || (!m.master.defined() && given != total))
    throw FormatError("optimizer state of " + std::to_string(given) + " elements for a rank holding " + std::to_string(total));
  auto padded = [&](const at::Tensor& t) { return torch::constant_pad_nd(t.reshape({-1}).to(torch::kFloat), {0, total - given}, 0); };
  const torch::Tensor avg = padded(s.exp_avg), sq = padded(s.exp_avg_sq);
  auto& states = m.adam->state();
  int64_t at = 0;
  for (const auto& p : params) {
    auto st = std::make_unique<torch::optim::AdamParamState>();
    st->step(s.step);
    st->exp_avg(avg.narrow(0, at, p.numel()).view_as(p).clone());
    st->exp_avg_sq(sq.narrow(0, at, p.numel()).view_as(p).clone());
    states[c10::guts::to_string(p.unsafeGetTensorImpl())] = std::move(st);
    at += p.numel();
  }
}

void LmTrainer::parameters_replaced() {
  Impl& m = *impl_;
  if (!m.master.defined()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> flat;
  for (const auto& p : m.params) flat.push_back(p.detach().reshape({-1}));
  const int shards = m.group->size(Axis::Fsdp), r = m.group->rank(Axis::Fsdp);
  m.master.copy_(torch::constant_pad_nd(torch::cat(flat), {0, m.chunk * shards - m.flat}, 0).narrow(0, r * m.chunk, m.chunk));
}

void LmTrainer::load_state(const std::map<std::string, at::Tensor>& tensors) {
  if (impl_->master.defined()) load_adam_state(*impl_->adam, {impl_->master}, tensors);
  else load_adam_state(*impl_->adam, impl_->params, tensors);
}

at::Tensor sequence_log_probs(models::CausalLm& model, const at::Tensor& tokens, int64_t micro_batch, const at::Tensor& response_mask) {
  return in_micro_batches(tokens, micro_batch, no_positions(tokens), [&](int64_t b, int64_t e) {
    const at::Tensor t = tokens.slice(0, b, e);
    if (!response_mask.defined() || t.size(1) < 2) return next_token_log_probs(position_log_softmax(model.forward(t)), t);
    const at::Tensor starts = response_starts(response_mask.slice(0, b, e));
    return from_response_window(window_log_probs(model, t, starts).lp, starts, t.size(1));
  });
}

at::Tensor sequence_values(models::CausalLm& model, const at::Tensor& tokens, int64_t micro_batch, const at::Tensor& response_mask) {
  return in_micro_batches(tokens, micro_batch, no_positions(tokens), [&](int64_t b, int64_t e) {
    const at::Tensor t = tokens.slice(0, b, e);
    if (!response_mask.defined() || t.size(1) < 2) return model.scores(t).slice(1, 0, -1);
    const at::Tensor starts = response_starts(response_mask.slice(0, b, e));
    return from_response_window(model.response_scores(t, starts), starts, t.size(1));
  });
}

at::Tensor sequence_rewards(models::CausalLm& model, const at::Tensor& tokens, const at::Tensor& last, int64_t micro_batch) {
  return in_micro_batches(tokens, micro_batch, at::zeros({0}),
                          [&](int64_t b, int64_t e) { return model.rewards(tokens.slice(0, b, e), last.slice(0, b, e)); });
}

}  // namespace flotilla::algorithms
