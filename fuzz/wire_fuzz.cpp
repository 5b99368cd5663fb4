// Message decoding, as every receiving socket does it: frames -> InMessage::decode, then every
// field of the envelope read (whatever its type), every batch description turned into tensors
// over the frames, and the scalars read. An input is: a byte k (k % 5 tensor frames), k 16-bit
// little-endian frame lengths, then the envelope's bytes followed by the tensor frames' bytes.
#include <capnp/dynamic.h>
#include <capnp/schema.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>
#include <zmq.hpp>

#include "core/error.hpp"
#include "core/wire.hpp"

namespace {
using flotilla::core::InMessage;

void walk(const InMessage& m, capnp::DynamicValue::Reader v, int depth) {
  if (depth > 32) return;
  switch (v.getType()) {
    case capnp::DynamicValue::STRUCT: {
      auto s = v.as<capnp::DynamicStruct>();
      if (s.getSchema().getProto().getId() == capnp::typeId<flotilla::proto::BatchMeta>()) {
        try {
          (void)m.batch(s.as<flotilla::proto::BatchMeta>()).size();
        } catch (const flotilla::core::DecodeError&) {
        }
      }
      for (auto f : s.getSchema().getNonUnionFields()) {
        if (f.getType().isAnyPointer()) {
          // A method's arguments or result: each method's own type, read by the runtime's codec
          // inside the call, where a failure becomes the call's error (runtime/worker.cpp).
          try {
            auto p = s.get(f).as<capnp::AnyPointer>();
            if (!p.isNull()) (void)p.getAs<capnp::AnyStruct>().totalSize();
          } catch (const std::exception&) {
          }
          continue;
        }
        if (s.has(f)) walk(m, s.get(f), depth + 1);
      }
      KJ_IF_MAYBE (u, s.which()) {
        walk(m, s.get(*u), depth + 1);
      }
      break;
    }
    case capnp::DynamicValue::LIST:
      for (auto e : v.as<capnp::DynamicList>()) walk(m, e, depth + 1);
      break;
    case capnp::DynamicValue::TEXT: (void)v.as<capnp::Text>().size(); break;
    case capnp::DynamicValue::DATA: (void)v.as<capnp::Data>().size(); break;
    default: break;  // numbers, enums; AnyPointer args are each method's own type (runtime/codec)
  }
}

std::shared_ptr<zmq::message_t> frame(const uint8_t* data, size_t size) { return std::make_shared<zmq::message_t>(data, size); }
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t k = data[0] % 5;
  size_t at = 1;
  std::vector<size_t> lengths;
  for (size_t i = 0; i < k && at + 2 <= size; ++i, at += 2) lengths.push_back(data[at] | (size_t{data[at + 1]} << 8));
  size_t tensors = 0;
  for (size_t& n : lengths) n = std::min(n, size - at - tensors), tensors += n;
  const size_t envelope = size - at - tensors;
  std::vector<std::shared_ptr<zmq::message_t>> frames = {frame(data + at, envelope)};
  at += envelope;
  for (size_t n : lengths) frames.push_back(frame(data + at, n)), at += n;
  try {
    InMessage m = InMessage::decode(std::move(frames));
    walk(m, capnp::toDynamic(m.envelope()), 0);
    if (m.envelope().isMetrics()) (void)flotilla::core::read_scalars(m.envelope().getMetrics().getValues());
    if (m.envelope().isSamples()) (void)flotilla::core::read_scalars(m.envelope().getSamples().getStats());
    (void)m.payload_bytes();
  } catch (const flotilla::core::DecodeError&) {
  }
  return 0;
}
