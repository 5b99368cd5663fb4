#include "actors/lm/config.hpp"

#include <algorithm>
#include <map>

#include <filesystem>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "models/generation.hpp"
#include "models/transformer.hpp"
#include "envs/text_tasks.hpp"

namespace flotilla::actors::lm {
namespace {

const std::vector<std::string> kRoles = {"actor", "rollout", "ref", "critic", "reward"};

DataConfig read_data(core::ConfigView data, const algorithms::LmAlgorithm& family, const std::string& algo) {
  DataConfig d;
  d.train = data.get<std::string>("train", "");
  if (d.train.empty()) data.fail("train", "set data.train to a JSONL dataset (make one with `flotilla data make TASK`)");
  d.val = data.get<std::string>("val", "");
  d.train_kind = data.choice("kind", family.data, {"verifiable", "sft", "preference"});
  if (d.train_kind != family.data) data.fail("kind", algo + " trains on " + family.data + " data, not " + d.train_kind);
  d.val_kind = data.choice("val_kind", family.val_data, {"verifiable", "preference"});
  d.format = data.choice("prompt_format", "plain", {"plain", "chat"});
  d.chat_template = data.get<std::string>("chat_template", "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n");
  if (d.chat_template.find("{prompt}") == std::string::npos) data.fail("chat_template", "the chat template needs a {prompt} placeholder");
  d.system = data.get<std::string>("system", "");
  if (!d.system.empty() && d.format != "chat") data.fail("system", "a system message needs prompt_format: chat");
  d.eos = data.get<std::string>("eos", d.format == "chat" ? "<|im_end|>" : "<|endoftext|>");
  d.max_prompt_tokens = data.get<int64_t>("max_prompt_tokens", 256, core::at_least<int64_t>(1));
  d.max_response_tokens = data.get<int64_t>("max_response_tokens", 256, core::at_least<int64_t>(2));
  d.overlong_prompts = data.choice("overlong_prompts", "filter", {"filter", "truncate", "error"});
  return d;
}

RewardConfig read_reward(core::ConfigView reward) {
  RewardConfig r;
  r.kind = reward.choice("kind", "rule", {"rule", "model", "command"});
  r.rule = reward.choice("rule", "exact", {"exact", "numeric", "similarity"});
  r.format = reward.get<std::string>("format", "");
  r.format_weight = reward.get<double>("format_weight", r.format.empty() ? 0.0 : 0.1, core::at_least(0.0));
  if (r.format_weight > 0) envs::format_reward("", r.format);  // a bad pattern fails now, not mid-run
  core::ConfigView length = reward.section("length_penalty");
  r.length_limit = length.get<int64_t>("limit", 0, core::at_least<int64_t>(0));
  r.length_coef = length.get<double>("coef", 0.0, core::at_least(0.0));
  envs::RewardCommand& c = r.command;
  c.text = reward.get<std::string>("command", "");
  c.shell = reward.get<bool>("shell", false);
  if (r.kind == "command" && c.text.find_first_not_of(" \t") == std::string::npos)
    reward.fail("command", "reward.kind: command needs reward.command, the program to run and its arguments");
  if (const char s = envs::shell_syntax(c.text); s && !c.shell)
    reward.fail("command", std::string("'") + s + "' is shell syntax, and the command runs without a shell; set reward.shell: true to run it under /bin/sh");
  c.timeout_s = reward.get<double>("timeout_s", 30.0, core::greater_than(0.0));
  c.cpu_s = reward.get<double>("cpu_s", 300.0, core::at_least(0.0));
  c.memory_mb = reward.get<int64_t>("memory_mb", 8192, core::at_least<int64_t>(0));
  r.on_error = reward.choice("on_error", "stop", {"stop", "zero"});
  return r;
}

// algo: the family, group sizes, KL, shaping, the policy loss and the optimizers.
void read_algo(core::ConfigView algo, RlhfConfig& c) {
  c.algo = algorithms::lm_algorithms().choose(algo, "name", "grpo");
  c.family = algorithms::lm_algorithms().at(c.algo);
  const auto& f = c.family;
  c.batch_size = algo.get<int64_t>("batch_size", 16, core::at_least<int64_t>(1));
  c.group_size = algo.get<int64_t>("group_size", f.group_size, core::in_range<int64_t>(1, 4096));
  if (c.group_size < f.min_group)
    algo.fail("group_size", c.algo + " compares the samples of a prompt: group_size must be at least " + std::to_string(f.min_group));
  c.norm_by_std = algo.get<bool>("norm_by_std", true);
  c.gamma = algo.get<double>("gamma", 1.0, core::in_range(0.0, 1.0));
  c.lam = algo.get<double>("lam", 0.95, core::in_range(0.0, 1.0));
  core::ConfigView kl = algo.section("kl");
  c.kl_coef = kl.get<double>("coef", 0.0, core::at_least(0.0));
  c.kl_in = kl.choice("in", f.kl_in, {"loss", "reward"});
  c.loss.kl_estimator = kl.choice("estimator", "k3", {"k1", "k2", "k3"});
  c.kl_target = kl.get<double>("target", 0.0, core::at_least(0.0));
  c.kl_horizon = kl.get<double>("horizon", 10000.0, core::greater_than(0.0));
  if (c.kl_target > 0 && c.kl_in != "reward") kl.fail("target", "an adaptive KL coefficient applies to the KL in the reward (kl.in: reward)");
  if (c.kl_in == "loss") c.loss.kl_loss_coef = c.kl_coef;
  c.dynamic_sampling = algo.get<bool>("dynamic_sampling", false);
  if (c.dynamic_sampling && c.group_size < 2) algo.fail("dynamic_sampling", "dynamic sampling drops groups whose rewards are all equal: it needs group_size >= 2");
  core::ConfigView overlong = algo.section("overlong");
  c.overlong_buffer = overlong.get<int64_t>("buffer", 0, core::at_least<int64_t>(0));
  c.overlong_penalty = overlong.get<double>("penalty", 1.0, core::at_least(0.0));
  c.loss.loss = f.loss;
  c.loss.clip_low = algo.get<double>("clip_low", 0.2, core::in_range(0.0, 1.0));
  c.loss.clip_high = algo.get<double>("clip_high", c.loss.clip_low, core::at_least(0.0));
  c.loss.aggregation = algo.choice("loss_agg", "token-mean", {"token-mean", "seq-mean", "seq-sum"});
  c.loss.entropy_coef = algo.get<double>("entropy_coef", 0.0, core::at_least(0.0));
  core::ConfigView dpo = algo.section("dpo");
  c.loss.dpo_beta = dpo.get<double>("beta", 0.1, core::greater_than(0.0));
  c.loss.dpo_kind = dpo.choice("kind", "sigmoid", {"sigmoid", "ipo"});
  c.loss.label_smoothing = dpo.get<double>("label_smoothing", 0.0, core::in_range(0.0, 0.5));
  c.loss.dpo_nll_coef = dpo.get<double>("nll_coef", 0.0, core::at_least(0.0));
  c.actor_optim = algorithms::LmOptimConfig::read(algo.section("actor"), f.lr);
  core::ConfigView critic = algo.section("critic");
  if (f.critic) {
    c.critic_optim = algorithms::LmOptimConfig::read(critic, 1e-5);
    c.value_clip = critic.get<double>("value_clip", 0.2, core::greater_than(0.0));
  } else if (algo.has("critic")) {
    algo.fail("critic", "only an algorithm with a critic trains one (ppo), not '" + c.algo + "'");
  }
}

void read_rollout(core::ConfigView rollout, RlhfConfig& c) {
  c.max_new_tokens = rollout.get<int64_t>("max_new_tokens", 32, core::in_range<int64_t>(1, 1 << 20));
  c.temperature = rollout.get<double>("temperature", 1.0, core::at_least(0.0));
  c.top_p = rollout.get<double>("top_p", 1.0, core::in_range(0.0, 1.0));
  c.top_k = rollout.get<int64_t>("top_k", 0, core::at_least<int64_t>(0));
  c.block_size = rollout.get<int64_t>("block_size", 16, core::in_range<int64_t>(1, 4096));
  c.num_blocks = rollout.get<int64_t>("num_blocks", 4096, core::at_least<int64_t>(1));
  c.max_batch = rollout.get<int64_t>("max_batch", 256, core::at_least<int64_t>(1));
  c.prefill_chunk = rollout.get<int64_t>("prefill_chunk", 256, core::at_least<int64_t>(1));
  c.weights = rollout.choice("weights", "float32", {"float32", "bfloat16"});
  c.sync_bucket_mb = rollout.get<double>("sync_bucket_mb", 32.0, core::in_range(0.001, 4096.0));
  c.sync_window = rollout.get<int>("sync_window", 4, core::in_range(1, 1024));
}

// async: checked against the algorithm and the placement, which decide whether it can overlap.
void read_async(core::ConfigView a, RlhfConfig& c) {
  AsyncConfig& x = c.async;
  x.max_staleness = a.get<int64_t>("max_staleness", 0, core::at_least<int64_t>(AsyncConfig::kUnbounded));
  x.on_update = a.choice("on_update", "continue", {"continue", "recompute", "abort"});
  x.objective = a.choice("objective", "decoupled", {"decoupled", "plain"});
  x.is_cap = a.get<double>("is_cap", 5.0, core::greater_than(1.0));
  x.max_inflight = a.get<int64_t>("max_inflight", 0, core::at_least<int64_t>(0));
  x.deterministic = a.get<bool>("deterministic", false);
  x.schedule = a.get<std::string>("schedule", "");
  if (!x.schedule.empty() && !x.deterministic) a.fail("schedule", "a schedule is followed only with async.deterministic: true");
  if (x.deterministic && x.max_inflight > 0) a.fail("max_inflight", "a deterministic run admits by the staleness bound alone; leave max_inflight at 0");
  if (x.deterministic && x.max_staleness == AsyncConfig::kUnbounded)
    a.fail("deterministic", "a deterministic run needs a staleness bound (max_staleness 0 or more)");
  x.wait_timeout_s = a.get<double>("wait_timeout_s", 600.0, core::greater_than(0.0));
  c.loss.off_policy = x.objective;
  c.loss.is_cap = x.is_cap;
  if (!x.overlaps()) return;
  if (!c.family.generates())
    a.fail("max_staleness", c.algo + " trains on a fixed dataset and generates nothing, so there is nothing to overlap; "
                            "async applies to the algorithms that sample (ppo, grpo, rloo, reinforce_pp, online_dpo)");
  if (c.placement == "colocated")
    a.fail("max_staleness", "with placement: colocated one worker both generates and trains, so the two cannot overlap; "
                            "use placement: split for asynchronous training, or max_staleness: 0");
  if (c.group("rollout").parallel.tp > 1)
    a.fail("max_staleness", "a tensor-parallel rollout (parallel.tp > 1) generates synchronously: its ranks must take each "
                            "weight sync at the same engine step, which continuous generation does not arrange yet; "
                            "use max_staleness: 0, or rollout replicas (parallel.dp)");
}

// A worker group's `parallel: {dp, fsdp, tp}` and `count` (their product; either may be given).
// Training roles take every degree; generation and inference roles replicate (dp) and split
// tensors (tp), as they keep no training state to shard.
void read_parallel(const core::ConfigView& w, RlhfConfig::Group& g) {
  const bool trains = g.role == "actor" || g.role == "critic";
  if (w.has("parallel")) {
    const core::ConfigView p = w.section("parallel");
    g.parallel.dp = p.get<int>("dp", 1, core::in_range(1, 1024));
    g.parallel.fsdp = p.get<int>("fsdp", 1, core::in_range(1, 1024));
    g.parallel.tp = p.get<int>("tp", 1, core::in_range(1, 64));
    if (g.parallel.fsdp > 1 && !trains)
      p.fail("fsdp", "fsdp shards training state (gradients, Adam); the " + g.role + " role trains nothing: use dp and tp");
    if (g.parallel.tp > 1 && g.role == "reward")
      p.fail("tp", "the reward role scores with rules, commands or a small reward model and runs data-parallel only: use dp");
  }
  const int product = g.parallel.size();
  g.count = w.get<int>("count", product, core::in_range(1, 1024));
  if (!w.has("parallel")) g.parallel.dp = g.count;
  else if (g.count != product)
    w.fail("count", "count " + std::to_string(g.count) + " does not match parallel " + g.parallel.str() + " (" +
                        std::to_string(product) + " ranks); give one of them");
}

// placement: and workers: the process groups to start.
void read_workers(core::ConfigView root, RlhfConfig& c) {
  c.placement = root.choice("placement", "colocated", {"colocated", "split"});
  std::map<std::string, RlhfConfig::Group> given;
  for (auto w : root.list("workers")) {
    RlhfConfig::Group g;
    g.role = w.choice("role", "actor", kRoles);
    g.threads = w.get<int>("threads", 1, core::in_range(1, 256));
    read_parallel(w, g);
    if (given.count(g.role)) w.fail("role", "role '" + g.role + "' is listed twice");
    if (!c.uses(g.role)) w.fail("role", c.algo + " does not use a '" + g.role + "' role");
    if (c.placement == "colocated" && g.role != "actor")
      w.fail("role", "with placement: colocated every role runs in the actor's workers; list only role: actor (or use placement: split)");
    given[g.role] = g;
  }
  if (c.placement == "colocated") {
    RlhfConfig::Group g = given.count("actor") ? given["actor"] : RlhfConfig::Group{"actor", 1, 1, {}};
    g.role = "colocated";
    c.workers.push_back(g);
  } else {
    for (const auto& r : c.roles) c.workers.push_back(given.count(r) ? given[r] : RlhfConfig::Group{r, 1, 1, {}});
  }
}

}  // namespace

RlhfConfig RlhfConfig::read(core::ConfigView root) {
  RlhfConfig c;
  read_algo(root.section("algo"), c);
  core::ConfigView model = root.section("model");
  c.model_path = model.get<std::string>("path", "");
  if (c.model_path.empty()) model.fail("path", "set model.path to a model directory (make one with `flotilla lm init`)");
  c.tokenizer = model.get<std::string>("tokenizer", "");
  c.ref_path = model.get<std::string>("ref", "");
  c.critic_path = model.get<std::string>("critic", "");
  c.reward_path = model.get<std::string>("reward", "");
  read_rollout(root.section("rollout"), c);
  if (c.overlong_buffer >= c.max_new_tokens)
    root.section("algo").section("overlong").fail(
        "buffer", "the overlong buffer must be shorter than rollout.max_new_tokens (" + std::to_string(c.max_new_tokens) + ")");
  c.data = read_data(root.section("data"), c.family, c.algo);
  c.reward = read_reward(root.section("reward"));
  if (c.reward.kind == "model" && c.reward_path.empty() && c.family.generates())
    model.fail("reward", "reward.kind: model needs model.reward, a reward-model directory (train one with algo.name: reward_model)");
  // The roles this algorithm uses: generations (training samples, or held-out answers) are scored
  // by the reward role.
  c.roles = {"actor"};
  if (!c.family.pair_eval()) c.roles.insert(c.roles.end(), {"rollout", "reward"});
  if (c.needs_ref()) c.roles.push_back("ref");
  if (c.family.critic) c.roles.push_back("critic");
  read_workers(root, c);
  read_async(root.section("async"), c);
  return c;
}

std::string RlhfConfig::model_of(const std::string& role) const {
  const std::string& own = role == "ref" ? ref_path : role == "critic" ? critic_path : model_path;
  return own.empty() ? model_path : own;
}

void RlhfConfig::check_models_split() const {
  for (const std::string role : {"actor", "rollout", "ref", "critic"}) {
    const int tp = uses(role) ? group(group_of(role)).parallel.tp : 1;
    if (tp <= 1) continue;
    const std::filesystem::path file = std::filesystem::path(model_of(role)) / "config.json";
    try {
      models::LmConfig::from_json(core::read_file(file), file.string()).check_tensor_parallel(tp);
    } catch (const ConfigError& e) {
      throw ConfigError("workers: the " + role + " role's parallel.tp " + std::to_string(tp) + " does not fit " + model_of(role) + ": " +
                        e.what());
    }
  }
}

bool RlhfConfig::uses(const std::string& role) const { return std::find(roles.begin(), roles.end(), role) != roles.end(); }
std::string RlhfConfig::group_of(const std::string& role) const { return placement == "colocated" ? "colocated" : role; }
const RlhfConfig::Group& RlhfConfig::group(const std::string& name) const {
  for (const auto& g : workers)
    if (g.role == name) return g;
  throw Error("no worker group '" + name + "'");
}

models::EngineConfig RlhfConfig::engine() const {
  return {.block_size = block_size, .num_blocks = num_blocks, .max_batch = max_batch, .prefill_chunk = prefill_chunk, .weights = weights};
}

}  // namespace flotilla::actors::lm
