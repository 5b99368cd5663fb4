#pragma once
// The CLI commands beyond the experiment life cycle; each returns the process exit code.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace CLI {
class App;
}

namespace flotilla::controller {

// The command line's subcommands, each with the action that runs it once parsed.
using CliCommands = std::vector<std::pair<CLI::App*, std::function<int()>>>;
// Adds `flotilla bench` and its benchmarks (controller/cli/bench.cpp).
void add_bench_commands(CLI::App& app, CliCommands& commands);

// `flotilla env list`: ids with their spaces and episode limits.
int env_list(bool json);

struct TraceArgs {
  std::string env;
  uint64_t seed = 0;
  std::string init_state;    // JSON array, or "" to keep the reset state
  std::string actions;       // JSON array of actions
  std::string actions_file;  // a file holding the same (or one action per line)
  std::vector<std::string> params;  // key=value env params (multi-agent scenarios' constructor arguments)
};
// `flotilla env trace`: steps one env and prints one JSON object per line.
int env_trace(const TraceArgs& args);

struct EnvBenchArgs {
  std::string env;
  int64_t num_envs = 4096;
  int threads = 1;
  int64_t steps = 0;  // batch steps; 0 picks enough for about a second
  std::string backend = "cpu";
  bool json = false;
};
// `flotilla bench env`: env steps per second with random valid actions and auto-reset.
int bench_env(const EnvBenchArgs& args);

struct TrainBenchArgs {
  std::string config;
  std::vector<std::string> overrides;
  int seeds = 5;
  int first_seed = 1;
  std::string out_dir = "runs/bench";
  bool json = false;
};
// `flotilla bench train`: runs a config once per seed and prints, per seed and as a median, the
// env steps and wall seconds to the stop condition.
int bench_train(const TrainBenchArgs& args);

struct RlhfBenchArgs {
  std::string config;
  std::vector<std::string> overrides;  // for every variant
  std::vector<std::string> variants;   // "label:key=value,key=value"
  std::string baseline;                // a variant's label; default the first
  std::string out_dir = "runs/bench";
  bool json = false;
};
// `flotilla bench rlhf`: runs an RLHF config once per variant and compares held-out accuracy
// against wall time: each variant's final accuracy, step time, the trainer's share of a step spent
// waiting for samples, staleness, and when it first reached the baseline's final accuracy.
int bench_rlhf(const RlhfBenchArgs& args);

struct StreamBenchArgs {
  int64_t bytes = 1 << 20;
  int64_t count = 1000;
  std::string transport = "tcp";  // tcp (loopback) or ipc
  bool json = false;
  // Internal: set in the sending child process that bench_stream starts.
  std::string send_to, mode, keys;
};
// `flotilla bench stream`: N messages of B bytes from a child process to this one, through
// Flotilla's sample stream (plain, and with CURVE as a run's TCP sockets use it) and through a bare
// ZeroMQ PUSH/PULL pair with the same frames.
int bench_stream(const StreamBenchArgs& args);

struct ReshardBenchArgs {
  std::string model, from = "fsdp=4", to = "dp=2,tp=2", placement = "split";
  double bucket_mb = 32;
  int window = 4;
  int repeats = 3;
  bool replicated_vocab = false;  // every tp rank holds the whole embedding and head
  bool json = false, quiet = false;
};

// Moves a model's weights from one layout to another over worker processes, by the reshard plan
// and by the all-gather + broadcast baseline; prints bytes and time of both.
int bench_reshard(const ReshardBenchArgs& args);

struct LmInitArgs {
  std::string arch = "qwen3", preset = "tiny", out, dtype = "float32", head = "lm";
  int64_t vocab = 512;
  uint64_t seed = 1;
  // Sizes that replace the preset's (0: the preset's).
  int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
};
// `flotilla lm init`: a randomly initialized model directory in Hugging Face's layout.
int lm_init(const LmInitArgs& args);

struct LmScoreArgs {
  std::string model, tokens_file;
};
// `flotilla lm score`: per line of token ids, the log-probability of each token after the first
// given those before it (one JSON array per line).
int lm_score(const LmScoreArgs& args);

struct GenerateArgs {
  std::string model, prompt;
  int n = 1;
  int64_t max_tokens = 64, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
};
// `flotilla generate`: n samples of a prompt through the generation engine, one JSON line each.
int generate(const GenerateArgs& args);

// Sets OpenBLAS's own thread count and returns the one before; 0 (and nothing done) when the
// BLAS is not OpenBLAS.
int set_openblas_threads(int n);

struct GenerateBenchArgs {
  std::string model;
  std::vector<int64_t> batches = {1, 8, 32, 128};
  int64_t prompt_len = 64, gen_len = 32;
  int group = 1;          // samples per prompt sharing its prefix (a GRPO group); 1: none
  int threads = 0;        // libtorch's threads for both loops; 0: its default
  int64_t prefill_chunk = 256;
  bool reference = false; // also run the eager libtorch loop (models::eager_greedy)
  std::string weights = "float32";  // the engine's weights; bfloat16 also measures its log-prob cost
  bool stream = false;    // also a continuous stream of requests, chunked prefill against whole prompts
  uint64_t seed = 1;
  bool json = false;
};
// `flotilla bench generate`: the engine's prefill and decode rates at each batch size, as shares of
// this machine's measured sgemm rate and memory bandwidth; with --group, against the same prompts
// without prefix sharing; with --reference, against an eager libtorch loop in the same process;
// with --stream, chunked prefill against whole-prompt prefill under continuous batching.
int bench_generate(const GenerateBenchArgs& args);

struct UpdateBenchArgs {
  std::string model;
  int64_t prompts = 32, prompt_len = 48, gen_len = 8, micro_batch = 64;
  int group = 8;     // samples per prompt
  int threads = 1;   // libtorch's threads (OpenBLAS runs on one)
  int repeats = 5;
  uint64_t seed = 1;
  bool json = false;
};
// `flotilla bench update`: the median time of a policy update on groups of rows sharing their
// prompt, over whole sequences and with shared prompts (algorithms::LmOptimConfig::shared_prompts),
// in the same run.
int bench_update(const UpdateBenchArgs& args);

struct CheckpointBenchArgs {
  std::string model, dir;  // dir: where the checkpoints are written ("" = a temporary directory)
  int repeats = 2;
  int64_t batch = 4, seq_len = 64;
  bool json = false;
};
// `flotilla bench checkpoint`: the training stall of a checkpoint of a model with its Adam state,
// written synchronously (the files, then the manifest with every file's SHA-256) against
// asynchronously (a copy in host memory; the files and manifest written in the background while
// training steps go on), and how much those steps slow down meanwhile.
int bench_checkpoint(const CheckpointBenchArgs& args);

struct DataMakeArgs {
  std::string task, out;
  int64_t n = 1000;
  uint64_t seed = 0;
  int max_digits = 4, min_digits = 0, length = 6, min_length = 0;
  bool show_work = false;
  std::string kind = "verifiable";  // verifiable, sft or preference
};
// `flotilla data make TASK`: a JSONL dataset of a synthetic task with verifiable answers (or the
// same examples as SFT or preference data).
int data_make(const DataMakeArgs& args);

struct TokenizeArgs {
  std::string tokenizer;  // tokenizer.json, a model directory, encoder.json (GPT-2) or "bytes"
  std::string text, file;
  bool from_stdin = false;
  bool decode = false;
};
// `flotilla tokenize`: one JSON array of ids per input line (or, with --decode, one JSON string
// per line of ids).
int tokenize(const TokenizeArgs& args);

struct TokenizeBenchArgs {
  std::string tokenizer, file;
  std::string reference;  // "qwen3" or "gpt2": also time the npm reference encoder on the file
  bool json = false;
};
// `flotilla bench tokenize`: encoding throughput in MB per second over a file, line by line.
int bench_tokenize(const TokenizeBenchArgs& args);

}  // namespace flotilla::controller
