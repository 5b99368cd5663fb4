# Every message between Flotilla processes. A message on the wire is a multipart ZeroMQ message:
# frame 0 is this Envelope (Cap'n Proto, unpacked), and each tensor travels as its own frame,
# named by TensorMeta.frame, so tensor bytes are never copied into or out of the envelope.
@0x931e40c328bb198d;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flotilla::proto");

# Bumped when a change breaks readers; a receiver drops (and counts) other versions.
const schemaVersion :UInt16 = 2;

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
    dataFetch @10 :DataFetch;
    dataReply @11 :DataReply;
    dataRelease @12 :DataRelease;
  }
}

# A call of a worker method (runtime/method.hpp). `args` is the method's own argument struct
# (core/proto/methods.capnp), whose type id travels beside it so a worker can refuse a call made
# with another type.
struct RpcRequest {
  id @0 :UInt64;
  method @1 :Text;
  argsType @2 :UInt64;
  args @3 :AnyPointer;
  input @4 :Input;
  keep @5 :Bool;  # keep the output rows on the worker and reply with a reference to them
}

# The rows a call works on: fields side by side from several sources, each with the same number of
# rows; a source is sent with the call or fetched by the callee from the workers holding it.
struct Input {
  sources @0 :List(Source);
}

struct Source {
  fields @0 :List(Text);
  union {
    segments @1 :List(Segment);  # rows one after another, each from a worker's store
    rows @2 :BatchMeta;          # rows sent with the call
  }
}

# Rows of an object in a worker's store.
struct Segment {
  holder @0 :Text;  # the holder's RPC endpoint
  object @1 :UInt64;
  rows @2 :Rows;
}

struct Rows {
  union {
    range @0 :RowRange;
    indices @1 :List(Int64);
  }
}

struct RowRange {
  begin @0 :Int64;
  end @1 :Int64;
}

struct RpcReply {
  id @0 :UInt64;
  ok @1 :Bool;
  error @2 :Text;  # when not ok: what failed, naming the worker, rank and method
  resultType @3 :UInt64;
  result @4 :AnyPointer;
  output :union {
    batch @5 :BatchMeta;  # the output rows, sent back
    kept @6 :Kept;        # the output rows, kept by the worker
  }
}

struct Kept {
  object @0 :UInt64;
  rows @1 :Int64;
  fields @2 :List(Text);
}

# Rows of a stored object, asked of its holder by another worker or the controller.
struct DataFetch {
  id @0 :UInt64;
  object @1 :UInt64;
  fields @2 :List(Text);  # empty: every field
  rows @3 :Rows;
  # When not empty: elements of the (one-dimensional) fields, these ranges one after another, in
  # one tensor per field; `rows` is then unused. A weight transfer's bucket (runtime/reshard.hpp).
  ranges @4 :List(RowRange);
}

struct DataReply {
  id @0 :UInt64;
  ok @1 :Bool;
  error @2 :Text;
  batch @3 :BatchMeta;
}

# Objects no reference points at any more; the holder frees them.
struct DataRelease {
  objects @0 :List(UInt64);
}

struct Heartbeat {
  rank @0 :UInt32;
  state @1 :Text;
  sentAt @2 :Float64;  # seconds since the epoch
  endpoint @3 :Text;   # where the worker answers calls
  refused @4 :UInt64;  # connections its sockets have refused (CURVE), since it started
}

struct Metrics {
  step @0 :Int64;
  values @1 :List(Scalar);
}

struct InferenceRequest {
  id @0 :UInt64;
  batch @1 :BatchMeta;
  minVersion @2 :Int64;  # answer with parameters of at least this version (lockstep runs)
  seed @3 :UInt64;       # sample with this seed (deterministic runs); 0: the server's generator
}

struct InferenceReply {
  id @0 :UInt64;
  policyVersion @1 :Int64;
  batch @2 :BatchMeta;
}

struct Samples {
  policyVersion @0 :Int64;
  batch @1 :BatchMeta;
  stats @2 :List(Scalar);  # what the producer reports with these samples (finished episodes)
}

struct Parameters {
  version @0 :Int64;
  batch @1 :BatchMeta;
}
