#include "controller/programs/rlhf_stream.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <thread>

#include "core/batch.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"

namespace flotilla::controller {

// ---- the stream ----

namespace {
std::string seconds_str(std::chrono::milliseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", static_cast<double>(d.count()) / 1000.0);
  return buf;
}
}  // namespace

using actors::lm::CollectGroups;
using actors::lm::CriticValues;
using actors::lm::RefLogProbs;
using actors::lm::Score;
using runtime::DataRef;
using runtime::Input;

struct SampleStream::Arrival {
  DataRef rows;  // as collected, kept on the rollout
  std::vector<int64_t> group_of_row, oldest_of_row, start_of_row;
  core::Batch lengths;
  std::optional<runtime::Future<Score>> score;
  std::optional<runtime::Future<RefLogProbs>> ref;
  std::optional<runtime::Future<CriticValues>> values;
  bool complete = false;
  using time_point = std::chrono::steady_clock::time_point;
  time_point arrived = std::chrono::steady_clock::now();
  std::optional<time_point> scored, ref_done;  // when each answer was first seen
  DataRef joined;  // rows, reference log-probs and values side by side, once complete
  at::Tensor scores;
  std::map<int64_t, int64_t> first_row;  // group id -> its first row
  std::set<int64_t> taken;               // groups handed to the trainer
  int64_t untaken = 0;                   // groups not taken yet

  bool answered() const { return score->ready() && (!ref || ref->ready()) && (!values || values->ready()); }
};

SampleStream::SampleStream(Roles roles, GroupLedger ledger, const actors::lm::Dataset& train, actors::lm::Sampler& sampler,
                           actors::lm::Submit sampling, std::chrono::milliseconds timeout)
    : roles_(roles), ledger_(std::move(ledger)), train_(train), sampler_(sampler), sampling_(std::move(sampling)), timeout_(timeout) {
  if (!roles_.rollout || !roles_.reward) throw Error("a sample stream needs rollout and reward workers");
  polls_.resize(static_cast<size_t>(roles_.rollout->replicas()));
}

SampleStream::~SampleStream() = default;

void SampleStream::admit(int64_t version) {
  const auto groups = ledger_.admit(version, [this](int64_t k) { return sampler_.next(k); });
  unsent_.insert(unsent_.end(), groups.begin(), groups.end());
  try {
    submit();
  } catch (const Error&) {
    recover();
  }
}

void SampleStream::submit() {
  std::map<int64_t, std::vector<GroupLedger::Group>> by_rank;
  for (const auto& g : unsent_) by_rank[g.rank].push_back(g);
  for (const auto& [rank, gs] : by_rank) {
    std::vector<int64_t> examples, ids, seeds, admitted;
    for (const auto& g : gs) {
      examples.push_back(g.example);
      ids.push_back(g.id);
      seeds.push_back(static_cast<int64_t>(g.seed));
      admitted.push_back(g.admitted);
    }
    core::Batch rows = actors::lm::prompt_batch(train_, examples);
    rows.set("group", at::tensor(ids, at::kLong));
    rows.set("seed", at::tensor(seeds, at::kLong));
    rows.set("admitted", at::tensor(admitted, at::kLong));
    roles_.rollout->call_on(static_cast<int>(rank), sampling_, Input(DataRef::of(std::move(rows)))).get();
    unsent_.erase(std::remove_if(unsent_.begin(), unsent_.end(), [r = rank](const auto& g) { return g.rank == r; }), unsent_.end());
  }
}

bool SampleStream::pump() {
  try {
    bool moved = false;
    if (!unsent_.empty()) submit(), moved = true;
    for (size_t r = 0; r < polls_.size(); ++r) moved |= poll(r);
    const auto now = std::chrono::steady_clock::now();
    for (auto& a : arrivals_) moved |= complete(*a, now);
    return moved;
  } catch (const Error&) {
    recover();
    return true;
  }
}

void SampleStream::recover() {
  if (!recover_ || recover_() == 0) throw;
}

void SampleStream::replaced(const std::string& group, int rank) {
  if (group == roles_.rollout->name()) {
    polls_[static_cast<size_t>(rank)].reset();
    // Collections with rows of that rank are dropped, and their groups not taken yet generated
    // again (a synchronous step's merged collection holds every rank's); of the groups still
    // generating, those of that rank.
    std::set<int64_t> collected, redo;
    auto drop = [&](std::vector<std::unique_ptr<Arrival>>& list) {
      for (auto it = list.begin(); it != list.end();) {
        const Arrival& a = **it;
        bool lost = false;
        for (const auto& [g, row] : a.first_row) {
          if (a.taken.count(g)) continue;
          collected.insert(g);
          lost |= !a.rows.empty() && ledger_.rank_of(g) == rank;  // (rows from a checkpoint are held here)
        }
        if (!lost) {
          ++it;
          continue;
        }
        for (const auto& [g, row] : a.first_row)
          if (!a.taken.count(g)) redo.insert(g);
        it = list.erase(it);
      }
    };
    drop(held_);
    drop(arrivals_);
    for (const auto& g : ledger_.generating())
      if (g.rank == rank && !collected.count(g.id)) redo.insert(g.id);
    unsent_.erase(std::remove_if(unsent_.begin(), unsent_.end(), [&](const auto& g) { return redo.count(g.id) > 0; }), unsent_.end());
    const std::vector<GroupLedger::Group> groups = ledger_.again(redo);
    unsent_.insert(unsent_.end(), groups.begin(), groups.end());
    return;
  }
  const bool ref = roles_.ref && group == roles_.ref->name();
  if (group != roles_.reward->name() && !ref) return;
  for (auto& a : arrivals_) {
    if (a->rows.empty()) continue;  // from a checkpoint: scored, and held here
    if (a->complete) {
      if (!ref || a->untaken == 0) continue;  // scores are held here; reference log-probs on the worker
      std::set<int64_t> untaken;
      for (const auto& [g, row] : a->first_row)
        if (!a->taken.count(g)) untaken.insert(g);
      ledger_.again(untaken);
      a->complete = false;
    }
    issue(*a);
  }
}

// Rollout `rank`'s long poll: when it has answered, its finished groups go to be scored (and to
// the reference and critic), and the next poll goes out.
bool SampleStream::poll(size_t rank) {
  auto& pending = polls_[rank];
  if (!pending) {
    pending = roles_.rollout->call_on(static_cast<int>(rank), CollectGroups{.milliseconds = 50});
    return false;
  }
  if (!pending->ready()) return false;
  auto reply = pending->get();
  pending.reset();
  if (reply.data.empty() || reply.data.rows() == 0) return false;
  auto a = arrival_of(reply.data);
  for (const auto& [group, row] : a->first_row)
    recorded_.starts[group] = {static_cast<int64_t>(rank), a->start_of_row[static_cast<size_t>(row)]};
  // Synchronous (max_staleness 0): a step's groups are scored together once all are back, as one
  // batch in admission order, as the synchronous dataflow scored them. Reference log-probs and
  // values round differently in other batches, and Adam can turn rounding into different updates.
  if (ledger_.bound().max() == 0) {
    held_.push_back(std::move(a));
    int64_t back = 0;
    for (const auto& h : held_) back += static_cast<int64_t>(h->first_row.size());
    if (back < ledger_.running()) return true;
    a = merge_held();
    held_.clear();
  }
  issue(*a);
  arrivals_.push_back(std::move(a));
  return true;
}

std::unique_ptr<SampleStream::Arrival> SampleStream::arrival_of(const DataRef& rows) const {
  const int64_t n = sampling_.n;
  auto a = std::make_unique<Arrival>();
  a->rows = rows;
  const core::Batch meta = a->rows.pull({"group", "oldest_version", "start_step", "response_length", "truncated", "last"});
  auto vec = [&](const char* f) {
    const at::Tensor t = meta[f].contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  };
  a->group_of_row = vec("group");
  a->oldest_of_row = vec("oldest_version");
  a->start_of_row = vec("start_step");
  for (const char* f : {"response_length", "truncated", "last"}) a->lengths.set(f, meta[f]);
  for (int64_t row = 0; row < a->rows.rows(); row += n) a->first_row[a->group_of_row[static_cast<size_t>(row)]] = row;
  a->untaken = static_cast<int64_t>(a->first_row.size());
  return a;
}

// The held collections as one, their groups in admission order (what was read from each is
// reused, not fetched again).
std::unique_ptr<SampleStream::Arrival> SampleStream::merge_held() const {
  const int64_t n = sampling_.n;
  std::map<int64_t, std::pair<const Arrival*, int64_t>> by_group;
  for (const auto& h : held_)
    for (const auto& [group, row] : h->first_row) by_group[group] = {h.get(), row};
  auto m = std::make_unique<Arrival>();
  std::vector<DataRef> rows;
  std::map<std::string, std::vector<at::Tensor>> lengths;
  for (const auto& [group, at] : by_group) {
    const auto& [h, first] = at;
    rows.push_back(h->rows.slice(first, first + n));
    m->first_row[group] = static_cast<int64_t>(m->group_of_row.size());
    for (int64_t k = first; k < first + n; ++k) {
      m->group_of_row.push_back(h->group_of_row[static_cast<size_t>(k)]);
      m->oldest_of_row.push_back(h->oldest_of_row[static_cast<size_t>(k)]);
      m->start_of_row.push_back(h->start_of_row[static_cast<size_t>(k)]);
    }
    for (const char* f : {"response_length", "truncated", "last"}) lengths[f].push_back(h->lengths[f].slice(0, first, first + n));
  }
  m->rows = DataRef::concat(rows);
  for (auto& [f, parts] : lengths) m->lengths.set(f, at::cat(parts));
  m->untaken = static_cast<int64_t>(m->first_row.size());
  return m;
}

void SampleStream::issue(Arrival& a) {
  const int64_t n = sampling_.n;
  const Input tokens = Input(a.rows.select({"tokens", "response_mask"})).grouped(n);  // the mask: response positions only
  a.score = roles_.reward->call(Score{.split = "train", .check = false},
                                Input(a.rows.select({"tokens", "last", "response_length", "example"})).grouped(n));
  if (roles_.ref) a.ref = roles_.ref->call(RefLogProbs{}, tokens);
  if (roles_.critic) a.values = roles_.critic->call(CriticValues{}, tokens);
  a.arrived = std::chrono::steady_clock::now();
  a.scored.reset(), a.ref_done.reset();
}

// A collection whose scores, reference log-probs and values have all come back: its rows are
// joined and its groups are ready for the trainer.
bool SampleStream::complete(Arrival& a, std::chrono::steady_clock::time_point now) {
  if (a.complete) return false;
  if (!a.scored && a.score->ready()) a.scored = now;
  if (!a.ref_done && a.ref && a.ref->ready()) a.ref_done = now;
  if (!a.answered()) return false;
  const auto scored = a.score->get();
  for (const auto& rank : scored.ranks)
    for (const auto& [k, v] : rank.values) reward_errors_ += static_cast<int64_t>(v);
  a.scores = scored.batch["scores"].to(at::kFloat);
  std::vector<DataRef> parts = {a.rows.select({"tokens", "response_mask", "rollout_log_prob", "token_version"})};
  if (a.ref) parts.push_back(a.ref->get().data);
  if (a.values) parts.push_back(a.values->get().data);
  a.joined = DataRef::join(parts);
  a.complete = true;
  const int64_t n = sampling_.n;
  for (const auto& [group, row] : a.first_row) {
    if (a.taken.count(group)) continue;  // scored again after a worker's replacement
    int64_t oldest = a.oldest_of_row[static_cast<size_t>(row)];
    for (int64_t k = 1; k < n; ++k) oldest = std::min(oldest, a.oldest_of_row[static_cast<size_t>(row + k)]);
    ledger_.finished(group, oldest);
  }
  return true;
}

void SampleStream::wait_until(const std::function<bool()>& done, const std::string& what) {
  auto progress = std::chrono::steady_clock::now();
  auto nap = std::chrono::microseconds(250);  // doubles while nothing moves, up to 4 ms
  while (!done()) {
    if (pump()) {
      progress = std::chrono::steady_clock::now();
      nap = std::chrono::microseconds(250);
      continue;
    }
    if (std::chrono::steady_clock::now() - progress > timeout_)
      throw TimeoutError("waited " + seconds_str(timeout_) + " for " + what + " without a group finishing: " + state_str() +
                         " (async.wait_timeout_s sets the limit)");
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::microseconds(4000));
  }
}

std::string SampleStream::state_str() const {
  int64_t scoring = 0, held = 0;
  for (const auto& a : arrivals_) scoring += a->complete ? 0 : static_cast<int64_t>(a->first_row.size());
  for (const auto& a : held_) held += static_cast<int64_t>(a->first_row.size());
  // The ledger counts a group as running until it is scored.
  const int64_t generating = ledger_.running() - scoring - held;
  return std::to_string(generating) + " groups admitted and not back from the rollout workers, " +
         (held > 0 ? std::to_string(held) + " back and waiting for the rest of their step, " : "") + std::to_string(scoring) +
         " being scored, " + std::to_string(ledger_.ready()) + " ready";
}

SampleStream::Taken SampleStream::take(int64_t version) {
  const auto t0 = std::chrono::steady_clock::now();
  Taken out;
  wait_until(
      [&] {
        admit(version);  // a finished group may make room under the in-flight cap
        const auto scheduled = replay_ ? replay_->trained.find(version) : std::map<int64_t, std::vector<int64_t>>::const_iterator{};
        if (replay_ && scheduled == replay_->trained.end())
          throw Error("the schedule this run follows ends before version " + std::to_string(version));
        out.groups = replay_ ? ledger_.take_ids(scheduled->second) : ledger_.take(version);
        return !out.groups.empty();
      },
      "the samples that train version " + std::to_string(version));
  for (const auto& g : out.groups) recorded_.trained[version].push_back(g.id);
  std::map<int64_t, Arrival*> holder;
  for (auto& a : arrivals_)
    for (const auto& [group, row] : a->first_row)
      if (!a->taken.count(group)) holder[group] = a.get();
  const int64_t n = sampling_.n;
  std::vector<DataRef> rows;
  std::vector<at::Tensor> scores, resp_len, truncated, last;
  // Rows restored from a checkpoint are held here; with them, the kept rows are fetched too.
  bool local = false, kept = false;
  for (const auto& g : out.groups) {
    Arrival* a = holder.at(g.id);
    (a->joined.is_local() ? local : kept) = true;
    const int64_t first = a->first_row.at(g.id);
    rows.push_back(a->joined.slice(first, first + n));
    scores.push_back(a->scores.slice(0, first, first + n));
    resp_len.push_back(a->lengths["response_length"].slice(0, first, first + n));
    truncated.push_back(a->lengths["truncated"].slice(0, first, first + n));
    last.push_back(a->lengths["last"].slice(0, first, first + n));
    --a->untaken;
    a->taken.insert(g.id);
    auto seconds = [](auto from, auto to) { return std::chrono::duration<double>(to - from).count(); };
    out.reward_s = std::max(out.reward_s, seconds(a->arrived, *a->scored));
    if (a->ref_done) out.ref_s = std::max(out.ref_s, seconds(a->arrived, *a->ref_done));
  }
  // Arrivals whose groups are all taken go (`holder` points into them: not used past here).
  arrivals_.erase(std::remove_if(arrivals_.begin(), arrivals_.end(), [](const auto& a) { return a->complete && a->untaken == 0; }),
                  arrivals_.end());
  if (local && kept) {
    std::vector<core::Batch> pulled;
    for (const auto& r : rows) pulled.push_back(r.pull());
    out.rows = DataRef::of(runtime::concat_padded(std::move(pulled)));
  } else {
    out.rows = DataRef::concat(rows);
  }
  out.scores = at::cat(scores);
  out.lengths.set("response_length", at::cat(resp_len));
  out.lengths.set("truncated", at::cat(truncated));
  out.lengths.set("last", at::cat(last));
  out.waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

void SampleStream::again(const std::vector<GroupLedger::Group>& groups, int64_t version) {
  auto& trained = recorded_.trained[version];
  for (const auto& g : groups) trained.erase(std::remove(trained.begin(), trained.end(), g.id), trained.end());
  if (trained.empty()) recorded_.trained.erase(version);
  ledger_.again(groups);
  unsent_.insert(unsent_.end(), groups.begin(), groups.end());
}

core::Scalars SampleStream::Taken::staleness(int64_t version) const {
  int64_t most = 0;
  double sum = 0;
  std::map<int64_t, int64_t> hist;
  for (const auto& g : groups) {
    const int64_t s = version - g.oldest;
    most = std::max(most, s);
    sum += static_cast<double>(s);
    ++hist[s];
  }
  core::Scalars out = {{"async/staleness_mean", groups.empty() ? 0.0 : sum / static_cast<double>(groups.size())},
                       {"async/staleness_max", static_cast<double>(most)}};
  for (const auto& [s, count] : hist) out.push_back({"async/staleness_hist/" + std::to_string(s), static_cast<double>(count)});
  return out;
}

void SampleStream::follow(const Schedule& s, const std::vector<int64_t>& from_steps) {
  if (from_steps.size() != polls_.size())
    throw Error("a schedule is followed from " + std::to_string(from_steps.size()) + " rollout step counts, for " +
                std::to_string(polls_.size()) + " rollout workers");
  replay_ = s;
  for (size_t r = 0; r < polls_.size(); ++r) roles_.rollout->call_on(static_cast<int>(r), s.follow(static_cast<int>(r), from_steps[r])).get();
}

void SampleStream::drain() {
  wait_until(
      [&] {
        return ledger_.running() == 0 && std::all_of(arrivals_.begin(), arrivals_.end(), [](const auto& a) { return a->complete; });
      },
      "the stream to drain before a checkpoint");
}

void SampleStream::save_ready(const std::filesystem::path& file) const {
  const int64_t n = sampling_.n;
  std::vector<core::Batch> parts;
  for (const auto& a : arrivals_) {
    if (!a->complete) throw Error("the sample stream is saved only once it has drained");
    if (a->untaken == 0) continue;
    core::Batch rows = a->joined.pull();
    rows.set("scores", a->scores);
    for (const char* f : {"response_length", "truncated", "last"}) rows.set(f, a->lengths[f]);
    rows.set("group", at::tensor(a->group_of_row, at::kLong));
    rows.set("oldest_version", at::tensor(a->oldest_of_row, at::kLong));
    for (const auto& [id, first] : a->first_row)
      if (!a->taken.count(id)) parts.push_back(rows.slice(first, first + n));
  }
  if (parts.empty()) return;
  const core::Batch ready = runtime::concat_padded(std::move(parts));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& name : ready.names()) tensors.emplace_back(name, ready[name]);
  core::save_safetensors(file, tensors, {{"format", "flotilla-stream"}});
}

void SampleStream::save_schedule(const std::filesystem::path& file) const {
  const std::string text = recorded_.to_json().dump();
  core::write_file_atomically(file, [&](std::ostream& o) { o << text << "\n"; });
}

void SampleStream::restore_ready(const std::filesystem::path& file) {
  if (!std::filesystem::exists(file))
    throw FormatError(file.string() + ": missing; the checkpoint records finished groups not trained yet");
  core::Batch rows;
  for (auto& [name, t] : core::load_safetensors(file).tensors) rows.set(name, t);
  const int64_t n = sampling_.n;
  if (rows.size() % n != 0) throw FormatError("a checkpoint's stream rows are not whole groups of " + std::to_string(n));
  auto a = std::make_unique<Arrival>();
  const at::Tensor g = rows["group"].contiguous(), o = rows["oldest_version"].contiguous();
  a->group_of_row.assign(g.data_ptr<int64_t>(), g.data_ptr<int64_t>() + g.numel());
  a->oldest_of_row.assign(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + o.numel());
  for (int64_t row = 0; row < rows.size(); row += n) a->first_row[a->group_of_row[static_cast<size_t>(row)]] = row;
  a->untaken = static_cast<int64_t>(a->first_row.size());
  if (a->untaken != ledger_.ready()) throw FormatError("a checkpoint's stream rows do not match its record of finished groups");
  a->scores = rows["scores"];
  for (const char* f : {"response_length", "truncated", "last"}) a->lengths.set(f, rows[f]);
  std::vector<std::string> fields;
  for (const auto& f : rows.names())
    if (f != "scores" && f != "response_length" && f != "truncated" && f != "last" && f != "group" && f != "oldest_version")
      fields.push_back(f);
  a->joined = DataRef::of(rows.select(fields));
  a->complete = true;
  a->scored = a->arrived;
  arrivals_.push_back(std::move(a));
}

}  // namespace flotilla::controller
