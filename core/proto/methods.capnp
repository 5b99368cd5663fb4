# Arguments and results of worker methods (runtime/method.hpp). Each C++ method or result struct
# names one of these as its `Wire` and lists its fields in the same order; several methods may
# share a struct. Adding a field at the end keeps old readers working.
@0xa59c5218b49d3e3f;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flotilla::proto");

using import "messages.capnp".Scalar;

struct Empty {}

# Named numbers: training statistics, counters.
struct Stats {
  values @0 :List(Scalar);
}

# A policy or weights version.
struct Version {
  version @0 :Int64;
}

# What a worker is doing: configured, running, paused, ... and its counters.
struct Status {
  worker @0 :Text;
  state @1 :Text;
  counters @2 :List(Scalar);
}

# The run's resolved experiment config (YAML), read by every worker with the same code as the
# controller.
struct RunConfig {
  yaml @0 :Text;
}

struct Count {
  n @0 :Int64;
}

# A random seed for one call (an update's shuffling, a rollout's sampling).
struct Seed {
  seed @0 :UInt64;
}

# Where to save or load a model (or a checkpoint shard).
struct Directory {
  dir @0 :Text;
  optimizer @1 :Bool;  # with the optimizer state
  version @2 :Int64;   # the version the loaded weights become
  step @3 :Int64;
  background @4 :Bool;  # save: copy the state now, write it on a thread of its own
}

# How to sample continuations of the prompts in a call's input.
struct Sampling {
  n @0 :Int64;                 # samples per prompt
  temperature @1 :Float64;     # 0: greedy
  topP @2 :Float64;
  topK @3 :Int64;
  maxNewTokens @4 :Int64;
  seed @5 :UInt64;
  stop @6 :List(Int32);        # stop tokens
  width @7 :Int64;             # rows at least this many tokens wide (0: as wide as the longest)
}

# Advantage estimation over a step's samples.
struct Advantage {
  klCoef @0 :Float64;  # the current coefficient of the KL in the reward
}

# Scoring generated responses against the examples they answer.
struct Scoring {
  split @0 :Text;      # "train" or "val": the dataset the rows' `example` indices point into
  check @1 :Bool;      # the task's own check only (evaluation), not the training reward
}

# A test method's arguments (tests/support/test_programs.cpp).
struct Scale {
  factor @0 :Float64;
  note @1 :Text;
}

# A weight sync and what happens to the sequences a rollout is generating when it lands.
struct Sync {
  version @0 :Int64;
  onUpdate @1 :Text;  # continue, recompute (continue with their KV cache recomputed) or abort (start again)
  holders @2 :List(Text);   # split placement: each actor rank's endpoint (runtime/reshard.hpp)
  objects @3 :List(Int64);  # the object holding that rank's flat buffer of this version
}

# What a weight sync cost a rollout: how long generation stopped for it, and what was in flight.
struct Synced {
  version @0 :Int64;
  pauseSeconds @1 :Float64;
  inflight @2 :Int64;  # sequences being generated when it landed
  step @3 :Int64;      # the rollout's engine step it landed before
  fetchSeconds @4 :Float64;  # pulling this rank's slice from the actor ranks
  receivedBytes @5 :Int64;   # bytes it pulled
  buckets @6 :Int64;         # transfers they came in
}

# Where a rollout's engine-step count starts and, to repeat a recorded run, the step each group
# starts at and each weights version lands before.
struct Follow {
  fromStep @0 :Int64;
  replay @1 :Bool;
  startGroups @2 :List(Int64);
  startSteps @3 :List(Int64);
  syncVersions @4 :List(Int64);
  syncSteps @5 :List(Int64);
}

# How long a call may wait for something to happen.
struct Wait {
  milliseconds @0 :Int64;
}

# A weight transfer between layouts (runtime/reshard.hpp): the version, where each source rank
# keeps its flat buffer of it, and the transfer's bucket size and window.
struct Reshard {
  version @0 :Int64;
  holders @1 :List(Text);   # each source rank's endpoint
  objects @2 :List(Int64);  # the object holding that rank's flat buffer
  bucketBytes @3 :Int64;
  window @4 :Int64;         # buckets in flight per source
  mode @5 :Text;            # "plan", or "baseline" (whole parameters from one holder)
}
