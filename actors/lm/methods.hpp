#pragma once
// The RLHF roles' methods (runtime/method.hpp), shared by the workers that serve them
// (actors/lm/worker.cpp) and the program that calls them (controller/programs/rlhf.cpp). Rows
// follow the sequence layout of algorithms/lm_trainer.hpp; outputs that other workers consume are
// kept where they are made (Collect::Keep).
#include "runtime/method.hpp"

namespace flotilla::actors::lm {

using runtime::Collect;
using runtime::Dispatch;
using runtime::MethodSpec;

// Samples continuations of the input prompts (`prompt_tokens`, `prompt_len`, `example`): n per
// prompt, rows p*n .. p*n+n-1, with `tokens`, `response_mask`, `last`, `rollout_log_prob`,
// `token_version` (the policy version of each generated token), `response_length`, `truncated`
// and `example`. The result is the version the rollout generated with.
struct Generate {
  static constexpr MethodSpec spec{"rollout.generate", Dispatch::DpChunks, Collect::Keep};
  using Wire = proto::Sampling;
  using Result = runtime::Version;
  int64_t n = 1;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0, max_new_tokens = 0;  // 0: the config's
  uint64_t seed = 0;
  std::vector<int32_t> stop;
  int64_t width = 0;  // rows padded to at least this many tokens (a deterministic run's fixed width)
  auto fields() { return std::tie(n, temperature, top_p, top_k, max_new_tokens, seed, stop, width); }
};

// What a weight sync cost a rollout.
struct Synced {
  int64_t version = 0;
  double pause_s = 0;    // how long generation stopped for the copy
  int64_t inflight = 0;  // sequences being generated when it landed
  int64_t step = 0;      // the engine step it landed before
  double fetch_s = 0;    // pulling its slice from the actor ranks (before the pause)
  int64_t received_bytes = 0;
  int64_t buckets = 0;  // the transfers they came in
  using Wire = proto::Synced;
  auto fields() { return std::tie(version, pause_s, inflight, step, fetch_s, received_bytes, buckets); }
};

// Brings the rollout's weights to `version`. A rollout with a model of its own pulls its slice
// from the actor ranks' buffers (`holders`, `objects`: one per actor rank, kept by
// PublishWeights) as the reshard plan from the actor's layout to its own says; a colocated one
// generates with the actor's weights. It has a lane of its own: a generation in progress takes
// the new weights between two engine steps, and its sequences then go on with them
// ("continue"), go on with their KV cache recomputed under them ("recompute"), or start again
// ("abort"). Statistics of the transfer are in the worker's counters (sync/*).
struct SyncWeights {
  static constexpr MethodSpec spec{"rollout.sync", Dispatch::OneToAll, Collect::AllRanks, "weights"};
  using Wire = proto::Sync;
  using Result = Synced;
  int64_t version = 0;
  std::string on_update = "continue";
  std::vector<std::string> holders;
  std::vector<int64_t> objects;
  auto fields() { return std::tie(version, on_update, holders, objects); }
};

// Queues prompts for the rollout's continuous generation (`prompt_tokens`, `prompt_len`,
// `example`, and per prompt its `group` id, sampling `seed` and `admitted` version: it starts only
// with weights of that version or newer). Returns at once.
struct Submit {
  static constexpr MethodSpec spec{"rollout.submit", Dispatch::OneRank, Collect::RankZero, "submit"};
  using Wire = proto::Sampling;
  using Result = runtime::Void;
  int64_t n = 1;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0, max_new_tokens = 0;
  uint64_t seed = 0;  // unused: each prompt has its own
  std::vector<int32_t> stop;
  int64_t width = 0;  // as Generate's
  auto fields() { return std::tie(n, temperature, top_p, top_k, max_new_tokens, seed, stop, width); }
};

// Where the rollout's engine-step count starts (a resumed run's) and, with `replay`, the recorded
// schedule to follow: group start_groups[i] starts at step start_steps[i], and the weights of
// sync_versions[i] land before step sync_steps[i].
struct Follow {
  static constexpr MethodSpec spec{"rollout.follow", Dispatch::OneRank, Collect::RankZero, "submit"};
  using Wire = proto::Follow;
  using Result = runtime::Void;
  int64_t from_step = 0;
  bool replay = false;
  std::vector<int64_t> start_groups, start_steps, sync_versions, sync_steps;
  auto fields() { return std::tie(from_step, replay, start_groups, start_steps, sync_versions, sync_steps); }
};

// The groups the continuous generation finished since the last call (waiting up to `milliseconds`
// for one), kept on the rollout: rows as Generate's, plus `group`, `admitted` and
// `oldest_version` (the version of each row's first token) and `start_step` (the engine step
// its group started at). The result carries the rollout's counters (rollout/step, ...).
struct CollectGroups {
  static constexpr MethodSpec spec{"rollout.collect", Dispatch::OneRank, Collect::Keep, "collect"};
  using Wire = proto::Wait;
  using Result = runtime::Stats;
  int64_t milliseconds = 0;
  auto fields() { return std::tie(milliseconds); }
};

// Every actor rank keeps its flat buffer of the current weights in its training layout (`flat`,
// runtime/layout.hpp; the version in the object's metadata) for the rollouts to pull from.
inline constexpr MethodSpec kPublishWeights{"actor.publish", Dispatch::OneToAll, Collect::Keep};
using PublishWeights = runtime::NoArgs<kPublishWeights, runtime::Version>;

// Per-token log-probabilities of the input `tokens`: the actor's (`old_log_prob`) and the frozen
// reference's (`ref_log_prob`); the critic's values (`values`).
inline constexpr MethodSpec kActorLogProbs{"actor.log_probs", Dispatch::DpChunks, Collect::Keep};
inline constexpr MethodSpec kRefLogProbs{"ref.log_probs", Dispatch::DpChunks, Collect::Keep};
inline constexpr MethodSpec kCriticValues{"critic.values", Dispatch::DpChunks, Collect::Keep};
using ActorLogProbs = runtime::NoArgs<kActorLogProbs>;
using RefLogProbs = runtime::NoArgs<kRefLogProbs>;
using CriticValues = runtime::NoArgs<kCriticValues>;

// Scores generated rows (`tokens`, `last`, `response_length`, `example`) against the examples of
// a split with the configured reward (a rule, a command or a reward model), or with the task's
// own check when `check` (held-out accuracy). `scores` come back to the caller; the result
// counts failed reward commands. On a lane of its own: a colocated worker scores while it
// computes log-probs.
struct Score {
  static constexpr MethodSpec spec{"reward.score", Dispatch::DpChunks, Collect::AllRanks, "reward"};
  using Wire = proto::Scoring;
  using Result = runtime::Stats;
  std::string split = "train";
  bool check = false;
  auto fields() { return std::tie(split, check); }
};

// The reward head of the model the actor trains (reward-model training): `scores` of the input
// rows at their `last` token.
inline constexpr MethodSpec kRewardHeadScores{"actor.rewards", Dispatch::DpChunks, Collect::AllRanks};
using RewardHeadScores = runtime::NoArgs<kRewardHeadScores>;

// Advantages (and, with a critic, returns) of a whole step's rows: `scores`, `response_mask`,
// `old_log_prob`, and `ref_log_prob` / `values` when the algorithm has them. Rank 0 takes every
// row, so batch-wide normalizations match one process. Kept there for the updates.
struct EstimateAdvantages {
  static constexpr MethodSpec spec{"actor.advantages", Dispatch::RankZero, Collect::Keep};
  using Wire = proto::Advantage;
  using Result = runtime::Stats;
  double kl_coef = 0;
  auto fields() { return std::tie(kl_coef); }
};

// One update of the actor (its configured loss) or the critic on the input rows, data-parallel
// over the group's ranks; rank 0's statistics come back.
template <const MethodSpec& Spec>
struct Update {
  static constexpr MethodSpec spec = Spec;
  using Wire = proto::Seed;
  using Result = runtime::Stats;
  uint64_t seed = 0;
  auto fields() { return std::tie(seed); }
};
inline constexpr MethodSpec kUpdateActor{"actor.update", Dispatch::DpChunks, Collect::RankZero};
inline constexpr MethodSpec kUpdateCritic{"critic.update", Dispatch::DpChunks, Collect::RankZero};
using UpdateActor = Update<kUpdateActor>;
using UpdateCritic = Update<kUpdateCritic>;

// Saving and loading a trained model (HF files plus optimizer.safetensors): rank 0 writes.
inline constexpr MethodSpec kSaveActor{"actor.save", Dispatch::OneToAll, Collect::RankZero};
inline constexpr MethodSpec kLoadActor{"actor.load", Dispatch::OneToAll, Collect::RankZero};
inline constexpr MethodSpec kSaveCritic{"critic.save", Dispatch::OneToAll, Collect::RankZero};
inline constexpr MethodSpec kLoadCritic{"critic.load", Dispatch::OneToAll, Collect::RankZero};
using SaveActor = runtime::DirectoryMethod<kSaveActor>;
using LoadActor = runtime::DirectoryMethod<kLoadActor>;
using SaveCritic = runtime::DirectoryMethod<kSaveCritic>;
using LoadCritic = runtime::DirectoryMethod<kLoadCritic>;

}  // namespace flotilla::actors::lm
