# Every message between Flotilla processes. A message on the wire is a multipart ZeroMQ message:
# frame 0 is this Envelope (Cap'n Proto, unpacked), and each tensor travels as its own frame,
# named by TensorMeta.frame, so tensor bytes are never copied into or out of the envelope.
@0x931e40c328bb198d;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flotilla::proto");

# Bumped when a change breaks readers; a receiver drops (and counts) other versions.
const schemaVersion :UInt16 = 1;

enum DType {
  f32 @0; f64 @1; f16 @2; bf16 @3; i64 @4; i32 @5; i16 @6; i8 @7; u8 @8; bool @9;
}

struct TensorMeta {
  name @0 :Text;
  dtype @1 :DType;
  shape @2 :List(Int64);
  frame @3 :UInt32;  # index of the data frame, counting the envelope as frame 0
}

struct KeyValue {
  key @0 :Text;
  value @1 :Text;
}

# A core::Batch: named tensors that share dim 0, plus string metadata.
struct BatchMeta {
  tensors @0 :List(TensorMeta);
  meta @1 :List(KeyValue);
}

struct Scalar {
  name @0 :Text;
  value @1 :Float64;
}

struct Envelope {
  version @0 :UInt16;
  sender @1 :Text;  # worker name, e.g. "trainer/0"
  union {
    rpcRequest @2 :RpcRequest;
    rpcReply @3 :RpcReply;
    heartbeat @4 :Heartbeat;
    metrics @5 :Metrics;
    inferenceRequest @6 :InferenceRequest;
    inferenceReply @7 :InferenceReply;
    samples @8 :Samples;
    parameters @9 :Parameters;
  }
}

struct RpcRequest {
  id @0 :UInt64;
  method @1 :Text;
  args @2 :Text;  # small arguments as YAML
  batch @3 :BatchMeta;
}

struct RpcReply {
  id @0 :UInt64;
  ok @1 :Bool;
  error @2 :Text;  # when not ok: what failed, naming the worker, rank and method
  result @3 :Text;
  batch @4 :BatchMeta;
}

struct Heartbeat {
  rank @0 :UInt32;
  state @1 :Text;
  sentAt @2 :Float64;  # seconds since the epoch
}

struct Metrics {
  step @0 :Int64;
  values @1 :List(Scalar);
}

struct InferenceRequest {
  id @0 :UInt64;
  batch @1 :BatchMeta;
}

struct InferenceReply {
  id @0 :UInt64;
  policyVersion @1 :Int64;
  batch @2 :BatchMeta;
}

struct Samples {
  policyVersion @0 :Int64;
  batch @1 :BatchMeta;
}

struct Parameters {
  version @0 :Int64;
  batch @1 :BatchMeta;
}
