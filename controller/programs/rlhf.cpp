// The RLHF program (`program: rlhf`): HybridFlow's single controller. The workers hold the models
// (actor, rollout, ref, critic, reward; colocated in one group or split into one group per role)
// and the rows they make; this file holds the dataset and the dataflow, one step of which reads
// top to bottom:
//
//   take a batch from the sample stream -> old log-probs -> advantages -> critic update
//                                       -> actor update -> weight sync
//
// The stream (rlhf_stream.hpp) generates, scores and computes reference log-probs and values as
// groups finish, within async.max_staleness versions of the trainer (0: synchronous). Generated
// sequences, log-probs, values and advantages stay on the workers that made them
// (runtime::DataRef) and go worker to worker; the controller pulls only scores and lengths.
// SFT, reward-model training and offline DPO use the same workers without generation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <optional>

#include "actors/lm/config.hpp"
#include "actors/lm/data.hpp"
#include "actors/lm/methods.hpp"
#include "algorithms/lm_losses.hpp"
#include "controller/cluster/cluster.hpp"
#include "controller/programs/rlhf_stream.hpp"
#include "controller/programs/rlhf_workers.hpp"
#include "controller/run/checkpoint.hpp"
#include "controller/run/program.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "models/tokenizer.hpp"

namespace flotilla::controller {
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;
using nlohmann::json;
using namespace actors::lm;
using runtime::DataRef;
using runtime::Input;
using Step = algorithms::LmAlgorithm::Step;

namespace {

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }
double tokens_in(const at::Tensor& last) { return (last + 1).sum().item<double>(); }

class RlhfProgram final : public Program {
 public:
  RlhfProgram(core::ConfigView root, const Experiment& e) : experiment_(e), c_(RlhfConfig::read(root)) {
    core::ConfigView train = root.section("train");
    steps_ = train.get<int64_t>("steps", 100, core::at_least<int64_t>(1));
    call_timeout_s_ = train.get<double>("call_timeout_s", 600.0, core::greater_than(0.0));
    core::ConfigView eval = root.section("eval");
    eval_every_ = eval.get<int64_t>("every", 0, core::at_least<int64_t>(0));
    eval_n_ = eval.get<int64_t>("n", 200, core::at_least<int64_t>(1));
    eval_at_start_ = eval.get<bool>("at_start", true);
    if ((eval_every_ > 0 || eval_at_start_) && c_.data.val.empty() && eval.has("every"))
      eval.fail("every", "evaluation needs data.val, a held-out JSONL dataset");
    core::ConfigView ckpt = root.section("checkpoint");
    ckpt_every_ = ckpt.get<int64_t>("every", 0, core::at_least<int64_t>(0));
    ckpt_keep_ = ckpt.get<int>("keep", 2, core::at_least(1));
    ckpt_async_ = ckpt.get<bool>("async", true);
    seed_ = static_cast<uint64_t>(root.get<int64_t>("seed", 1));
    kl_coef_ = c_.kl_coef;
    if (c_.kl_target > 0) adaptive_kl_ = algorithms::AdaptiveKl(c_.kl_coef, c_.kl_target, c_.kl_horizon);

    // Files are checked now, before any worker starts.
    for (const auto& p : {c_.model_path, c_.ref_path, c_.critic_path, c_.reward_path})
      if (!p.empty() && !fs::exists(fs::path(p) / "config.json"))
        throw ConfigError(p + ": not a model directory (no config.json); use a run's final/ model (e.g. of configs/rlhf/addition_sft.yaml) or make one with `flotilla lm init`");
    c_.check_models_split();
    for (const auto& [key, path] : {std::pair<std::string, std::string>{"train", c_.data.train}, {"val", c_.data.val}})
      if (!path.empty() && !fs::exists(path))
        root.section("data").fail(key, path + " does not exist; make a synthetic set with `flotilla data make TASK --out " + path + "`");
    if (!c_.async.schedule.empty() && !fs::exists(c_.async.schedule))
      root.section("async").fail("schedule", c_.async.schedule + " does not exist; a deterministic run records its schedule as RUN_DIR/schedule.json");
    tokenizer_ = models::load_tokenizer(c_.tokenizer.empty() ? c_.model_path : c_.tokenizer);
    format_ = std::make_unique<Formatter>(c_.data, *tokenizer_);
    train_ = format_->load(c_.data.train, c_.data.train_kind);
    if (!c_.data.val.empty()) val_ = format_->load(c_.data.val, c_.data.val_kind);
    if (c_.family.pair_eval() && c_.data.val.empty() && eval_every_ > 0) eval.fail("every", "reward-model evaluation needs data.val pairs");
  }

  int64_t total_steps() const override { return steps_; }

  void resume(const fs::path& run_dir) override {
    auto path = latest_checkpoint(run_dir);
    if (!path) throw ConfigError(run_dir.string() + ": no checkpoint to resume from in checkpoints/");
    resume_ = json::parse(load_checkpoint(*path).manifest_json);
  }

  std::vector<std::pair<std::string, int>> worker_groups() const override { return group_counts(c_.workers); }

  // A worker's failure, under fault policy restart, brings the run back to its last checkpoint
  // (its start when there is none): every prompt of the steps after it is taken again.
  RunResult run(RunContext& ctx) override {
    at::set_num_threads(1);  // the workers do the heavy work; an idle thread pool here would spin beside them
    spdlog::info("data: {} train examples from {} ({} filtered, {} truncated over {} prompt tokens){}", train_.examples.size(),
                 c_.data.train, train_.filtered, train_.truncated, c_.data.max_prompt_tokens,
                 val_.examples.empty() ? "" : ", " + std::to_string(val_.examples.size()) + " held out");
    return restarts_.run(experiment_.fault, [&] { return run_workers(ctx); }, [&] {
      checkpoints_.poll(), checkpoints_.drop();  // one whose files are whole is kept
      last_sync_.clear(), gen_clock_.reset(), gen_tokens_ = 0;
      if (latest_checkpoint(ctx.dir)) return resume(ctx.dir);
      resume_ = nullptr, version_ = 0, kl_coef_ = c_.kl_coef;
      if (c_.kl_target > 0) adaptive_kl_ = algorithms::AdaptiveKl(c_.kl_coef, c_.kl_target, c_.kl_horizon);
    });
  }

 private:
  RunResult run_workers(RunContext& ctx) {
    Cluster cluster(ctx.dir, experiment_.name, workers_.specs(), workers_.options(restarts_, call_timeout_s_));
    cluster_ = &cluster;
    workers_.attach(&cluster, core::read_file(ctx.dir / "config.yaml"));
    const RunRestarts::Scope scope(restarts_, cluster);
    struct Leave {  // the stream points at the cluster's groups: it goes first
      RlhfProgram& p;
      ~Leave() { p.stream_.reset(), p.cluster_ = nullptr, p.workers_.attach(nullptr, {}); }
    } leave{*this};
    for (const auto& g : c_.workers) cluster.run(g.role, runtime::Configure{core::read_file(ctx.dir / "config.yaml")});
    for (const auto& g : c_.workers) cluster.run(g.role, runtime::Start{});  // the rollouts' continuous generation
    restarts_.up(cluster);

    Sampler sampler(static_cast<int64_t>(train_.examples.size()), seed_);
    int64_t start = 0;
    if (!resume_.is_null()) start = restore(ctx.dir, sampler);
    ctx.report_progress(start);
    if (c_.family.generates()) start_stream(sampler, start);
    RunResult result;
    const TrainClock clock(resume_.is_null() ? 0.0 : resume_.value("train_time_s", 0.0));
    if (start == 0 && eval_at_start_ && !val_.examples.empty()) log_eval(ctx, 0, result);
    int64_t step = start;
    while (step < steps_) {
      if (interrupted(ctx, result)) break;
      ++step;
      checkpoints_.poll();  // a background checkpoint whose files are whole gets its manifest
      const auto ts = clock_type::now();
      const int64_t bytes_before = cluster.transfer_bytes();
      core::Scalars row;
      const double tokens = train_step(sampler, step, row);
      row.push_back({"timing_s/step", seconds_since(ts)});
      row.push_back({"perf/throughput", tokens / std::max(seconds_since(ts), 1e-9)});
      row.push_back({"transfer/controller_bytes", static_cast<double>(cluster.transfer_bytes() - bytes_before)});
      ctx.metrics.log(step, row);
      if (eval_every_ > 0 && (step % eval_every_ == 0 || step == steps_) && !val_.examples.empty()) log_eval(ctx, step, result);
      if (checkpoints_at(step)) checkpoint(ctx.dir, step, sampler, clock.seconds());
      ctx.report_progress(step);
    }
    if (result.exit_reason == "interrupted" && step > start) {
      if (can_drain(version_)) checkpoint(ctx.dir, step, sampler, clock.seconds());
      else spdlog::warn("no checkpoint at step {}: following a schedule, a run checkpoints only where the recorded run did", step);
    }
    if (step > start || start == 0) save_final(ctx.dir);
    checkpoints_.flush();
    result.summary.push_back({"global_step", static_cast<double>(step)});
    result.summary.push_back({"data/train_examples", static_cast<double>(train_.examples.size())});
    result.summary.push_back({"data/prompts_filtered", static_cast<double>(train_.filtered + val_.filtered)});
    result.summary.push_back({"data/prompts_truncated", static_cast<double>(train_.truncated + val_.truncated)});
    result.summary.push_back({"data/responses_truncated", static_cast<double>(train_.responses_truncated)});
    result.summary.push_back({"train_time_s", clock.seconds()});
    result.summary.push_back({"fault/restarts", static_cast<double>(restarts_.total(cluster))});
    result.summary.push_back({"security/refused_connections", static_cast<double>(cluster.refused())});
    if (stream_) stream_->save_schedule(ctx.dir / "schedule.json");
    return result;
  }

  runtime::WorkerGroup& group(const std::string& role) { return workers_.group(role); }

  // Brings back the workers being replaced (RlhfWorkers::bring_back) and tells the stream what
  // they held; returns them (none when no worker failed). A failure the cluster does not replace
  // (WorkerFailure) is thrown from here, so a catch of Error that calls this passes it on.
  std::vector<Replacement> lost() {
    auto back = workers_.bring_back(version_);
    for (const auto& r : back)
      if (stream_) stream_->replaced(r.group, r.rank);
    return back;
  }
  // `call`, again after a worker it needed was replaced.
  template <class F>
  auto retrying(F call) {
    while (true) {
      try {
        return call();
      } catch (const Error&) {
        if (lost().empty()) throw;
      }
    }
  }

  // ---- one training step per kind of algorithm: metrics into `row`, tokens processed returned ----

  double train_step(Sampler& sampler, int64_t step, core::Scalars& row) {
    switch (c_.family.step) {
      case Step::Supervised: return supervised_step(sampler, step, row);
      case Step::Pairs: return pair_step(sampler, step, row);
      case Step::Rl: return rl_step(step, row);
    }
    return 0;
  }

  double supervised_step(Sampler& sampler, int64_t step, core::Scalars& row) {
    std::vector<SequenceRow> rows;
    for (int64_t i : sampler.next(c_.batch_size)) rows.push_back({&ex(i).prompt, &ex(i).response});
    const core::Batch batch = sequence_batch(rows);
    row.push_back({"response_length/mean", batch["response_mask"].sum(1).mean().item<double>()});
    update_actor(DataRef::of(batch), step, 1, row);
    return tokens_in(batch["last"]);
  }

  // Preference pairs: reward-model training (Bradley-Terry) or offline DPO against the reference.
  double pair_step(Sampler& sampler, int64_t step, core::Scalars& row) {
    std::vector<SequenceRow> rows;
    for (int64_t i : sampler.next(c_.batch_size)) {
      rows.push_back({&ex(i).prompt, &ex(i).chosen});
      rows.push_back({&ex(i).prompt, &ex(i).rejected});
    }
    const core::Batch batch = sequence_batch(rows);
    row.push_back({"response_length/mean", batch["response_mask"].sum(1).mean().item<double>()});
    DataRef data = DataRef::of(batch);
    if (c_.needs_ref()) {
      const auto t = clock_type::now();
      data = DataRef::join({data, retrying([&] { return group("ref").call(RefLogProbs{}, Input(data.select({"tokens", "response_mask"})).grouped(2)).get().data; })});
      row.push_back({"timing_s/ref", seconds_since(t)});
    }
    update_actor(data, step, 2, row);
    return tokens_in(batch["last"]);
  }

  // 1. the samples that train this version, from the stream: n per prompt, rows p*n .. p*n+n-1
  // in admission order, scored and with reference log-probs and values as they finished. When a
  // worker that held some of them fails before the actor's update, they are generated again.
  double rl_step(int64_t step, core::Scalars& row) {
    while (true) {
      SampleStream::Taken taken = stream_->take(version_);
      const int64_t version = version_;
      critic_updated_ = false;
      core::Scalars r;
      try {
        const double tokens = train_on(taken, step, r);
        row.insert(row.end(), r.begin(), r.end());
        return tokens;
      } catch (const Error& e) {
        if (version_ != version || lost().empty()) throw;
        // The critic learned from them already: only its checkpoint undoes that.
        if (critic_updated_) throw WorkerFailure(e.what() + std::string(" (after the critic's update)"), c_.group_of("critic"), 0, true);
        spdlog::warn("step {}: a worker holding its samples failed; their {} prompts are generated again", step, taken.groups.size());
        stream_->again(taken.groups, version_);
      }
    }
  }

  double train_on(const SampleStream::Taken& taken, int64_t step, core::Scalars& row) {
    const int64_t n = c_.group_size;
    row.push_back({"timing_s/gen", taken.waited_s});
    row.push_back({"timing_s/reward", taken.reward_s});
    if (c_.needs_ref()) row.push_back({"timing_s/ref", taken.ref_s});
    if (c_.reward.kind == "command") row.push_back({"reward/errors", static_cast<double>(stream_->reward_errors())});
    log_stream(taken, row);

    // 2. old log-probs: the actor's weights now, before this update (the proximal policy). With
    // one optimizer step per batch the update's own forward pass gives them (RlhfConfig::
    // reuses_log_probs), and this pass is skipped.
    auto t = clock_type::now();
    const DataRef& samples = taken.rows;
    std::vector<std::string> kept = {"tokens", "response_mask"};
    for (const char* f : {"ref_log_prob", "values"})
      if (samples.contains(f)) kept.push_back(f);
    // Samples made by older weights carry the rollout's log-probs into the loss (async.objective).
    if (c_.async.overlaps()) kept.push_back("rollout_log_prob");
    // Each row's last token (the controller holds them) goes along: the updates cut their
    // micro-batches to their longest row.
    DataRef joined = DataRef::join({samples.select(kept), DataRef::of(taken.lengths.select({"last"}))});
    if (!c_.reuses_log_probs()) {
      auto old_lp = group("actor").call(ActorLogProbs{}, Input(samples.select({"tokens", "response_mask"})).grouped(n)).get();
      row.push_back({"timing_s/old_log_prob", seconds_since(t)});
      joined = DataRef::join({joined, old_lp.data});
    }
    at::Tensor scores = taken.scores;
    const core::Batch& lengths = taken.lengths;

    // 3. shaping: the overlong penalty, then dynamic sampling drops groups without signal
    const at::Tensor resp_len = lengths["response_length"].to(at::kDouble);
    if (c_.overlong_buffer > 0) {
      const double from = static_cast<double>(c_.max_new_tokens - c_.overlong_buffer);
      scores = scores - (((resp_len - from).clamp_min(0) / static_cast<double>(c_.overlong_buffer)) * c_.overlong_penalty).to(at::kFloat);
    }
    row.push_back({"critic/score/mean", scores.mean().item<double>()});
    row.push_back({"response_length/mean", resp_len.mean().item<double>()});
    row.push_back({"response_length/clip_ratio", lengths["truncated"].mean().item<double>()});
    const double tokens_processed = tokens_in(lengths["last"]);
    if (c_.dynamic_sampling && !keep_informative_groups(joined, scores, n, row)) return tokens_processed;

    if (c_.family.pairs_from_groups) {
      const std::vector<int64_t> pairs = algorithms::best_and_worst(scores, n);
      row.push_back({"batch/pairs", static_cast<double>(pairs.size() / 2)});
      if (!pairs.empty()) update_actor(joined.index(pairs).select({"tokens", "response_mask", "ref_log_prob"}), step, 2, row);
      else row.push_back({"batch/skipped", 1.0});
      return tokens_processed;
    }

    // 4. advantages, on actor rank 0 over the whole step (the KL to the reference in the reward
    // or as a loss), kept there for the updates
    core::Batch s;
    s.set("scores", scores);
    std::vector<std::string> fields = {"response_mask"};
    // The KL to the reference goes into the reward from the old log-probs.
    for (const char* f : {"old_log_prob", "values"})
      if (joined.contains(f)) fields.push_back(f);
    if (joined.contains("old_log_prob") && joined.contains("ref_log_prob")) fields.push_back("ref_log_prob");
    auto adv = group("actor").call(EstimateAdvantages{kl_coef_}, DataRef::join({joined.select(fields), DataRef::of(s)})).get();
    row.insert(row.end(), adv.result().values.begin(), adv.result().values.end());
    row.push_back({"actor/kl_coef", kl_coef_});

    // 5. critic update, 6. actor update
    if (c_.family.critic) {
      t = clock_type::now();
      const DataRef critic_rows = DataRef::join({joined.select({"tokens", "response_mask", "last", "values"}), adv.data.select({"returns"})});
      const auto stats = group("critic").call(UpdateCritic{static_cast<uint64_t>(step)}, Input(critic_rows).grouped(n)).get();
      critic_updated_ = true;
      row.insert(row.end(), stats.result().values.begin(), stats.result().values.end());
      row.push_back({"timing_s/update_critic", seconds_since(t)});
    }
    std::vector<std::string> actor_fields = {"tokens", "response_mask", "last"};  // `last`: micro-batches cut to their longest row
    for (const char* f : {"old_log_prob", "ref_log_prob", "rollout_log_prob"})
      if (joined.contains(f)) actor_fields.push_back(f);
    update_actor(DataRef::join({joined.select(actor_fields), adv.data.select({"advantages"})}), step, n, row);
    if (c_.kl_target > 0) {  // after the update: a step done again must not move it twice
      for (const auto& [k, v] : adv.result().values)
        if (k == "actor/reward_kl") adaptive_kl_.update(v, joined.rows());
      kl_coef_ = adaptive_kl_.value();
    }
    return tokens_processed;
  }

  // The stream of training samples. The ledger resumes the admission count (the prompts of the
  // steps before `start`, or a checkpoint's record) and its finished groups.
  void start_stream(Sampler& sampler, int64_t start) {
    GroupLedger ledger(algorithms::Staleness(c_.async.max_staleness, c_.batch_size), c_.group_size, group("rollout").replicas(),
                       c_.async.max_inflight, seed_ * 1000003);
    const bool saved = !resume_.is_null() && resume_.contains("stream");
    ledger.restore(saved ? resume_.at("stream") : json{{"submitted", start * c_.batch_size}, {"ready", json::array()}});
    // A deterministic run's rows all have one width, so no computation depends on which groups
    // happened to be collected together (a batch's width changes how sums over it round).
    int64_t width = 0;
    if (c_.async.deterministic)
      for (const auto& e : train_.examples) width = std::max<int64_t>(width, static_cast<int64_t>(e.prompt.size()) + c_.max_new_tokens);
    const Submit sampling{.n = c_.group_size, .temperature = c_.temperature, .top_p = c_.top_p, .top_k = c_.top_k,
                          .max_new_tokens = 0, .seed = 0, .stop = {format_->eos()}, .width = width};
    const SampleStream::Roles roles{&group("rollout"), &group("reward"), c_.needs_ref() ? &group("ref") : nullptr,
                                    c_.family.critic ? &group("critic") : nullptr};
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(c_.async.wait_timeout_s * 1000));
    stream_ = std::make_unique<SampleStream>(roles, std::move(ledger), train_, sampler, sampling, timeout);
    stream_->on_loss([this] { return lost().size(); });
    if (saved && stream_->ledger().ready() > 0)
      stream_->restore_ready(resume_dir_ / "stream.safetensors");
    // The schedule: recorded on from the checkpoint's, and followed when the config names one.
    if (saved && resume_.contains("schedule")) stream_->schedule() = Schedule::from_json(resume_.at("schedule"), "the checkpoint");
    std::vector<int64_t> from(static_cast<size_t>(group("rollout").replicas()), 0);
    if (saved && resume_.contains("rollout_steps")) from = resume_.at("rollout_steps").get<std::vector<int64_t>>();
    if (!c_.async.schedule.empty()) {
      stream_->follow(Schedule::from_json(json::parse(core::read_file(c_.async.schedule)), c_.async.schedule), from);
      spdlog::info("async: following the schedule in {}", c_.async.schedule);
      check_drains(*stream_->following(), start);
    } else if (saved) {
      for (int r = 0; r < group("rollout").replicas(); ++r) {
        Follow f;  // counts engine steps on from the checkpoint, so the recorded schedule goes on
        f.from_step = from[static_cast<size_t>(r)];
        group("rollout").call_on(r, f).get();
      }
    }
    if (c_.async.overlaps())
      spdlog::info("async: samples up to {} versions old, in-flight sequences {} at a weight sync, {} objective",
                   algorithms::Staleness(c_.async.max_staleness, 1).str(), c_.async.on_update, c_.async.objective);
  }

  // A checkpoint drains the stream: the groups in flight finish under the weights they have. A
  // run following a schedule can do that only where the recorded run did, or the rollouts would
  // wait for a weight sync the schedule lands before those groups finish, while the trainer waits
  // for the groups. So its checkpoint steps must be among the recorded drains; the version at
  // step s is version_ + s - start.
  void check_drains(const Schedule& s, int64_t start) const {
    for (int64_t step = start + 1; step <= steps_; ++step)
      if (checkpoints_at(step) && !can_drain(version_ + step - start))
        throw ConfigError(fmt::format("async.schedule: this run would checkpoint after step {}, where the recorded run did not (it "
                                      "checkpointed at versions {}); a run repeats its schedule only with the recorded run's "
                                      "checkpoint.every, and train.steps at one of those",
                                      step, s.drains.empty() ? "none" : fmt::format("{}", fmt::join(s.drains, ", "))));
  }
  bool can_drain(int64_t version) const { return !stream_ || !stream_->following() || stream_->following()->drains.count(version); }
  // Every ckpt_every_ steps and after the last.
  bool checkpoints_at(int64_t step) const { return (ckpt_every_ > 0 && step % ckpt_every_ == 0) || step == steps_; }

  // Staleness of the batch, the rollouts' counters and what the last weight sync cost.
  void log_stream(const SampleStream::Taken& taken, core::Scalars& row) {
    const core::Scalars stale = taken.staleness(version_);
    row.insert(row.end(), stale.begin(), stale.end());
    row.push_back({"async/actor_wait_s", taken.waited_s});
    // The rollouts' live counters, summed over ranks.
    std::map<std::string, double> live;
    for (const auto& s : retrying([&] { return workers_.rollout_replicas_polled(); }))
      for (const char* k : {"rollout/tokens", "rollout/idle_s", "rollout/inflight", "rollout/queued"}) live[k] += s.counter(k);
    const double tokens = live["rollout/tokens"];
    if (gen_clock_) row.push_back({"perf/gen_tokens_per_s", (tokens - gen_tokens_) / std::max(seconds_since(*gen_clock_), 1e-9)});
    gen_tokens_ = tokens, gen_clock_ = clock_type::now();
    for (const auto& [k, v] : live) row.push_back({k, v});
    double pause = 0, inflight = 0;
    for (const auto& s : last_sync_) pause = std::max(pause, s.pause_s), inflight += static_cast<double>(s.inflight);
    if (!last_sync_.empty()) {
      row.push_back({"async/sync_pause_s", pause});
      row.push_back({"async/inflight_at_update", inflight});
    }
  }

  // Keeps the groups whose rewards differ (in `joined` and `scores`); false when none do.
  bool keep_informative_groups(DataRef& joined, at::Tensor& scores, int64_t n, core::Scalars& row) {
    const std::vector<int64_t> rows = algorithms::informative_rows(scores, n);
    row.push_back({"batch/kept_groups", static_cast<double>(rows.size() / static_cast<size_t>(n))});
    if (rows.empty()) {
      row.push_back({"batch/skipped", 1.0});
      return false;
    }
    joined = joined.index(rows);
    scores = scores.index_select(0, at::tensor(rows));
    return true;
  }

  // The actor update and the weight sync that follows it.
  void update_actor(const DataRef& rows, int64_t step, int64_t group_rows, core::Scalars& row) {
    auto t = clock_type::now();
    const auto stats = group("actor").call(UpdateActor{static_cast<uint64_t>(step)}, Input(rows).grouped(group_rows)).get();
    row.insert(row.end(), stats.result().values.begin(), stats.result().values.end());
    row.push_back({"timing_s/update_actor", seconds_since(t)});
    ++version_;
    if (c_.uses("rollout")) {
      t = clock_type::now();
      sync_weights();
      row.push_back({"timing_s/sync_weights", seconds_since(t)});
      double bytes = 0, fetch = 0, buckets = 0;
      for (const auto& s : last_sync_)
        bytes += static_cast<double>(s.received_bytes), fetch = std::max(fetch, s.fetch_s), buckets += static_cast<double>(s.buckets);
      if (c_.placement == "split")
        row.insert(row.end(), {{"sync/received_mib", bytes / (1 << 20)}, {"sync/buckets", buckets}, {"timing_s/sync_fetch", fetch}});
    }
  }

  // Every rollout worker to the actor's version (RlhfWorkers::sync_weights). One that fails
  // meanwhile gets the weights when it is replaced.
  void sync_weights() {
    try {
      last_sync_ = workers_.sync_weights(version_);
    } catch (const Error&) {
      if (lost().empty()) throw;
      last_sync_.clear();
      return;
    }
    if (stream_) {
      std::vector<int64_t>& steps = stream_->schedule().syncs[version_];
      steps.clear();
      for (const auto& s : last_sync_) steps.push_back(s.step);
    }
  }

  // ---- evaluation: greedy answers to held-out prompts, or reward-model accuracy on held-out pairs ----

  void log_eval(RunContext& ctx, int64_t step, RunResult& result) {
    const auto t = clock_type::now();
    const size_t n = std::min<size_t>(static_cast<size_t>(eval_n_), val_.examples.size());
    core::Scalars row = retrying([&] { return workers_.held_out(val_, n, format_->eos(), version_); });
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

  // ---- checkpoints: the models (with their optimizers) under checkpoints/step-N, then the manifest ----

  // The stream drains first: the groups admitted for later versions finish generating, and those
  // not trained yet are saved with the checkpoint, so a resumed run trains every prompt once.
  void checkpoint(const fs::path& run_dir, int64_t step, const Sampler& sampler, double train_time_s) {
    const std::string dir = step_dir(step);
    checkpoints_.poll(true);  // one at a time
    group("actor").call(SaveActor{.dir = (run_dir / dir / "actor").string(), .step = step, .background = ckpt_async_}).get();
    if (c_.family.critic)
      group("critic").call(SaveCritic{.dir = (run_dir / dir / "critic").string(), .step = step, .background = ckpt_async_}).get();
    json manifest = {{"program", "rlhf"}, {"step", step}, {"version", version_}, {"dir", dir}, {"sampler", sampler.state()},
                     {"kl_coef", kl_coef_}, {"train_time_s", train_time_s}};
    if (stream_) retrying([&] {  // a replaced worker's groups are generated again, and the stream drains again
        stream_->drain();
        stream_->schedule().drains.insert(version_);
        manifest["stream"] = stream_->ledger().state();
        manifest["schedule"] = stream_->schedule().to_json();
        std::vector<int64_t> steps;
        for (const auto& s : workers_.rollout_replicas_polled()) steps.push_back(static_cast<int64_t>(s.counter("rollout/step")));
        manifest["rollout_steps"] = steps;
        stream_->save_schedule(run_dir / "schedule.json");
        stream_->save_ready(run_dir / dir / "stream.safetensors");
      });
    // The background saves' files are whole once each model's directory says so (a worker that
    // failed meanwhile never says so: the checkpoint is dropped).
    checkpoints_.add(run_dir, step, manifest.dump(2), ckpt_keep_, [this, d = run_dir / dir] {
      if (cluster_) cluster_->check();
      return !ckpt_async_ || (background_written(d / "actor") && (!c_.family.critic || background_written(d / "critic")));
    });
    if (!ckpt_async_) checkpoints_.flush();
  }

  // Loads the checkpoint `resume()` found; returns its step.
  int64_t restore(const fs::path& run_dir, Sampler& sampler) {
    const int64_t step = resume_.at("step").get<int64_t>();
    const fs::path dir = run_dir / resume_.at("dir").get<std::string>();
    resume_dir_ = dir;
    sampler.restore(resume_.at("sampler"));
    kl_coef_ = resume_.value("kl_coef", kl_coef_);
    version_ = resume_.value("version", step);
    group("actor").call(LoadActor{.dir = (dir / "actor").string(), .version = version_, .step = step}).get();
    if (c_.family.critic) group("critic").call(LoadCritic{.dir = (dir / "critic").string(), .step = step}).get();
    if (c_.uses("rollout")) sync_weights();
    spdlog::info("resumed at step {} from {}", step, resume_.at("dir").get<std::string>());
    return step;
  }

  // The policy in Hugging Face's layout with its tokenizer: what the next stage's model.path names.
  void save_final(const fs::path& run_dir) {
    const fs::path final_dir = run_dir / "final";
    group("actor").call(SaveActor{.dir = final_dir.string(), .optimizer = false}).get();
    const fs::path tok = c_.tokenizer.empty() ? c_.model_path : c_.tokenizer;
    fs::copy_file(fs::is_directory(tok) ? tok / "tokenizer.json" : tok, final_dir / "tokenizer.json", fs::copy_options::overwrite_existing);
    spdlog::info("final model: {}", final_dir.string());
  }

  const Example& ex(int64_t i) const { return train_.examples[static_cast<size_t>(i)]; }

  Experiment experiment_;
  RlhfConfig c_;
  RlhfWorkers workers_{c_, experiment_};
  int64_t steps_ = 100, eval_every_ = 0, eval_n_ = 200, ckpt_every_ = 0;
  int ckpt_keep_ = 2;
  bool ckpt_async_ = true;
  CheckpointWriter checkpoints_;
  bool eval_at_start_ = true;
  double call_timeout_s_ = 600;
  uint64_t seed_ = 1;
  std::unique_ptr<models::Tokenizer> tokenizer_;
  std::unique_ptr<Formatter> format_;
  Dataset train_, val_;
  json resume_;
  fs::path resume_dir_;  // the checkpoint's directory, when resuming
  Cluster* cluster_ = nullptr;
  RunRestarts restarts_;
  std::unique_ptr<SampleStream> stream_;  // the training samples, for the algorithms that generate
  std::vector<Synced> last_sync_;         // what the last weight sync cost each rollout
  double gen_tokens_ = 0;                         // the rollouts' token count at the last row
  std::optional<clock_type::time_point> gen_clock_;  // and when it was logged
  int64_t version_ = 0;
  bool critic_updated_ = false;  // in this step, before the actor's update
  double kl_coef_ = 0;
  algorithms::AdaptiveKl adaptive_kl_{0, 1, 1};
};

ProgramRegistration rlhf("rlhf", [](core::ConfigView root, const Experiment& e) -> std::unique_ptr<Program> {
  return std::make_unique<RlhfProgram>(root, e);
});

}  // namespace
}  // namespace flotilla::controller
