// The RLHF program (`program: rlhf`): HybridFlow's single controller. The workers hold the models
// (actor, rollout, ref, critic, reward; colocated in one group or split into one group per role);
// this file holds the data and the dataflow, one step of which reads top to bottom:
//
//   generate -> reward | old log-probs | ref log-probs | values -> advantages -> critic update
//            -> actor update -> weight sync
//
// Stages that do not depend on each other are in flight together (split workers run them in
// parallel). SFT, reward-model training and offline DPO use the same workers without generation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "actors/lm_roles.hpp"
#include "algorithms/lm_losses.hpp"
#include "controller/checkpoint.hpp"
#include "controller/cluster.hpp"
#include "controller/program.hpp"
#include "controller/rlhf_data.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/text_tasks.hpp"
#include "models/tokenizer.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;
using nlohmann::json;

namespace {

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

// ---- rewards ----

struct RewardConfig {
  std::string kind = "rule";  // rule, model, command
  std::string rule = "exact";  // exact or numeric
  std::string format;          // a regular expression the whole response should match
  double format_weight = 0;
  int64_t length_limit = 0;
  double length_coef = 0;
  std::string command;
  double timeout_s = 30;
  std::string on_error = "stop";  // stop or zero
};

double rule_score(const RewardConfig& r, const std::string& response, const std::string& answer, int64_t tokens) {
  double s = r.rule == "numeric" ? envs::numeric_match_reward(response, answer) : envs::exact_match_reward(response, answer);
  if (r.format_weight > 0) s += r.format_weight * envs::format_reward(response, r.format);
  if (r.length_coef > 0) s += envs::length_penalty(tokens, r.length_limit, r.length_coef);
  return s;
}

class RlhfProgram final : public Program {
 public:
  RlhfProgram(core::ConfigView root, const Experiment& e) : experiment_(e), c_(actors::RlhfConfig::read(root)) {
    core::ConfigView data = root.section("data");
    d_.train = data.get<std::string>("train", "");
    if (d_.train.empty()) data.fail("train", "set data.train to a JSONL dataset (make one with `flotilla data make TASK`)");
    d_.val = data.get<std::string>("val", "");
    const std::string default_kind = c_.algo == "sft" ? "sft" : (c_.algo == "reward_model" || c_.algo == "dpo") ? "preference" : "verifiable";
    d_.train_kind = data.choice("kind", default_kind, {"verifiable", "sft", "preference"});
    if (d_.train_kind != default_kind)
      data.fail("kind", c_.algo + " trains on " + default_kind + " data, not " + d_.train_kind);
    d_.val_kind = data.choice("val_kind", c_.algo == "reward_model" ? "preference" : "verifiable", {"verifiable", "preference"});
    d_.format = data.choice("prompt_format", "plain", {"plain", "chat"});
    d_.chat_template = data.get<std::string>("chat_template", "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n");
    if (d_.chat_template.find("{prompt}") == std::string::npos) data.fail("chat_template", "the chat template needs a {prompt} placeholder");
    d_.system = data.get<std::string>("system", "");
    if (!d_.system.empty() && d_.format != "chat") data.fail("system", "a system message needs prompt_format: chat");
    d_.eos = data.get<std::string>("eos", d_.format == "chat" ? "<|im_end|>" : "<|endoftext|>");
    d_.max_prompt_tokens = data.get<int64_t>("max_prompt_tokens", 256, core::at_least<int64_t>(1));
    d_.max_response_tokens = data.get<int64_t>("max_response_tokens", 256, core::at_least<int64_t>(2));
    d_.overlong_prompts = data.choice("overlong_prompts", "filter", {"filter", "truncate", "error"});

    core::ConfigView reward = root.section("reward");
    r_.kind = c_.reward_kind;
    r_.rule = reward.choice("rule", "exact", {"exact", "numeric"});
    r_.format = reward.get<std::string>("format", "");
    r_.format_weight = reward.get<double>("format_weight", r_.format.empty() ? 0.0 : 0.1, core::at_least(0.0));
    if (r_.format_weight > 0) envs::format_reward("", r_.format);  // a bad pattern fails now, not mid-run
    core::ConfigView length = reward.section("length_penalty");
    r_.length_limit = length.get<int64_t>("limit", 0, core::at_least<int64_t>(0));
    r_.length_coef = length.get<double>("coef", 0.0, core::at_least(0.0));
    r_.command = reward.get<std::string>("command", "");
    if (r_.kind == "command" && r_.command.empty()) reward.fail("command", "reward.kind: command needs reward.command, a shell command");
    r_.timeout_s = reward.get<double>("timeout_s", 30.0, core::greater_than(0.0));
    r_.on_error = reward.choice("on_error", "stop", {"stop", "zero"});

    core::ConfigView train = root.section("train");
    steps_ = train.get<int64_t>("steps", 100, core::at_least<int64_t>(1));
    call_timeout_s_ = train.get<double>("call_timeout_s", 600.0, core::greater_than(0.0));
    core::ConfigView eval = root.section("eval");
    eval_every_ = eval.get<int64_t>("every", 0, core::at_least<int64_t>(0));
    eval_n_ = eval.get<int64_t>("n", 200, core::at_least<int64_t>(1));
    eval_at_start_ = eval.get<bool>("at_start", true);
    if ((eval_every_ > 0 || eval_at_start_) && d_.val.empty() && eval.has("every"))
      eval.fail("every", "evaluation needs data.val, a held-out JSONL dataset");
    core::ConfigView ckpt = root.section("checkpoint");
    ckpt_every_ = ckpt.get<int64_t>("every", 0, core::at_least<int64_t>(0));
    ckpt_keep_ = ckpt.get<int>("keep", 2, core::at_least(1));
    seed_ = static_cast<uint64_t>(root.get<int64_t>("seed", 1));
    kl_coef_ = c_.kl_coef;
    if (c_.kl_target > 0) adaptive_kl_ = algorithms::AdaptiveKl(c_.kl_coef, c_.kl_target, c_.kl_horizon);

    // Files are checked now, before any worker starts.
    for (const auto& p : {c_.model_path, c_.ref_path, c_.critic_path, c_.reward_path})
      if (!p.empty() && !fs::exists(fs::path(p) / "config.json"))
        throw ConfigError(p + ": not a model directory (no config.json); use a run's final/ model (e.g. of configs/rlhf/addition_sft.yaml) or make one with `flotilla lm init`");
    for (const auto& [key, path] : {std::pair<std::string, std::string>{"train", d_.train}, {"val", d_.val}})
      if (!path.empty() && !fs::exists(path))
        data.fail(key, path + " does not exist; make a synthetic set with `flotilla data make TASK --out " + path + "`");
    tokenizer_ = models::load_tokenizer(c_.tokenizer.empty() ? c_.model_path : c_.tokenizer);
    format_ = std::make_unique<Formatter>(d_, *tokenizer_);
    train_ = format_->load(d_.train, d_.train_kind);
    if (!d_.val.empty()) val_ = format_->load(d_.val, d_.val_kind);
    if (c_.algo == "reward_model" && d_.val.empty() && eval_every_ > 0) eval.fail("every", "reward-model evaluation needs data.val pairs");
  }

  int64_t total_steps() const override { return steps_; }

  void resume(const fs::path& run_dir) override {
    auto path = latest_checkpoint(run_dir);
    if (!path) throw ConfigError(run_dir.string() + ": no checkpoint to resume from in checkpoints/");
    resume_ = json::parse(load_checkpoint(*path).manifest_json);
  }

  RunResult run(RunContext& ctx) override {
    at::set_num_threads(1);
    spdlog::info("data: {} train examples from {} ({} filtered, {} truncated over {} prompt tokens){}", train_.examples.size(),
                 d_.train, train_.filtered, train_.truncated, d_.max_prompt_tokens,
                 val_.examples.empty() ? "" : ", " + std::to_string(val_.examples.size()) + " held out");
    ClusterOptions options;
    options.call_timeout = std::chrono::milliseconds(static_cast<int64_t>(call_timeout_s_ * 1000));
    options.heartbeat_timeout = std::chrono::seconds(30);
    std::vector<WorkerSpec> specs;
    std::string layout, roles;
    for (const auto& g : c_.workers) {
      specs.push_back({g.role, g.count});
      layout += (layout.empty() ? "" : ", ") + std::to_string(g.count) + " " + g.role;
    }
    for (const auto& r : c_.roles) roles += (roles.empty() ? "" : " ") + r;
    spdlog::info("{}: {} placement, roles {}; starting workers: {}", c_.algo, c_.placement, roles, layout);
    Cluster cluster(ctx.dir, experiment_.name, specs, options);
    cluster_ = &cluster;
    const std::string yaml = core::read_file(ctx.dir / "config.yaml");
    for (const auto& g : c_.workers) cluster.run(g.role, "configure", yaml);

    Sampler sampler(static_cast<int64_t>(train_.examples.size()), seed_);
    int64_t start = 0;
    double elapsed_before = 0;  // training seconds before a resume
    if (!resume_.is_null()) {
      start = resume_.at("step").get<int64_t>();
      sampler.restore(resume_.at("sampler"));
      kl_coef_ = resume_.value("kl_coef", kl_coef_);
      elapsed_before = resume_.value("train_time_s", 0.0);
      load_models(ctx.dir / resume_.at("dir").get<std::string>(), start);
      spdlog::info("resumed at step {} from {}", start, resume_.at("dir").get<std::string>());
    }
    ctx.report_progress(start);
    RunResult result;
    const TrainClock clock(elapsed_before);
    if (start == 0 && eval_at_start_ && !val_.examples.empty()) log_eval(ctx, 0, result);
    int64_t step = start;
    while (step < steps_) {
      if (interrupted(ctx, result)) break;
      ++step;
      const auto ts = clock_type::now();
      core::Scalars row;
      const double tokens = train_step(sampler, step, row);
      row.push_back({"timing_s/step", seconds_since(ts)});
      row.push_back({"perf/throughput", tokens / std::max(seconds_since(ts), 1e-9)});
      ctx.metrics.log(step, row);
      if (eval_every_ > 0 && (step % eval_every_ == 0 || step == steps_) && !val_.examples.empty()) log_eval(ctx, step, result);
      if ((ckpt_every_ > 0 && step % ckpt_every_ == 0) || step == steps_) checkpoint(ctx.dir, step, sampler, clock.seconds());
      ctx.report_progress(step);
    }
    if (result.exit_reason == "interrupted" && step > start) checkpoint(ctx.dir, step, sampler, clock.seconds());
    if (step > start || start == 0) {
      const fs::path final_dir = ctx.dir / "final";
      cluster.run(c_.group_of("actor"), "actor.save", json{{"dir", final_dir.string()}, {"optimizer", false}}.dump());
      fs::copy_file(tokenizer_file(), final_dir / "tokenizer.json", fs::copy_options::overwrite_existing);
      spdlog::info("final model: {}", final_dir.string());
    }
    result.summary.push_back({"global_step", static_cast<double>(step)});
    result.summary.push_back({"data/train_examples", static_cast<double>(train_.examples.size())});
    result.summary.push_back({"data/prompts_filtered", static_cast<double>(train_.filtered + val_.filtered)});
    result.summary.push_back({"data/prompts_truncated", static_cast<double>(train_.truncated + val_.truncated)});
    result.summary.push_back({"data/responses_truncated", static_cast<double>(train_.responses_truncated)});
    result.summary.push_back({"train_time_s", clock.seconds()});
    cluster_ = nullptr;
    return result;
  }

 private:
  // ---- one training step per algorithm family: metrics into `row`, tokens processed returned ----

  static double tokens_in(const core::Batch& sequences) { return (sequences["last"] + 1).sum().item<double>(); }

  double train_step(Sampler& sampler, int64_t step, core::Scalars& row) {
    if (c_.algo == "sft") return sft_step(sampler, step, row);
    if (c_.algo == "reward_model" || c_.algo == "dpo") return pair_step(sampler, step, row);
    return rl_step(sampler, step, row);
  }

  double sft_step(Sampler& sampler, int64_t step, core::Scalars& row) {
    std::vector<SequenceRow> rows;
    for (int64_t i : sampler.next(c_.batch_size)) rows.push_back({&ex(i).prompt, &ex(i).response});
    core::Batch batch = sequence_batch(rows);
    row.push_back({"response_length/mean", batch["response_mask"].sum(1).mean().item<double>()});
    update_actor(batch, step, 1, row);
    return tokens_in(batch);
  }

  // Preference pairs: reward-model training (Bradley-Terry) or offline DPO against the reference.
  double pair_step(Sampler& sampler, int64_t step, core::Scalars& row) {
    std::vector<SequenceRow> rows;
    for (int64_t i : sampler.next(c_.batch_size)) {
      rows.push_back({&ex(i).prompt, &ex(i).chosen});
      rows.push_back({&ex(i).prompt, &ex(i).rejected});
    }
    core::Batch batch = sequence_batch(rows);
    row.push_back({"response_length/mean", batch["response_mask"].sum(1).mean().item<double>()});
    if (c_.algo == "dpo") {
      const auto t = clock_type::now();
      batch.set("ref_log_prob", call_dp("ref", "ref.log_probs", batch, 2)["ref_log_prob"]);
      row.push_back({"timing_s/ref", seconds_since(t)});
    }
    update_actor(batch, step, 2, row);
    return tokens_in(batch);
  }

  double rl_step(Sampler& sampler, int64_t step, core::Scalars& row) {
    std::vector<const Example*> prompts;
    for (int64_t i : sampler.next(c_.batch_size)) prompts.push_back(&ex(i));
    const int64_t n = c_.group_size;

    // 1. generate: n samples per prompt, rows p*n .. p*n+n-1
    auto t = clock_type::now();
    core::Batch batch = generate(prompts, n, c_.temperature, seed_ * 1000003 + static_cast<uint64_t>(step));
    row.push_back({"timing_s/gen", seconds_since(t)});
    const at::Tensor resp_len = batch["response_length"].to(at::kDouble);
    const double tokens = tokens_in(batch);

    // 2. reward, old log-probs, reference log-probs and values: independent, in flight together
    const auto issued = clock_type::now();
    auto old_lp = call_async("actor", "actor.log_probs", batch.select({"tokens"}), n);
    std::optional<Pending> ref_lp, values, model_scores;
    if (c_.needs_ref()) ref_lp = call_async("ref", "ref.log_probs", batch.select({"tokens"}), n);
    if (c_.uses("critic")) values = call_async("critic", "critic.values", batch.select({"tokens"}), n);
    if (r_.kind == "model") model_scores = call_async("reward", "reward.score", batch.select({"tokens", "last"}), n);
    at::Tensor scores = r_.kind == "model" ? at::Tensor() : text_scores(r_, batch, prompts, n, row);
    if (model_scores) scores = wait(*model_scores)["scores"].to(at::kFloat);
    row.push_back({"timing_s/reward", seconds_since(issued)});
    batch.set("old_log_prob", wait(old_lp)["old_log_prob"]);
    row.push_back({"timing_s/old_log_prob", seconds_since(issued)});
    if (ref_lp) {
      batch.set("ref_log_prob", wait(*ref_lp)["ref_log_prob"]);
      row.push_back({"timing_s/ref", seconds_since(issued)});
    }
    if (values) batch.set("values", wait(*values)["values"]);

    // 3. shaping: the overlong penalty, then dynamic sampling drops groups without signal
    if (c_.overlong_buffer > 0) {
      const double start = static_cast<double>(c_.max_new_tokens - c_.overlong_buffer);
      scores = scores - (((resp_len - start).clamp_min(0) / static_cast<double>(c_.overlong_buffer)) * c_.overlong_penalty).to(at::kFloat);
    }
    row.push_back({"critic/score/mean", scores.mean().item<double>()});
    row.push_back({"response_length/mean", resp_len.mean().item<double>()});
    row.push_back({"response_length/clip_ratio", batch["truncated"].mean().item<double>()});
    batch.set("scores", scores);
    if (c_.dynamic_sampling) {
      const at::Tensor g = scores.view({-1, n});
      const at::Tensor keep = (g.amax(1) - g.amin(1)) > 1e-9;
      const int64_t kept = keep.sum().item<int64_t>();
      row.push_back({"batch/kept_groups", static_cast<double>(kept)});
      if (kept == 0) {
        row.push_back({"batch/skipped", 1.0});
        return tokens;
      }
      batch = batch.index(keep.nonzero().view({-1}).repeat_interleave(n) * n + at::arange(n).repeat(kept));
      scores = batch["scores"];
    }

    if (c_.algo == "online_dpo") {
      online_dpo_pairs(batch, n, row);
      if (batch.size() == 0) return tokens;
      update_actor(batch, step, 2, row);
      return tokens;
    }

    // 4. advantages (the KL to the reference in the reward or as a loss)
    algorithms::AdvantageInputs in;
    in.scores = scores;
    in.response_mask = batch["response_mask"];
    in.group_size = n;
    in.norm_by_std = c_.norm_by_std;
    in.gamma = c_.gamma, in.lam = c_.lam;
    if (batch.contains("ref_log_prob")) {
      in.kl = algorithms::kl_estimate(batch["old_log_prob"], batch["ref_log_prob"], c_.loss.kl_estimator);
      const double kl_mean = algorithms::masked_mean(in.kl, in.response_mask).item<double>();
      row.push_back({"actor/reward_kl", kl_mean});
      if (c_.kl_in == "reward") {
        in.kl_coef = kl_coef_;
        if (c_.kl_target > 0) adaptive_kl_.update(kl_mean, batch.size());
      }
    }
    if (batch.contains("values")) in.values = batch["values"];
    algorithms::Advantages adv = algorithms::advantage_estimator(c_.estimator)(in);
    batch.set("advantages", adv.advantages);
    const at::Tensor penalized = in.kl_coef > 0 ? scores - in.kl_coef * (in.kl * in.response_mask).sum(1) : scores;
    row.push_back({"critic/rewards/mean", penalized.mean().item<double>()});
    row.push_back({"critic/advantages/mean", algorithms::masked_mean(adv.advantages, in.response_mask).item<double>()});
    row.push_back({"actor/kl_coef", kl_coef_});
    if (c_.kl_target > 0) kl_coef_ = adaptive_kl_.value();

    // 5. critic update, 6. actor update
    if (c_.uses("critic")) {
      batch.set("returns", adv.returns);
      t = clock_type::now();
      core::Batch critic_batch = batch.select({"tokens", "response_mask", "values", "returns"});
      json stats = json::parse(call_dp_result("critic", "critic.update", critic_batch, n, json{{"seed", step}}.dump()));
      for (auto& [k, v] : stats.items()) row.push_back({k, v.get<double>()});
      row.push_back({"timing_s/update_critic", seconds_since(t)});
    }
    std::vector<std::string> fields = {"tokens", "response_mask", "old_log_prob", "advantages"};
    if (batch.contains("ref_log_prob")) fields.push_back("ref_log_prob");
    update_actor(batch.select(fields), step, n, row);
    return tokens;
  }

  // Online DPO: in each group the best and the worst sample (by reward) become a pair.
  void online_dpo_pairs(core::Batch& batch, int64_t n, core::Scalars& row) {
    const at::Tensor g = batch["scores"].view({-1, n});
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < g.size(0); ++i) {
      const int64_t hi = g[i].argmax().item<int64_t>(), lo = g[i].argmin().item<int64_t>();
      if (g[i][hi].item<double>() - g[i][lo].item<double>() <= 1e-9) continue;
      rows.push_back(i * n + hi);
      rows.push_back(i * n + lo);
    }
    row.push_back({"batch/pairs", static_cast<double>(rows.size() / 2)});
    batch = batch.index(at::tensor(rows, at::kLong)).select({"tokens", "response_mask", "ref_log_prob"});
  }

  // The actor update and the weight sync that follows it.
  void update_actor(const core::Batch& batch, int64_t step, int64_t group, core::Scalars& row) {
    auto t = clock_type::now();
    json stats = json::parse(call_dp_result("actor", "actor.update", batch, group, json{{"seed", step}}.dump()));
    for (auto& [k, v] : stats.items()) row.push_back({k, v.get<double>()});
    row.push_back({"timing_s/update_actor", seconds_since(t)});
    ++version_;
    if (c_.uses("rollout")) {
      t = clock_type::now();
      sync_weights();
      row.push_back({"timing_s/sync_weights", seconds_since(t)});
    }
  }

  // The new weights reach every rollout worker with their version (a full broadcast for now; the
  // resharding path replaces it behind rollout.sync).
  void sync_weights() { cluster_->run(c_.group_of("rollout"), "rollout.sync", std::to_string(version_)); }

  // ---- calls on worker groups ----

  struct Pending {
    std::string group, method;
    std::vector<std::future<actors::CallResult>> futures;
  };

  Pending call_async(const std::string& role, const std::string& method, const core::Batch& batch, int64_t group,
                     const std::string& args = "") {
    const std::string g = c_.group_of(role);
    auto& wg = cluster_->group(g);
    return {g, method, wg.call_parts(method, args, chunk_groups(batch, group, wg.size()))};
  }
  core::Batch wait(Pending& p) {
    std::vector<core::Batch> parts;
    for (auto& r : cluster_->wait(p.group, p.futures, p.method)) parts.push_back(std::move(r.batch));
    return concat_padded(std::move(parts));
  }
  core::Batch call_dp(const std::string& role, const std::string& method, const core::Batch& batch, int64_t group) {
    Pending p = call_async(role, method, batch, group);
    return wait(p);
  }
  std::string call_dp_result(const std::string& role, const std::string& method, const core::Batch& batch, int64_t group,
                             const std::string& args) {
    Pending p = call_async(role, method, batch, group, args);
    return cluster_->wait(p.group, p.futures, p.method).front().result;
  }

  core::Batch generate(const std::vector<const Example*>& prompts, int64_t n, double temperature, uint64_t seed) {
    json a = {{"n", n}, {"temperature", temperature}, {"seed", seed}, {"stop", std::vector<int32_t>{format_->eos()}}};
    Pending p = call_async("rollout", "rollout.generate", prompt_batch(prompts), 1, a.dump());
    return wait(p);
  }

  // Rule-based or external-command scores of each generated response.
  at::Tensor text_scores(const RewardConfig& reward, const core::Batch& batch, const std::vector<const Example*>& prompts,
                         int64_t n, core::Scalars& row) {
    const at::Tensor tokens = batch["tokens"].contiguous(), length = batch["response_length"].contiguous();
    const auto ids = tokens.accessor<int64_t, 2>();
    const auto lens = length.accessor<int64_t, 1>();
    std::vector<envs::RewardQuery> queries;
    std::vector<int64_t> lengths;
    for (int64_t b = 0; b < batch.size(); ++b) {
      const Example& x = *prompts[static_cast<size_t>(b / n)];
      const int64_t P = static_cast<int64_t>(x.prompt.size()), R = lens[b];
      std::vector<int32_t> r(static_cast<size_t>(R));
      for (int64_t i = 0; i < R; ++i) r[static_cast<size_t>(i)] = static_cast<int32_t>(ids[b][P + i]);
      queries.push_back({x.text.prompt, format_->decode_response(r), x.text.answer});
      lengths.push_back(R);
    }
    std::vector<double> s(queries.size(), 0.0);
    if (reward.kind == "command") {
      try {
        s = envs::command_rewards(reward.command, queries, reward.timeout_s);
      } catch (const Error& e) {
        if (reward.on_error == "stop") throw;
        spdlog::warn("reward command failed, scoring this step's {} responses 0 (reward.on_error: zero): {}", queries.size(), e.what());
        ++reward_errors_;
      }
      row.push_back({"reward/errors", static_cast<double>(reward_errors_)});
    } else {
      for (size_t i = 0; i < queries.size(); ++i) s[i] = rule_score(reward, queries[i].response, queries[i].answer, lengths[i]);
    }
    return at::tensor(s).to(at::kFloat);
  }

  // ---- evaluation: greedy answers to held-out prompts, or reward-model accuracy on held-out pairs ----

  void log_eval(RunContext& ctx, int64_t step, RunResult& result) {
    const auto t = clock_type::now();
    core::Scalars row;
    const size_t n = std::min<size_t>(static_cast<size_t>(eval_n_), val_.examples.size());
    if (c_.algo == "reward_model") {
      std::vector<SequenceRow> rows;
      for (size_t i = 0; i < n; ++i) {
        rows.push_back({&val_.examples[i].prompt, &val_.examples[i].chosen});
        rows.push_back({&val_.examples[i].prompt, &val_.examples[i].rejected});
      }
      const at::Tensor s = call_dp("actor", "actor.rewards", sequence_batch(rows).select({"tokens", "last"}), 2)["scores"];
      row.push_back({"val/accuracy", (s.slice(0, 0, {}, 2) > s.slice(0, 1, {}, 2)).to(at::kDouble).mean().item<double>()});
    } else {
      std::vector<const Example*> prompts;
      for (size_t i = 0; i < n; ++i) prompts.push_back(&val_.examples[i]);
      const core::Batch b = generate(prompts, 1, 0.0, 0);
      // Accuracy is the task's own check (exact or numeric match), whatever the training reward.
      RewardConfig check;
      check.rule = r_.rule;
      core::Scalars ignored;
      const at::Tensor s = text_scores(check, b, prompts, 1, ignored);
      row.push_back({"val/accuracy", (s > 0.5).to(at::kDouble).mean().item<double>()});
      row.push_back({"val/response_length", b["response_length"].to(at::kDouble).mean().item<double>()});
    }
    row.push_back({"timing_s/eval", seconds_since(t)});
    ctx.metrics.log(step, row);
    spdlog::info("step {}: val/accuracy {:.3f} on {} held-out examples", step, row.front().second, n);
    if (step == 0) result.summary.push_back({"initial_val_accuracy", row.front().second});
    else {
      auto& s = result.summary;
      s.erase(std::remove_if(s.begin(), s.end(), [](auto& p) { return p.first == "final_val_accuracy"; }), s.end());
      s.push_back({"final_val_accuracy", row.front().second});
    }
  }

  // ---- checkpoints ----

  void checkpoint(const fs::path& run_dir, int64_t step, const Sampler& sampler, double train_time_s) {
    const std::string dir = "checkpoints/step-" + std::to_string(step);
    cluster_->run(c_.group_of("actor"), "actor.save", json{{"dir", (run_dir / dir / "actor").string()}}.dump());
    if (c_.uses("critic")) cluster_->run(c_.group_of("critic"), "critic.save", json{{"dir", (run_dir / dir / "critic").string()}}.dump());
    const json manifest = {{"program", "rlhf"}, {"step", step}, {"version", version_}, {"dir", dir}, {"sampler", sampler.state()},
                           {"kl_coef", kl_coef_}, {"train_time_s", train_time_s}};
    save_checkpoint(run_dir, step, {}, manifest.dump(2), ckpt_keep_);
    // Model directories of checkpoints no longer listed go too.
    std::set<std::string> kept;
    for (const auto& e : fs::directory_iterator(run_dir / "checkpoints"))
      if (e.path().extension() == ".json") kept.insert("step-" + e.path().stem().string().substr(5));
    for (const auto& e : fs::directory_iterator(run_dir / "checkpoints"))
      if (e.is_directory() && !kept.count(e.path().filename().string())) fs::remove_all(e.path());
  }

  void load_models(const fs::path& dir, int64_t step) {
    version_ = step;
    cluster_->run(c_.group_of("actor"), "actor.load", json{{"dir", (dir / "actor").string()}, {"version", version_}}.dump());
    if (c_.uses("critic")) cluster_->run(c_.group_of("critic"), "critic.load", json{{"dir", (dir / "critic").string()}}.dump());
    version_ = resume_.value("version", version_);
    if (c_.uses("rollout")) sync_weights();
  }

  fs::path tokenizer_file() const {
    const fs::path p = c_.tokenizer.empty() ? c_.model_path : c_.tokenizer;
    return fs::is_directory(p) ? p / "tokenizer.json" : p;
  }

  const Example& ex(int64_t i) const { return train_.examples[static_cast<size_t>(i)]; }

  Experiment experiment_;
  actors::RlhfConfig c_;
  DataConfig d_;
  RewardConfig r_;
  int64_t steps_ = 100, eval_every_ = 0, eval_n_ = 200, ckpt_every_ = 0;
  int ckpt_keep_ = 2;
  bool eval_at_start_ = true;
  double call_timeout_s_ = 600;
  uint64_t seed_ = 1;
  std::unique_ptr<models::Tokenizer> tokenizer_;
  std::unique_ptr<Formatter> format_;
  Dataset train_, val_;
  json resume_;
  Cluster* cluster_ = nullptr;
  int64_t version_ = 0, reward_errors_ = 0;
  double kl_coef_ = 0;
  algorithms::AdaptiveKl adaptive_kl_{0, 1, 1};
};

ProgramRegistration rlhf("rlhf", [](core::ConfigView root, const Experiment& e) -> std::unique_ptr<Program> {
  return std::make_unique<RlhfProgram>(root, e);
});

}  // namespace
}  // namespace flotilla::controller
