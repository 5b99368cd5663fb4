#include "runtime/data.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <random>
#include <set>
#include <zmq.hpp>

#include "core/curve.hpp"
#include "core/error.hpp"

namespace flotilla::runtime {

// ---- rows ----

RowSet RowSet::slice(int64_t b, int64_t e) const {
  if (is_range) return range(begin + b, begin + e);
  return of(std::vector<int64_t>(indices.begin() + b, indices.begin() + e));
}

RowSet RowSet::of(std::vector<int64_t> idx) {
  bool consecutive = true;
  for (size_t i = 1; i < idx.size() && consecutive; ++i) consecutive = idx[i] == idx[i - 1] + 1;
  if (consecutive) return idx.empty() ? range(0, 0) : range(idx.front(), idx.back() + 1);
  RowSet r;
  r.indices = std::move(idx);
  r.is_range = false;
  return r;
}

void RowSet::write(proto::Rows::Builder b) const {
  if (is_range) {
    auto r = b.initRange();
    r.setBegin(begin);
    r.setEnd(end);
  } else {
    auto l = b.initIndices(static_cast<unsigned>(indices.size()));
    for (unsigned i = 0; i < indices.size(); ++i) l.set(i, indices[i]);
  }
}

RowSet RowSet::read(proto::Rows::Reader r) {
  if (r.isRange()) return range(r.getRange().getBegin(), r.getRange().getEnd());
  std::vector<int64_t> idx;
  for (int64_t i : r.getIndices()) idx.push_back(i);
  RowSet s;
  s.indices = std::move(idx);
  s.is_range = false;
  return s;
}

// ---- references ----

KeptObject::~KeptObject() {
  if (auto h = holder.lock()) h->release(rank, id);
}

DataRef::DataRef(std::shared_ptr<const KeptObject> object) : rows_(object->rows) {
  columns_.push_back({object->fields, {{object, RowSet::range(0, object->rows)}}, {}, false});
}

DataRef DataRef::of(core::Batch rows) {
  DataRef out;
  if (rows.empty()) return out;
  out.rows_ = rows.size();
  out.columns_.push_back({rows.names(), {}, std::move(rows), true});
  return out;
}

std::vector<std::string> DataRef::fields() const {
  std::vector<std::string> out;
  for (const auto& c : columns_) out.insert(out.end(), c.fields.begin(), c.fields.end());
  return out;
}

bool DataRef::contains(const std::string& field) const {
  for (const auto& c : columns_)
    if (std::find(c.fields.begin(), c.fields.end(), field) != c.fields.end()) return true;
  return false;
}

DataRef DataRef::select(const std::vector<std::string>& names) const {
  for (const auto& n : names)
    if (!contains(n)) {
      std::string have;
      for (const auto& f : fields()) have += (have.empty() ? "" : ", ") + f;
      throw Error("the data has no field '" + n + "' (fields: " + have + ")");
    }
  DataRef out;
  out.rows_ = rows_;
  for (const auto& c : columns_) {
    Column kept{{}, c.pieces, {}, c.is_local};
    for (const auto& f : c.fields)
      if (std::find(names.begin(), names.end(), f) != names.end()) kept.fields.push_back(f);
    if (kept.fields.empty()) continue;
    if (c.is_local) kept.local = c.local.select(kept.fields);
    out.columns_.push_back(std::move(kept));
  }
  return out;
}

DataRef DataRef::slice(int64_t begin, int64_t end) const {
  if (begin < 0 || end < begin || end > rows_)
    throw Error("rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") of data with " + std::to_string(rows_) + " rows");
  DataRef out;
  out.rows_ = end - begin;
  for (const auto& c : columns_) {
    Column part{c.fields, {}, {}, c.is_local};
    if (c.is_local) {
      part.local = c.local.slice(begin, end);
      out.columns_.push_back(std::move(part));
      continue;
    }
    int64_t offset = 0;
    for (const auto& p : c.pieces) {
      const int64_t n = p.rows.size();
      const int64_t b = std::max(begin, offset), e = std::min(end, offset + n);
      if (b < e) part.pieces.push_back({p.object, p.rows.slice(b - offset, e - offset)});
      offset += n;
    }
    out.columns_.push_back(std::move(part));
  }
  return out;
}

DataRef DataRef::index(const std::vector<int64_t>& indices) const {
  DataRef out;
  out.rows_ = static_cast<int64_t>(indices.size());
  for (const auto& c : columns_) {
    if (c.is_local) {
      for (int64_t i : indices)
        if (i < 0 || i >= rows_) throw Error("row " + std::to_string(i) + " of data with " + std::to_string(rows_) + " rows");
      out.columns_.push_back({c.fields, {}, c.local.index(at::tensor(indices, at::kLong)), true});
      continue;
    }
    std::vector<int64_t> starts;  // first global row of each piece
    int64_t offset = 0;
    for (const auto& p : c.pieces) starts.push_back(offset), offset += p.rows.size();
    Column part{c.fields, {}, {}, false};
    std::vector<int64_t> run;  // rows of the current piece, in order
    int current = -1;
    auto flush = [&] {
      if (current >= 0 && !run.empty()) part.pieces.push_back({c.pieces[current].object, RowSet::of(std::move(run))});
      run.clear();
    };
    for (int64_t i : indices) {
      if (i < 0 || i >= rows_) throw Error("row " + std::to_string(i) + " of data with " + std::to_string(rows_) + " rows");
      const int k = static_cast<int>(std::upper_bound(starts.begin(), starts.end(), i) - starts.begin()) - 1;
      if (k != current) flush(), current = k;
      run.push_back(c.pieces[k].rows.at(i - starts[k]));
    }
    flush();
    out.columns_.push_back(std::move(part));
  }
  return out;
}

bool DataRef::is_local() const {
  return std::all_of(columns_.begin(), columns_.end(), [](const Column& c) { return c.is_local; });
}

DataRef DataRef::concat(const std::vector<DataRef>& parts) {
  DataRef out;
  for (const auto& p : parts) {
    if (p.empty() || p.rows() == 0) continue;  // a rank's empty chunk
    if (out.empty()) {
      out = p;
      continue;
    }
    if (p.columns_.size() != out.columns_.size()) throw Error("concatenated data must come from the same kind of source");
    for (size_t c = 0; c < p.columns_.size(); ++c) {
      Column& into = out.columns_[c];
      const Column& from = p.columns_[c];
      if (from.fields != into.fields || from.is_local != into.is_local)
        throw Error("concatenated data must have the same fields from the same kind of source");
      if (into.is_local) into.local = concat_padded({into.local, from.local});
      else into.pieces.insert(into.pieces.end(), from.pieces.begin(), from.pieces.end());
    }
    out.rows_ += p.rows_;
  }
  return out;
}

DataRef DataRef::join(const std::vector<DataRef>& parts) {
  DataRef out;
  std::set<std::string> seen;
  for (const auto& p : parts) {
    if (p.empty()) continue;
    if (!out.empty() && p.rows_ != out.rows_)
      throw Error("joined data must have the same rows: " + std::to_string(out.rows_) + " and " + std::to_string(p.rows_));
    for (const auto& f : p.fields())
      if (!seen.insert(f).second) throw Error("field '" + f + "' is in two of the joined parts");
    out.rows_ = p.rows_;
    out.columns_.insert(out.columns_.end(), p.columns_.begin(), p.columns_.end());
  }
  return out;
}

std::vector<DataRef::Held> DataRef::held() const {
  std::vector<Held> out;
  if (!columns_.empty())
    for (const auto& p : columns_.front().pieces) out.push_back({p.object->rank, p.object->worker, p.object->endpoint, p.object->id});
  return out;
}

core::Batch DataRef::pull(const std::vector<std::string>& names) const {
  const DataRef ref = names.empty() ? *this : select(names);
  core::Batch out;
  for (const auto& c : ref.columns_) {
    std::vector<core::Batch> parts;
    if (c.is_local) parts.push_back(c.local);
    for (const auto& p : c.pieces) {
      auto holder = p.object->holder.lock();
      if (!holder) throw Error("data held by worker " + p.object->worker + " is gone: its group was closed");
      parts.push_back(holder->fetch(p.object->rank, p.object->id, c.fields, p.rows));
    }
    const core::Batch column = concat_padded(std::move(parts));
    for (const auto& f : c.fields) out.set(f, column[f]);
  }
  return out;
}

void DataRef::write(proto::Input::Builder input, core::OutMessage& message) const {
  auto sources = input.initSources(static_cast<unsigned>(columns_.size()));
  for (unsigned c = 0; c < columns_.size(); ++c) {
    const Column& col = columns_[c];
    auto s = sources[c];
    auto fields = s.initFields(static_cast<unsigned>(col.fields.size()));
    for (unsigned i = 0; i < col.fields.size(); ++i) fields.set(i, col.fields[i]);
    if (col.is_local) {
      message.put_batch(s.initRows(), col.local);
      continue;
    }
    auto segments = s.initSegments(static_cast<unsigned>(col.pieces.size()));
    for (unsigned i = 0; i < col.pieces.size(); ++i) {
      segments[i].setHolder(col.pieces[i].object->endpoint);
      segments[i].setObject(col.pieces[i].object->id);
      col.pieces[i].rows.write(segments[i].initRows());
    }
  }
}

int64_t DataRef::local_bytes() const {
  int64_t n = 0;
  for (const auto& c : columns_)
    if (c.is_local)
      for (const auto& f : c.local.names()) n += static_cast<int64_t>(c.local[f].nbytes());
  return n;
}

// ---- the worker's store ----

DataStore::DataStore() : next_((static_cast<uint64_t>(std::random_device{}()) & 0x7fffffffu) << 32 | 1) {}

uint64_t DataStore::put(core::Batch batch) {
  std::lock_guard lock(mutex_);
  const uint64_t id = next_++;
  objects_.emplace(id, std::move(batch));
  return id;
}

core::Batch DataStore::fields_of(uint64_t id, const std::vector<std::string>& fields) const {
  std::lock_guard lock(mutex_);
  auto it = objects_.find(id);
  if (it == objects_.end()) throw Error("no object " + std::to_string(id) + " here (released, never kept, or kept by a worker this one replaced)");
  return fields.empty() ? it->second : it->second.select(fields);
}

core::Batch DataStore::read(uint64_t id, const std::vector<std::string>& fields, const RowSet& rows) const {
  const core::Batch b = fields_of(id, fields);
  if (rows.is_range) {
    if (rows.begin < 0 || rows.end > b.size() || rows.begin > rows.end)
      throw Error("rows [" + std::to_string(rows.begin) + ", " + std::to_string(rows.end) + ") of an object with " +
                  std::to_string(b.size()) + " rows");
    return rows.begin == 0 && rows.end == b.size() ? b : b.slice(rows.begin, rows.end);
  }
  for (int64_t i : rows.indices)
    if (i < 0 || i >= b.size())
      throw Error("row " + std::to_string(i) + " of an object with " + std::to_string(b.size()) + " rows");
  return b.index(at::tensor(rows.indices, at::kLong));
}

core::Batch DataStore::gather(uint64_t id, const std::vector<std::string>& fields,
                              const std::vector<std::pair<int64_t, int64_t>>& ranges) const {
  const core::Batch whole = fields_of(id, fields);
  core::Batch out;
  for (const auto& name : whole.names()) {
    const at::Tensor& t = whole[name];
    if (t.dim() != 1) throw Error("field '" + name + "' is not one-dimensional: ranges are fetched from flat buffers");
    int64_t total = 0;
    for (const auto& [begin, end] : ranges) {
      if (begin < 0 || end < begin || end > t.size(0))
        throw Error("elements [" + std::to_string(begin) + ", " + std::to_string(end) + ") of field '" + name + "' with " +
                    std::to_string(t.size(0)));
      total += end - begin;
    }
    at::Tensor o = at::empty({total}, t.options());
    int64_t pos = 0;
    for (const auto& [begin, end] : ranges) {
      o.narrow(0, pos, end - begin).copy_(t.narrow(0, begin, end - begin));
      pos += end - begin;
    }
    out.set(name, o);
  }
  out.meta() = whole.meta();
  return out;
}

void DataStore::release(uint64_t id) {
  std::lock_guard lock(mutex_);
  objects_.erase(id);
}

int64_t DataStore::objects() const {
  std::lock_guard lock(mutex_);
  return static_cast<int64_t>(objects_.size());
}

int64_t DataStore::bytes() const {
  std::lock_guard lock(mutex_);
  int64_t total = 0;
  for (const auto& [id, b] : objects_)
    for (const auto& n : b.names()) total += static_cast<int64_t>(b[n].nbytes());
  return total;
}

core::Batch concat_padded(std::vector<core::Batch> parts) {
  if (parts.size() == 1) return std::move(parts.front());
  std::vector<core::Batch> nonempty;
  for (auto& p : parts)
    if (!p.empty()) nonempty.push_back(std::move(p));
  if (nonempty.empty()) return {};
  for (const auto& name : nonempty.front().names()) {
    const at::Tensor& first = nonempty.front()[name];
    std::vector<int64_t> widest(first.sizes().begin(), first.sizes().end());
    for (const auto& p : nonempty)
      for (int64_t d = 1; d < first.dim(); ++d) widest[d] = std::max(widest[d], p[name].size(d));
    for (auto& p : nonempty) {
      const at::Tensor& t = p[name];
      std::vector<int64_t> pad;  // constant_pad_nd wants (before, after) from the last dim back
      bool padded = false;
      for (int64_t d = t.dim() - 1; d >= 1; --d) {
        pad.push_back(0);
        pad.push_back(widest[d] - t.size(d));
        padded = padded || widest[d] != t.size(d);
      }
      if (padded) p.set(name, at::constant_pad_nd(t, pad, 0));
    }
  }
  return core::Batch::concat(nonempty);
}

// ---- fetching ----

Fetcher::Fetcher(zmq::context_t& context, std::string self_endpoint, const DataStore& own, std::chrono::milliseconds timeout)
    : context_(context), self_(std::move(self_endpoint)), own_(own), timeout_(timeout) {}

Fetcher::~Fetcher() = default;

zmq::socket_t& Fetcher::socket(const std::string& endpoint) {
  auto& s = sockets_[endpoint];
  if (!s) {
    s = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::dealer);
    s->set(zmq::sockopt::linger, 0);
    core::curve::connect(*s, endpoint);
  }
  return *s;
}

namespace {
thread_local Fetcher* current_fetcher = nullptr;
}

Fetcher& Fetcher::current() {
  if (!current_fetcher) throw Error("no fetcher here: only a worker's methods fetch from other workers");
  return *current_fetcher;
}

void Fetcher::make_current() { current_fetcher = this; }

void Fetcher::fetch_ranges(const std::vector<RangeRequest>& requests, int window,
                           const std::function<void(size_t, const core::Batch&)>& done) {
  std::map<std::string, std::deque<size_t>> queued;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].holder == self_) done(i, own_.gather(requests[i].object, requests[i].fields, requests[i].ranges));
    else queued[requests[i].holder].push_back(i);
  }
  std::map<uint64_t, size_t> asked;
  std::map<std::string, int> inflight;
  auto send_more = [&](const std::string& holder) {
    auto& q = queued[holder];
    while (inflight[holder] < std::max(1, window) && !q.empty()) {
      const RangeRequest& r = requests[q.front()];
      core::OutMessage m("fetch");
      auto f = m.envelope().initDataFetch();
      const uint64_t id = next_id_++;
      f.setId(id);
      f.setObject(r.object);
      auto names = f.initFields(static_cast<unsigned>(r.fields.size()));
      for (unsigned i = 0; i < r.fields.size(); ++i) names.set(i, r.fields[i]);
      auto ranges = f.initRanges(static_cast<unsigned>(r.ranges.size()));
      for (unsigned i = 0; i < r.ranges.size(); ++i) ranges[i].setBegin(r.ranges[i].first), ranges[i].setEnd(r.ranges[i].second);
      m.send(socket(holder));
      asked[id] = q.front();
      q.pop_front();
      ++inflight[holder];
    }
  };
  for (const auto& [holder, q] : queued) send_more(holder);
  while (!asked.empty()) {
    std::vector<zmq::pollitem_t> items;
    std::vector<std::string> holders;
    for (const auto& [holder, n] : inflight)
      if (n > 0) {
        holders.push_back(holder);
        items.push_back({socket(holder).handle(), 0, ZMQ_POLLIN, 0});
      }
    if (zmq::poll(items.data(), items.size(), timeout_) == 0)
      throw TimeoutError("no weights from worker " + holders.front() + " within " + std::to_string(timeout_.count()) + " ms");
    for (size_t k = 0; k < items.size(); ++k) {
      if (!(items[k].revents & ZMQ_POLLIN)) continue;
      std::optional<core::InMessage> in = core::InMessage::receive(socket(holders[k]));
      if (!in || !in->envelope().isDataReply()) continue;
      auto r = in->envelope().getDataReply();
      auto it = asked.find(r.getId());
      if (it == asked.end()) continue;
      if (!r.getOk()) throw Error("fetching weights from " + holders[k] + ": " + r.getError().cStr());
      done(it->second, in->batch(r.getBatch()));
      asked.erase(it);
      --inflight[holders[k]];
      send_more(holders[k]);
    }
  }
}

namespace {
constexpr std::chrono::milliseconds kAskAgain{5000};
}  // namespace

core::Batch Fetcher::assemble(const core::InMessage& message, proto::Input::Reader input) {
  std::vector<std::vector<core::Batch>> parts(input.getSources().size());
  std::vector<std::vector<std::string>> fields(parts.size());
  std::map<uint64_t, std::pair<size_t, size_t>> asked;  // request id -> (source, part)
  std::map<uint64_t, std::string> asked_of;
  std::map<uint64_t, std::function<void()>> ask;  // sends request `id` (again)
  size_t s = 0;
  for (auto source : input.getSources()) {
    for (auto f : source.getFields()) fields[s].emplace_back(f.cStr());
    if (source.isRows()) {
      parts[s].push_back(message.batch(source.getRows()));
      ++s;
      continue;
    }
    for (auto seg : source.getSegments()) {
      const RowSet rows = RowSet::read(seg.getRows());
      parts[s].emplace_back();
      if (seg.getHolder() == self_) {
        parts[s].back() = own_.read(seg.getObject(), fields[s], rows);
        continue;
      }
      const uint64_t id = next_id_++;
      ask[id] = [this, id, s, &fields, object = seg.getObject(), rows, holder = std::string(seg.getHolder().cStr())] {
        core::OutMessage m("fetch");
        auto f = m.envelope().initDataFetch();
        f.setId(id);
        f.setObject(object);
        auto names = f.initFields(static_cast<unsigned>(fields[s].size()));
        for (unsigned i = 0; i < fields[s].size(); ++i) names.set(i, fields[s][i]);
        rows.write(f.initRows());
        m.send(socket(holder));
      };
      ask[id]();
      asked[id] = {s, parts[s].size() - 1};
      asked_of[id] = seg.getHolder();
    }
    ++s;
  }
  // Every holder was asked before any answer is read, so the transfers overlap.
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  while (!asked.empty()) {
    std::vector<zmq::pollitem_t> items;
    std::vector<zmq::socket_t*> polled;
    std::set<std::string> endpoints;
    for (const auto& [id, ep] : asked_of) endpoints.insert(ep);
    for (const auto& ep : endpoints) {
      polled.push_back(&socket(ep));
      items.push_back({polled.back()->handle(), 0, ZMQ_POLLIN, 0});
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      throw TimeoutError("no rows from worker " + asked_of.begin()->second + " within " + std::to_string(timeout_.count()) +
                         " ms (fetching a call's input)");
    // A request the holder never answered is sent again now and then: one that reached a worker
    // as it died then reaches its replacement, which says it has no such object.
    if (zmq::poll(items.data(), items.size(), std::min(left, kAskAgain)) == 0) {
      for (const auto& [id, again] : ask)
        if (asked.count(id)) again();
      continue;
    }
    for (size_t k = 0; k < items.size(); ++k) {
      if (!(items[k].revents & ZMQ_POLLIN)) continue;
      std::optional<core::InMessage> in = core::InMessage::receive(*polled[k]);
      if (!in || !in->envelope().isDataReply()) continue;
      auto r = in->envelope().getDataReply();
      auto it = asked.find(r.getId());
      if (it == asked.end()) continue;  // an answer to a fetch that already failed
      if (!r.getOk()) throw Error("fetching rows from " + asked_of[r.getId()] + ": " + r.getError().cStr());
      parts[it->second.first][it->second.second] = in->batch(r.getBatch());
      asked_of.erase(r.getId());
      asked.erase(it);
    }
  }
  core::Batch out;
  for (size_t c = 0; c < parts.size(); ++c) {
    const core::Batch column = concat_padded(std::move(parts[c]));
    if (!out.empty() && column.size() != out.size())
      throw FormatError("the sources of a call's input have " + std::to_string(out.size()) + " and " +
                        std::to_string(column.size()) + " rows");
    for (const auto& f : column.names()) out.set(f, column[f]);
  }
  return out;
}

}  // namespace flotilla::runtime
