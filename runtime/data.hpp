#pragma once
// Data that stays on the workers. A method called with Collect::Keep leaves its output rows in
// the worker's DataStore and answers with a reference; a DataRef on the controller says which
// rows of which objects on which workers make up a batch, field by field (fields kept by
// different workers side by side, or rows the controller sends itself). Passing a DataRef as
// another call's input makes the callee fetch its rows straight from the holders (zero-copy
// frames over the transport, or no copy at all when it holds them itself); the controller pulls
// only the fields it reads. An object is freed on its worker when the last DataRef pointing at it
// is gone.
#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/batch.hpp"
#include "core/wire.hpp"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace flotilla::runtime {

// Rows of one object: a range, or indices in any order.
struct RowSet {
  int64_t begin = 0, end = 0;    // the range, when indices is empty
  std::vector<int64_t> indices;  // explicit rows
  bool is_range = true;
  int64_t size() const { return is_range ? end - begin : static_cast<int64_t>(indices.size()); }
  int64_t at(int64_t i) const { return is_range ? begin + i : indices[static_cast<size_t>(i)]; }
  // Rows [b, e) of this set.
  RowSet slice(int64_t b, int64_t e) const;
  static RowSet range(int64_t begin, int64_t end) { return {begin, end, {}, true}; }
  // The indices as a range when they are consecutive and ascending.
  static RowSet of(std::vector<int64_t> indices);
  void write(proto::Rows::Builder b) const;
  static RowSet read(proto::Rows::Reader r);
};

// The controller side of the workers that hold objects (a worker group's connection).
class ObjectHolder {
 public:
  virtual ~ObjectHolder() = default;
  // The named fields (all when empty) of `rows` of object `id` on `rank`, fetched to this process.
  virtual core::Batch fetch(int rank, uint64_t id, const std::vector<std::string>& fields, const RowSet& rows) = 0;
  // Frees the object on its worker (no reply awaited).
  virtual void release(int rank, uint64_t id) = 0;
};

// One object kept by a worker, as the controller knows it. Released when the last piece of every
// DataRef pointing at it is gone.
struct KeptObject {
  std::weak_ptr<ObjectHolder> holder;
  int rank = 0;
  std::string worker;    // "rollout/1", for messages
  std::string endpoint;  // where other workers fetch it
  uint64_t id = 0;
  int64_t rows = 0;
  std::vector<std::string> fields;
  ~KeptObject();
};

class DataRef {
 public:
  DataRef() = default;
  // All rows and fields of a kept object.
  explicit DataRef(std::shared_ptr<const KeptObject> object);
  // Rows held here (by the controller), sent with the calls they are passed to.
  static DataRef of(core::Batch rows);

  int64_t rows() const { return rows_; }
  bool empty() const { return columns_.empty(); }
  std::vector<std::string> fields() const;
  bool contains(const std::string& field) const;
  // Whether every field is held here (no worker keeps any of it).
  bool is_local() const;

  // Only the named fields (each must exist).
  DataRef select(const std::vector<std::string>& fields) const;
  // Rows [begin, end).
  DataRef slice(int64_t begin, int64_t end) const;
  // The rows at `indices`, in that order.
  DataRef index(const std::vector<int64_t>& indices) const;
  // Rows one after another: every part must have the same fields from the same kind of source
  // (the kept outputs of one method's ranks).
  static DataRef concat(const std::vector<DataRef>& parts);
  // Fields side by side: every part has the same rows, no field is in two parts.
  static DataRef join(const std::vector<DataRef>& parts);

  // The kept objects the rows come from, in order (of the first field's source): where each is.
  struct Held {
    int rank = 0;
    std::string worker, endpoint;
    uint64_t object = 0;
  };
  std::vector<Held> held() const;

  // The rows, fetched to this process (the controller); `fields` picks some (all when empty).
  core::Batch pull(const std::vector<std::string>& fields = {}) const;

  // The wire form of this reference as a call's input; rows held here become frames of `message`.
  void write(proto::Input::Builder input, core::OutMessage& message) const;
  // Tensor bytes of the rows held here (what a call with this input sends).
  int64_t local_bytes() const;

 private:
  struct Piece {
    std::shared_ptr<const KeptObject> object;
    RowSet rows;
  };
  struct Column {
    std::vector<std::string> fields;  // a subset of the objects' fields, in order
    std::vector<Piece> pieces;        // kept by workers, or
    core::Batch local;                // held here
    bool is_local = false;
  };
  std::vector<Column> columns_;
  int64_t rows_ = 0;
};

// ---- worker side ----

// The objects a worker keeps for others to fetch.
class DataStore {
 public:
  DataStore();
  uint64_t put(core::Batch batch);
  // Fields (all when empty) and rows of an object: views for a range, a copy for indices.
  core::Batch read(uint64_t id, const std::vector<std::string>& fields, const RowSet& rows) const;
  // The elements of `ranges` ([begin, end) pairs) of one-dimensional fields, one after another
  // (a copy); the object's metadata comes along.
  core::Batch gather(uint64_t id, const std::vector<std::string>& fields,
                     const std::vector<std::pair<int64_t, int64_t>>& ranges) const;
  void release(uint64_t id);
  int64_t objects() const;
  int64_t bytes() const;

 private:
  core::Batch fields_of(uint64_t id, const std::vector<std::string>& fields) const;  // (views) or throws

  mutable std::mutex mutex_;
  std::map<uint64_t, core::Batch> objects_;
  uint64_t next_;  // from a random start: a worker's replacement, at its address, answers none of its ids
};

// Parts whose fields differ in their trailing sizes (sequences padded to their own longest) padded
// with zeros to the largest and concatenated.
core::Batch concat_padded(std::vector<core::Batch> parts);

// Fetches rows from other workers' stores (DEALER sockets, one per holder, reused); one per thread.
class Fetcher {
 public:
  Fetcher(zmq::context_t& context, std::string self_endpoint, const DataStore& own, std::chrono::milliseconds timeout);
  ~Fetcher();
  // The batch a call's input describes: rows sent with it, or fetched from their holders (all
  // holders asked at once; rows this worker holds are read from its own store).
  core::Batch assemble(const core::InMessage& message, proto::Input::Reader input);

  // Ranges of one-dimensional fields of objects on other workers (or this one): each request is
  // sent with at most `window` unanswered per holder, and `done(i, batch)` runs as request i's
  // reply arrives (the batch points into the message, valid during the call). Throws naming the
  // holder when one fails or is silent for the fetcher's timeout.
  struct RangeRequest {
    std::string holder;  // the holder's endpoint
    uint64_t object = 0;
    std::vector<std::string> fields;
    std::vector<std::pair<int64_t, int64_t>> ranges;
  };
  void fetch_ranges(const std::vector<RangeRequest>& requests, int window,
                    const std::function<void(size_t, const core::Batch&)>& done);

  // The fetcher of the lane running the current method (for methods that fetch what they need
  // themselves, like a weight transfer); throws outside a worker's lane.
  static Fetcher& current();
  // Makes this the current thread's fetcher (a lane does, once).
  void make_current();
  // This worker's own endpoint: fetches from it read the store without the transport.
  const std::string& endpoint() const { return self_; }

 private:
  zmq::socket_t& socket(const std::string& endpoint);
  zmq::context_t& context_;
  std::string self_;
  const DataStore& own_;
  std::chrono::milliseconds timeout_;
  std::map<std::string, std::unique_ptr<zmq::socket_t>> sockets_;
  uint64_t next_id_ = 1;
};

}  // namespace flotilla::runtime
