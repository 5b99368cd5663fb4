#include "actors/lm/stream.hpp"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.hpp"
#include "runtime/data.hpp"

namespace flotilla::actors::lm {
namespace {
double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A lockstep header: kind, weights version, restart action, then the number of groups admitted
// (their ids follow in a second broadcast).
enum HeaderKind : int64_t { kStep = 0, kIdle = 1, kStop = 2 };
const std::vector<std::string> kActions = {"", "recompute", "abort"};
}  // namespace

RolloutStream::RolloutStream(RolloutWeights& weights, const RlhfConfig& config, runtime::Lifecycle& life, const Lockstep* lockstep)
    : weights_(weights), c_(config), life_(life), lockstep_(lockstep) {}

RolloutStream::~RolloutStream() = default;

void RolloutStream::submit(const Submit& s, const core::Batch& rows) {
  if (rows.size() == 0) return;
  for (const char* f : {"prompt_tokens", "prompt_len", "example", "group", "seed", "admitted"})
    if (!rows.contains(f)) throw FormatError(std::string("rollout.submit needs a '") + f + "' field");
  const at::Tensor pt = rows["prompt_tokens"].contiguous(), pl = rows["prompt_len"].contiguous();
  const auto tokens = pt.accessor<int64_t, 2>();
  const auto len = pl.accessor<int64_t, 1>();
  const models::SamplingParams sampling = sampling_of(c_, s.temperature, s.top_p, s.top_k, s.max_new_tokens, s.stop);
  std::vector<Prompt> prompts;
  for (int64_t p = 0; p < rows.size(); ++p) {
    Prompt x;
    for (int64_t t = 0; t < len[p]; ++t) x.tokens.push_back(static_cast<int32_t>(tokens[p][t]));
    x.group = rows["group"][p].item<int64_t>();
    x.example = rows["example"][p].item<int64_t>();
    x.admitted = rows["admitted"][p].item<int64_t>();
    x.seed = static_cast<uint64_t>(rows["seed"][p].item<int64_t>());
    x.sampling = sampling;
    x.n = static_cast<int>(s.n);
    x.width = s.width;
    prompts.push_back(std::move(x));
  }
  {
    std::lock_guard lock(mutex_);
    for (auto& x : prompts) inbox_.push_back(std::move(x));
  }
  work_.notify_all();
}

core::Batch RolloutStream::collect(std::chrono::milliseconds wait) {
  std::vector<core::Batch> parts;
  {
    std::unique_lock lock(mutex_);
    finished_.wait_for(lock, wait, [this] { return !done_.empty() || life_.stopping(); });
    parts.swap(done_);
  }
  return runtime::concat_padded(std::move(parts));
}

void RolloutStream::follow(const Follow& f) {
  if (f.start_groups.size() != f.start_steps.size() || f.sync_versions.size() != f.sync_steps.size())
    throw FormatError("rollout.follow: a schedule's groups and steps differ in number");
  std::lock_guard lock(mutex_);
  if (!running_.empty() || !inbox_.empty()) throw Error("rollout.follow comes before the first prompt");
  step_ = f.from_step;
  replay_ = f.replay && (!lockstep_ || lockstep_->leader);  // a follower follows its leader
  starts_.clear();
  sync_at_.clear();
  for (size_t i = 0; i < f.start_groups.size(); ++i) starts_[f.start_steps[i]].push_back(f.start_groups[i]);
  for (size_t i = 0; i < f.sync_versions.size(); ++i) sync_at_[f.sync_versions[i]] = f.sync_steps[i];
}

void RolloutStream::await_turn(int64_t version) {
  std::unique_lock lock(mutex_);
  if (!replay_) return;
  const auto at = sync_at_.find(version);
  if (at == sync_at_.end()) throw Error("the schedule this rollout follows has no sync of version " + std::to_string(version));
  stepped_.wait(lock, [&] { return step_ >= at->second || life_.stopping(); });
  if (step_ > at->second)
    throw Error("the weights of version " + std::to_string(version) + " came after engine step " + std::to_string(at->second) +
                ", where the schedule lands them");
}

RolloutStream::Landed RolloutStream::on_update(const std::string& mode) {
  if (mode != "continue" && mode != "recompute" && mode != "abort")
    throw Error("on_update '" + mode + "' is not one of continue, recompute, abort");
  std::lock_guard lock(mutex_);
  if (mode != "continue" && inflight_ > 0) action_ = mode;
  return {inflight_, step_};
}

void RolloutStream::wake() {
  work_.notify_all();
  finished_.notify_all();
  stepped_.notify_all();
}

core::Scalars RolloutStream::counters() const {
  std::lock_guard lock(mutex_);
  return {{"rollout/tokens", static_cast<double>(tokens_)},
          {"rollout/groups", static_cast<double>(groups_done_)},
          {"rollout/inflight", static_cast<double>(inflight_)},
          {"rollout/idle_s", idle_s_},
          {"rollout/queued", static_cast<double>(inbox_.size())},
          {"rollout/step", static_cast<double>(step_)}};
}

// Whether the next engine step may run: free-running, when a group is in the engine or a queued
// one may start; following a schedule, when the groups that start at this step are queued and
// the weights that land before it are in.
bool RolloutStream::ready_to_step() const {
  if (replay_) {
    const auto s = starts_.find(step_);
    if (s != starts_.end())
      for (int64_t g : s->second)
        if (std::none_of(inbox_.begin(), inbox_.end(), [g](const Prompt& p) { return p.group == g; })) return false;
    for (const auto& [version, at] : sync_at_)
      if (at <= step_ && weights_.version < version) return false;
    return !running_.empty() || s != starts_.end();  // past the schedule's end: nothing to do
  }
  if (!running_.empty()) return true;
  return std::any_of(inbox_.begin(), inbox_.end(), [this](const Prompt& p) { return p.admitted <= weights_.version; });
}

bool RolloutStream::wait_for_work() {
  std::unique_lock lock(mutex_);
  if (ready_to_step()) return !life_.stopping();
  const auto t0 = std::chrono::steady_clock::now();
  {
    runtime::Lifecycle::Idle idle(life_);  // a pause need not wait for work to come
    const auto ready = [&] { return life_.stopping() || ready_to_step(); };
    if (!lockstep_) {
      work_.wait(lock, ready);
    } else {
      while (!work_.wait_for(lock, lockstep_->heartbeat, ready)) {
        lock.unlock();
        send_header(kIdle, 0, "", {});
        lock.lock();
      }
    }
  }
  idle_s_ += seconds(std::chrono::steady_clock::now() - t0);
  return !life_.stopping();
}

void RolloutStream::send_header(int64_t kind, int64_t version, const std::string& action, const std::vector<int64_t>& groups) {
  const int64_t code = std::find(kActions.begin(), kActions.end(), action) - kActions.begin();
  at::Tensor head = at::tensor({kind, version, code, static_cast<int64_t>(groups.size())}, at::kLong);
  lockstep_->broadcast(head);
  if (groups.empty()) return;
  at::Tensor ids = at::tensor(groups, at::kLong);
  lockstep_->broadcast(ids);
}

void RolloutStream::run() {
  if (lockstep_ && !lockstep_->leader) return mirror();
  std::unique_ptr<models::GenerationEngine> engine;
  int64_t counted = 0;
  while (life_.checkpoint()) {
    if (!wait_for_work()) break;
    if (!engine) {
      engine = std::make_unique<models::GenerationEngine>(
          *weights_.model, c_.engine());
      counted = 0;
    }
    bool stepped = false;
    {
      std::lock_guard lock(weights_.mutex);
      const std::string action = restart_inflight(*engine);
      const std::vector<int64_t> started = admit(*engine);
      if (lockstep_) send_header(kStep, weights_.version, action, started);
      engine->set_policy_version(weights_.version);
      stepped = engine->step();
      std::lock_guard count(mutex_);
      ++step_;
      tokens_ += engine->stats().decode_tokens - counted;
      counted = engine->stats().decode_tokens;
    }
    stepped_.notify_all();
    finish_step(engine, stepped);
  }
  if (lockstep_) send_header(kStop, 0, "", {});
}

// A follower: each step as its leader's header says, once the prompts it names and the weights
// it runs are here.
void RolloutStream::mirror() {
  std::unique_ptr<models::GenerationEngine> engine;
  int64_t counted = 0;
  while (true) {
    at::Tensor head = at::zeros({4}, at::kLong);
    {
      runtime::Lifecycle::Idle idle(life_);
      lockstep_->broadcast(head);
    }
    const int64_t kind = head[0].item<int64_t>(), version = head[1].item<int64_t>(), n = head[3].item<int64_t>();
    if (kind == kStop) return;
    if (kind == kIdle) continue;
    const std::string action = kActions.at(static_cast<size_t>(head[2].item<int64_t>()));
    std::vector<int64_t> groups(static_cast<size_t>(n));
    if (n > 0) {
      at::Tensor ids = at::zeros({n}, at::kLong);
      lockstep_->broadcast(ids);
      groups.assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + n);
    }
    {
      std::unique_lock lock(mutex_);
      const auto here = [&] {
        for (int64_t g : groups)
          if (std::none_of(inbox_.begin(), inbox_.end(), [g](const Prompt& p) { return p.group == g; })) return false;
        return weights_.version >= version;
      };
      runtime::Lifecycle::Idle idle(life_);
      work_.wait(lock, [&] { return life_.stopping() || here(); });
      if (life_.stopping()) return;
      if (weights_.version > version)
        throw Error("this tensor-parallel rollout rank has weights of version " + std::to_string(weights_.version.load()) +
                    " where its leader steps with version " + std::to_string(version));
    }
    if (!engine) {
      engine = std::make_unique<models::GenerationEngine>(
          *weights_.model, c_.engine());
      counted = 0;
    }
    {
      std::lock_guard lock(weights_.mutex);
      restart_inflight(*engine, &action);
      admit(*engine, &groups);
      engine->set_policy_version(version);
      engine->step();
      std::lock_guard count(mutex_);
      ++step_;
      tokens_ += engine->stats().decode_tokens - counted;
      counted = engine->stats().decode_tokens;
    }
    stepped_.notify_all();
    finish_step(engine, true);
  }
}

void RolloutStream::finish_step(std::unique_ptr<models::GenerationEngine>& engine, bool stepped) {
  std::vector<Running> whole = finish(*engine, engine->take_finished());
  if (!stepped && !running_.empty()) throw Error("the rollout engine went idle with groups unfinished");
  if (running_.empty()) engine.reset();  // its KV cache goes while nothing is generated
  for (auto& r : whole) publish(r);
}

std::vector<int64_t> RolloutStream::admit(models::GenerationEngine& engine, const std::vector<int64_t>* named) {
  std::vector<Prompt> starting;
  {
    std::lock_guard lock(mutex_);
    std::vector<int64_t> scheduled;
    if (named) scheduled = *named;
    else if (replay_ && starts_.count(step_)) scheduled = starts_.at(step_);
    for (int64_t g : scheduled)  // in the recorded order
      for (auto it = inbox_.begin(); it != inbox_.end(); ++it)
        if (it->group == g) {
          starting.push_back(std::move(*it));
          inbox_.erase(it);
          break;
        }
    for (auto it = inbox_.begin(); !replay_ && !named && it != inbox_.end();) {
      if (it->admitted > weights_.version) {
        ++it;
        continue;
      }
      starting.push_back(std::move(*it));
      it = inbox_.erase(it);
    }
    for (auto& p : starting) p.start_step = step_;
  }
  std::vector<int64_t> groups;
  for (const auto& p : starting) groups.push_back(p.group);
  for (auto& p : starting) {
    Running& r = running_[p.group];
    r.prompt = std::move(p);
    r.done.assign(static_cast<size_t>(r.prompt.n), Sample{});
    r.partial.assign(static_cast<size_t>(r.prompt.n), Sample{});
    r.finished.assign(static_cast<size_t>(r.prompt.n), false);
    std::vector<int> all(static_cast<size_t>(r.prompt.n));
    for (int k = 0; k < r.prompt.n; ++k) all[static_cast<size_t>(k)] = k;
    start(engine, r, all, false);
  }
  return groups;
}

// Submits `samples` of a group: all of them as one request (its prompt prefilled once and shared),
// or, resuming, each from the tokens it had.
void RolloutStream::start(models::GenerationEngine& engine, Running& r, const std::vector<int>& samples, bool resume) {
  models::GenerationRequest q;
  q.id = r.prompt.group;
  q.prompt = r.prompt.tokens;
  q.n = static_cast<int>(samples.size());
  q.sampling = r.prompt.sampling;
  q.sampling.seed = r.prompt.seed + 7919ull * static_cast<uint64_t>(r.attempt);
  if (resume)
    for (int k : samples) q.resume.push_back(r.partial[static_cast<size_t>(k)].tokens);
  r.slot = samples;
  engine.submit(std::move(q));
}

std::vector<RolloutStream::Running> RolloutStream::finish(models::GenerationEngine& engine, std::vector<models::Generation> gens) {
  std::vector<Running> whole;
  for (auto& g : gens) {
    auto it = running_.find(g.request_id);
    if (it == running_.end()) continue;
    Running& r = it->second;
    const int k = r.slot.at(static_cast<size_t>(g.sample));
    Sample& part = r.partial[static_cast<size_t>(k)];
    if (g.finish_reason == "abort" && r.restart == "abort") {
      part = Sample{};  // requeued: it starts again from the prompt
      continue;
    }
    part.tokens.insert(part.tokens.end(), g.tokens.begin(), g.tokens.end());
    part.logprobs.insert(part.logprobs.end(), g.logprobs.begin(), g.logprobs.end());
    part.versions.insert(part.versions.end(), g.versions.begin(), g.versions.end());
    const bool full = static_cast<int64_t>(part.tokens.size()) >= r.prompt.sampling.max_new_tokens;
    if (g.finish_reason == "abort" && !full) continue;  // resumed below
    part.truncated = g.finish_reason == "length" || g.finish_reason == "abort";
    r.done[static_cast<size_t>(k)] = std::move(part);
    part = Sample{};
    r.finished[static_cast<size_t>(k)] = true;
  }
  // Groups a sync restarted: nothing of theirs is left in the engine; their unfinished samples go
  // in again, from their tokens so far (recompute) or from the prompt (abort).
  for (auto& [id, r] : running_) {
    if (r.restart.empty()) continue;
    std::vector<int> left;
    for (int k = 0; k < r.prompt.n; ++k)
      if (!r.finished[static_cast<size_t>(k)]) left.push_back(k);
    r.restart.clear();
    ++r.attempt;
    if (!left.empty()) start(engine, r, left, true);
  }
  for (auto it = running_.begin(); it != running_.end();) {
    if (std::find(it->second.finished.begin(), it->second.finished.end(), false) != it->second.finished.end()) {
      ++it;
      continue;
    }
    whole.push_back(std::move(it->second));
    it = running_.erase(it);
  }
  int64_t inflight = 0;
  for (const auto& [id, r] : running_) inflight += std::count(r.finished.begin(), r.finished.end(), false);
  std::lock_guard lock(mutex_);
  inflight_ = inflight;
  return whole;
}

void RolloutStream::publish(Running& r) {
  for (auto& x : r.done) {
    x.prompt = &r.prompt.tokens;
    x.example = r.prompt.example;
    x.group = r.prompt.group;
    x.admitted = r.prompt.admitted;
    x.start_step = r.prompt.start_step;
  }
  core::Batch group = sample_rows(r.done, r.prompt.width);
  {
    std::lock_guard lock(mutex_);
    if (!lockstep_ || lockstep_->leader) done_.push_back(std::move(group));  // a follower's copy is its leader's
    ++groups_done_;
  }
  finished_.notify_all();
}

// A weight sync asked the sequences in flight to take the new weights afresh: their requests are
// aborted now, and finish() resubmits them after this step, from their tokens so far with the KV
// cache computed again ("recompute") or from the prompt ("abort").
std::string RolloutStream::restart_inflight(models::GenerationEngine& engine, const std::string* given) {
  std::string action;
  {
    std::lock_guard lock(mutex_);
    action.swap(action_);
  }
  if (given) action = *given;
  if (action.empty()) return action;
  for (auto& [id, r] : running_) {
    engine.abort(id);
    r.restart = action;
  }
  return action;
}

}  // namespace flotilla::actors::lm
