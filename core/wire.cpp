#include "core/wire.hpp"

#include <ATen/ATen.h>
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include <cstring>

namespace flotilla::core {
namespace {

struct DtypeMap {
  proto::DType wire;
  at::ScalarType type;
};
constexpr DtypeMap kDtypes[] = {
    {proto::DType::F32, at::kFloat}, {proto::DType::F64, at::kDouble}, {proto::DType::F16, at::kHalf},
    {proto::DType::BF16, at::kBFloat16}, {proto::DType::I64, at::kLong}, {proto::DType::I32, at::kInt},
    {proto::DType::I16, at::kShort}, {proto::DType::I8, at::kChar}, {proto::DType::U8, at::kByte},
    {proto::DType::BOOL, at::kBool},
};

proto::DType to_wire(at::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.wire;
  throw Error(std::string("a tensor of dtype ") + c10::toString(t) + " cannot be sent");
}

void release_tensor(void*, void* hint) { delete static_cast<at::Tensor*>(hint); }

}  // namespace

OutMessage::OutMessage(const std::string& sender) : envelope_(builder_.initRoot<proto::Envelope>()) {
  envelope_.setVersion(proto::SCHEMA_VERSION);
  envelope_.setSender(sender);
}

void OutMessage::put_batch(proto::BatchMeta::Builder meta, const Batch& batch) {
  auto list = meta.initTensors(static_cast<unsigned>(batch.names().size()));
  for (unsigned i = 0; i < batch.names().size(); ++i) {
    at::Tensor t = batch[batch.names()[i]].to(at::kCPU).contiguous();
    auto m = list[i];
    m.setName(batch.names()[i]);
    m.setDtype(to_wire(t.scalar_type()));
    auto shape = m.initShape(static_cast<unsigned>(t.dim()));
    for (int64_t d = 0; d < t.dim(); ++d) shape.set(static_cast<unsigned>(d), t.size(d));
    m.setFrame(static_cast<uint32_t>(tensors_.size() + 1));
    tensors_.push_back(std::move(t));
  }
  auto kv = meta.initMeta(static_cast<unsigned>(batch.meta().size()));
  unsigned k = 0;
  for (const auto& [key, value] : batch.meta()) {
    kv[k].setKey(key);
    kv[k].setValue(value);
    ++k;
  }
}

bool OutMessage::send(zmq::socket_t& socket, const zmq::message_t* route) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder_);
  auto bytes = words.asBytes();
  const bool more = !tensors_.empty();
  if (route) {
    zmq::message_t id(route->data(), route->size());
    if (!socket.send(id, zmq::send_flags::sndmore)) return false;
  }
  zmq::message_t header(bytes.begin(), bytes.size());
  if (!socket.send(header, more ? zmq::send_flags::sndmore : zmq::send_flags::none)) return false;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    at::Tensor* keep = new at::Tensor(tensors_[i]);  // released by ZeroMQ when the frame is sent
    zmq::message_t frame(keep->data_ptr(), keep->nbytes(), &release_tensor, keep);
    socket.send(frame, i + 1 < tensors_.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
  return true;
}

namespace {

// Follows every pointer of the envelope as a consumer would, so that a malformed one anywhere
// fails here, as one DecodeError, and not later in whichever thread reads that field (Cap'n Proto
// checks a pointer when it is followed). Written out per type: a reflective walk halved the
// messages a second a stream takes. fuzz/wire_fuzz.cpp walks every field reflectively after
// decode(), so a field this misses is a fuzz finding. Method arguments (AnyPointer) are each
// method's own type: the runtime's codec reads and checks them.
void touch(capnp::Text::Reader) {}
void touch(proto::BatchMeta::Reader b) {
  for (auto t : b.getTensors()) touch(t.getName()), (void)t.getShape().size();
  for (auto kv : b.getMeta()) touch(kv.getKey()), touch(kv.getValue());
}
void touch(capnp::List<proto::Scalar>::Reader list) {
  for (auto x : list) touch(x.getName());
}
void touch(capnp::List<capnp::Text>::Reader list) {
  for (auto x : list) touch(x);
}
void touch(proto::Rows::Reader r) {
  if (r.isIndices()) (void)r.getIndices().size();
  else (void)r.getRange();
}
void touch_envelope(proto::Envelope::Reader e) {
  touch(e.getSender());
  switch (e.which()) {
    case proto::Envelope::RPC_REQUEST: {
      auto r = e.getRpcRequest();
      touch(r.getMethod());
      for (auto source : r.getInput().getSources()) {
        touch(source.getFields());
        if (source.isRows()) touch(source.getRows());
        else
          for (auto seg : source.getSegments()) touch(seg.getHolder()), touch(seg.getRows());
      }
      break;
    }
    case proto::Envelope::RPC_REPLY: {
      auto r = e.getRpcReply();
      touch(r.getError());
      auto out = r.getOutput();
      if (out.isBatch()) touch(out.getBatch());
      else touch(out.getKept().getFields());
      break;
    }
    case proto::Envelope::HEARTBEAT: touch(e.getHeartbeat().getState()), touch(e.getHeartbeat().getEndpoint()); break;
    case proto::Envelope::METRICS: touch(e.getMetrics().getValues()); break;
    case proto::Envelope::INFERENCE_REQUEST: touch(e.getInferenceRequest().getBatch()); break;
    case proto::Envelope::INFERENCE_REPLY: touch(e.getInferenceReply().getBatch()); break;
    case proto::Envelope::SAMPLES: touch(e.getSamples().getBatch()), touch(e.getSamples().getStats()); break;
    case proto::Envelope::PARAMETERS: touch(e.getParameters().getBatch()); break;
    case proto::Envelope::DATA_FETCH: {
      auto f = e.getDataFetch();
      touch(f.getFields()), touch(f.getRows()), (void)f.getRanges().size();
      break;
    }
    case proto::Envelope::DATA_REPLY: touch(e.getDataReply().getError()), touch(e.getDataReply().getBatch()); break;
    case proto::Envelope::DATA_RELEASE: (void)e.getDataRelease().getObjects().size(); break;
  }
}

}  // namespace

std::optional<InMessage> InMessage::receive(zmq::socket_t& socket, bool routed) {
  std::vector<std::shared_ptr<zmq::message_t>> parts;
  while (true) {
    auto part = std::make_shared<zmq::message_t>();
    if (!socket.recv(*part, zmq::recv_flags::none)) {
      if (parts.empty()) return std::nullopt;
      throw DecodeError("truncated", "a multipart message stopped after " + std::to_string(parts.size()) + " frames");
    }
    const bool more = part->more();
    parts.push_back(std::move(part));
    if (!more) break;
  }
  std::shared_ptr<zmq::message_t> route;
  if (routed) {
    route = parts.front();
    parts.erase(parts.begin());
  }
  InMessage m = decode(std::move(parts));
  m.route_ = std::move(route);
  return m;
}

InMessage InMessage::decode(std::vector<std::shared_ptr<zmq::message_t>> frames) {
  InMessage m;
  if (frames.empty()) throw DecodeError("truncated", "a message with no envelope frame");
  m.frames_ = std::move(frames);
  const zmq::message_t& head = *m.frames_.front();
  if (head.size() % sizeof(capnp::word) != 0 || head.size() == 0)
    throw DecodeError("bad-envelope", "the envelope frame has " + std::to_string(head.size()) +
                                          " bytes, not a whole number of 8-byte words");
  kj::ArrayPtr<const capnp::word> words;
  if (reinterpret_cast<uintptr_t>(head.data()) % alignof(capnp::word) == 0) {
    words = kj::arrayPtr(static_cast<const capnp::word*>(head.data()), head.size() / sizeof(capnp::word));
  } else {
    m.aligned_ = kj::heapArray<capnp::word>(head.size() / sizeof(capnp::word));
    std::memcpy(m.aligned_.begin(), head.data(), head.size());
    words = m.aligned_.asPtr();
  }
  try {
    // Checked on a reader of its own with a quarter of the traversal limit the message is read
    // with afterwards: an envelope whose pointers overlap (amplification) fails here, and its
    // consumers may read every field a few times over without reaching the limit.
    capnp::ReaderOptions check;
    check.traversalLimitInWords = capnp::ReaderOptions().traversalLimitInWords / 4;
    capnp::FlatArrayMessageReader probe(words, check);
    touch_envelope(probe.getRoot<proto::Envelope>());
    m.reader_ = std::make_shared<capnp::FlatArrayMessageReader>(words);
    m.envelope_ = m.reader_->getRoot<proto::Envelope>();
    if (m.envelope_.getVersion() != proto::SCHEMA_VERSION)
      throw DecodeError("bad-version", "schema version " + std::to_string(m.envelope_.getVersion()) + " from '" +
                                           std::string(m.envelope_.getSender().cStr()) + "', this process speaks " +
                                           std::to_string(proto::SCHEMA_VERSION));
  } catch (const kj::Exception& e) {
    throw DecodeError("bad-envelope", std::string("the envelope does not decode: ") + e.getDescription().cStr());
  }
  return m;
}

Batch InMessage::batch(proto::BatchMeta::Reader meta) const {
  Batch out;
  try {
    for (auto t : meta.getTensors()) {
      const std::string name = t.getName().cStr();
      const uint32_t index = t.getFrame();
      if (index == 0 || index >= frames_.size())
        throw DecodeError("bad-tensor", "tensor '" + name + "' names frame " + std::to_string(index) + " of " +
                                            std::to_string(frames_.size()));
      at::ScalarType type = at::kFloat;
      bool known = false;
      for (const auto& d : kDtypes)
        if (d.wire == t.getDtype()) type = d.type, known = true;
      if (!known) throw DecodeError("bad-tensor", "tensor '" + name + "' has an unknown dtype");
      std::vector<int64_t> shape;
      int64_t numel = 1;
      for (int64_t d : t.getShape()) {
        if (d < 0 || (d > 0 && numel > (int64_t{1} << 50) / d)) throw DecodeError("bad-tensor", "tensor '" + name + "' has a bad shape");
        shape.push_back(d);
        numel *= d;
      }
      std::shared_ptr<zmq::message_t> frame = frames_[index];
      if (static_cast<size_t>(numel) * c10::elementSize(type) != frame->size())
        throw DecodeError("bad-tensor", "tensor '" + name + "' needs " + std::to_string(numel * c10::elementSize(type)) +
                                            " bytes, its frame has " + std::to_string(frame->size()));
      // ZeroMQ does not align a frame's bytes (a small one lives inside the message object at any
      // offset): a misaligned frame is copied, since reading its elements in place is undefined.
      at::Tensor tensor;
      if (reinterpret_cast<uintptr_t>(frame->data()) % c10::elementSize(type) == 0) {
        tensor = at::from_blob(frame->data(), shape, [frame](void*) {}, at::TensorOptions().dtype(type));
      } else {
        tensor = at::empty(shape, at::TensorOptions().dtype(type));
        std::memcpy(tensor.data_ptr(), frame->data(), frame->size());
      }
      out.set(name, std::move(tensor));
    }
    for (auto kv : meta.getMeta()) out.meta()[kv.getKey().cStr()] = kv.getValue().cStr();
  } catch (const DecodeError&) {
    throw;
  } catch (const kj::Exception& e) {
    throw DecodeError("bad-envelope", std::string("the batch description does not decode: ") + e.getDescription().cStr());
  } catch (const Error& e) {
    throw DecodeError("bad-tensor", e.what());
  }
  return out;
}

void write_scalars(capnp::List<proto::Scalar>::Builder list, const Scalars& values) {
  for (unsigned i = 0; i < values.size(); ++i) {
    list[i].setName(values[i].first);
    list[i].setValue(values[i].second);
  }
}

Scalars read_scalars(capnp::List<proto::Scalar>::Reader list) {
  Scalars out;
  for (auto v : list) out.emplace_back(v.getName().cStr(), v.getValue());
  return out;
}

int64_t InMessage::payload_bytes() const {
  int64_t n = 0;
  for (size_t i = 1; i < frames_.size(); ++i) n += static_cast<int64_t>(frames_[i]->size());
  return n;
}

void DropCounter::record(const DecodeError& e, const std::string& where) {
  std::lock_guard lock(mutex_);
  if (counts_[e.kind()]++ == 0)
    spdlog::warn("{}: dropped a malformed message ({}): {} (further '{}' drops are counted, not logged)", where,
                 e.kind(), e.what(), e.kind());
}

std::map<std::string, int64_t> DropCounter::counts() const {
  std::lock_guard lock(mutex_);
  return counts_;
}

}  // namespace flotilla::core
