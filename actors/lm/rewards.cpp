#include "actors/lm/rewards.hpp"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "algorithms/lm_trainer.hpp"
#include "core/error.hpp"
#include "envs/text_tasks.hpp"
#include "models/transformer.hpp"

namespace flotilla::actors::lm {
namespace {

double rule_score(const RewardConfig& r, const std::string& response, const std::string& answer, int64_t tokens) {
  double s = r.rule == "numeric"      ? envs::numeric_match_reward(response, answer)
             : r.rule == "similarity" ? envs::similarity_reward(response, answer)
                                      : envs::exact_match_reward(response, answer);
  if (r.format_weight > 0) s += r.format_weight * envs::format_reward(response, r.format);
  if (r.length_coef > 0) s += envs::length_penalty(tokens, r.length_limit, r.length_coef);
  return s;
}

}  // namespace

Scorer::Scorer(const RlhfConfig& c, models::CausalLm* reward_model)
    : c_(c), reward_model_(reward_model), tokenizer_(models::load_tokenizer(c.tokenizer.empty() ? c.model_path : c.tokenizer)),
      format_(std::make_unique<Formatter>(c.data, *tokenizer_)) {}

Scorer::~Scorer() = default;

const Dataset& Scorer::dataset(const std::string& split) {
  auto it = datasets_.find(split);
  if (it != datasets_.end()) return it->second;
  if (split != "train" && split != "val") throw Error("no dataset split '" + split + "' (train or val)");
  const std::string& path = split == "train" ? c_.data.train : c_.data.val;
  if (path.empty()) throw ConfigError("scoring held-out answers needs data.val");
  return datasets_.emplace(split, format_->load(path, split == "train" ? c_.data.train_kind : c_.data.val_kind)).first->second;
}

Scorer::Scores Scorer::score(const core::Batch& rows, const std::string& split, bool check) {
  Scores out;
  if (rows.size() == 0) {
    out.scores = at::zeros({0});
    return out;
  }
  if (!check && c_.reward.kind == "model") {
    if (!reward_model_) throw Error("reward.kind: model, but this worker has no reward model");
    out.scores = algorithms::sequence_rewards(*reward_model_, rows["tokens"], rows["last"], c_.actor_optim.micro_batch).to(at::kFloat);
    return out;
  }
  const Dataset& d = dataset(split);
  const at::Tensor tokens = rows["tokens"].contiguous(), last = rows["last"].contiguous();
  const at::Tensor length = rows["response_length"].contiguous(), example = rows["example"].contiguous();
  const auto ids = tokens.accessor<int64_t, 2>();
  const auto lasts = last.accessor<int64_t, 1>(), lens = length.accessor<int64_t, 1>(), ex = example.accessor<int64_t, 1>();
  std::vector<envs::RewardQuery> queries;
  for (int64_t b = 0; b < rows.size(); ++b) {
    if (ex[b] < 0 || ex[b] >= static_cast<int64_t>(d.examples.size()))
      throw Error("row " + std::to_string(b) + " names example " + std::to_string(ex[b]) + " of a " + split + " set of " +
                  std::to_string(d.examples.size()));
    const int64_t R = lens[b], first = lasts[b] - R + 1;
    std::vector<int32_t> response(static_cast<size_t>(R));
    for (int64_t i = 0; i < R; ++i) response[static_cast<size_t>(i)] = static_cast<int32_t>(ids[b][first + i]);
    const envs::TextExample& x = d.examples[static_cast<size_t>(ex[b])].text;
    queries.push_back({x.prompt, format_->decode_response(response), x.answer});
  }
  std::vector<double> s(queries.size(), 0.0);
  if (!check && c_.reward.kind == "command") {
    try {
      s = envs::command_rewards(c_.reward.command, queries);
    } catch (const Error& e) {
      if (c_.reward.on_error == "stop") throw;
      spdlog::warn("reward command failed, scoring these {} responses 0 (reward.on_error: zero): {}", queries.size(), e.what());
      out.errors = static_cast<int64_t>(queries.size());  // responses scored 0 for it
    }
  } else {
    RewardConfig rule;  // the task's own check: a numeric match for a numeric rule, else an exact one
    rule.rule = c_.reward.rule == "numeric" ? "numeric" : "exact";
    const RewardConfig& r = check ? rule : c_.reward;
    for (size_t i = 0; i < queries.size(); ++i) s[i] = rule_score(r, queries[i].response, queries[i].answer, lens[static_cast<int64_t>(i)]);
  }
  out.scores = at::tensor(s).to(at::kFloat);
  return out;
}

}  // namespace flotilla::actors::lm
