#include "controller/cli/cli.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <dlfcn.h>

#include <cstdlib>
#include <iostream>

#include "controller/cli/commands.hpp"
#include "controller/run/experiment.hpp"
#include "controller/cli/plot.hpp"
#include "actors/roles.hpp"
#include "controller/run/checkpoint.hpp"
#include "controller/programs/rl.hpp"
#include "core/log.hpp"

#ifndef FLOTILLA_VERSION
#define FLOTILLA_VERSION "unknown"
#endif

namespace {

using namespace flotilla;

struct ConfigArgs {
  std::string file;
  std::vector<std::string> overrides;
};

void add_config_args(CLI::App* cmd, ConfigArgs& args) {
  cmd->add_option("config", args.file, "experiment YAML file")->required()->check(CLI::ExistingFile);
  cmd->add_option("overrides", args.overrides, "key.path=value overrides, applied in order");
}

// libtorch runs its own thread pool; OpenBLAS's pool on top of it oversubscribes the cores and runs
// several times slower. A user's explicit OPENBLAS_NUM_THREADS is left alone.
void pin_openblas_threads() {
  if (std::getenv("OPENBLAS_NUM_THREADS")) return;
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(1);
}

int run_command(const ConfigArgs& args, const controller::RunOptions& options) {
  controller::LoadedExperiment loaded = controller::load_experiment(args.file, args.overrides);
  return controller::run_experiment(loaded, options);
}

}  // namespace

int flotilla::controller::cli_main(int argc, char** argv) {
  pin_openblas_threads();
  CLI::App app{"Flotilla: distributed reinforcement learning and RLHF.\n"
               "Run `flotilla COMMAND --help` for the options of a command."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every command");

  ConfigArgs run_args;
  controller::RunOptions run_options;
  bool quiet = false;
  std::string progress = "auto";
  auto* run = app.add_subcommand("run", "run an experiment; results go to a new run directory");
  add_config_args(run, run_args);
  run->add_flag("-q,--quiet", quiet, "no progress bar or progress lines; warnings and errors only");
  run->add_option("--progress", progress, "progress display: auto (bar on a terminal, lines otherwise), bar, lines")
      ->check(CLI::IsMember({"auto", "bar", "lines"}));
  run->add_option("--log-level", run_options.log_level, "trace, debug, info, warn or error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));

  std::string resume_dir;
  auto* resume = app.add_subcommand("resume", "continue a stopped run from its newest checkpoint, in the same directory");
  resume->add_option("run_dir", resume_dir, "run directory")->required()->check(CLI::ExistingDirectory);
  resume->add_flag("-q,--quiet", quiet, "no progress bar or progress lines; warnings and errors only");

  std::string eval_checkpoint;
  int eval_episodes = 10;
  bool eval_deterministic = false, eval_json = false;
  uint64_t eval_seed = 12345;
  auto* eval = app.add_subcommand("eval", "run a checkpoint's policy for some episodes and report the return");
  eval->add_option("checkpoint", eval_checkpoint, "checkpoint (.json or .safetensors), or a run directory (newest)")
      ->required()
      ->check(CLI::ExistingPath);
  eval->add_option("--episodes", eval_episodes, "episodes to run")->check(CLI::Range(1, 1000000));
  eval->add_flag("--deterministic", eval_deterministic, "take the most likely action instead of sampling");
  eval->add_option("--seed", eval_seed, "env and sampling seed");
  eval->add_flag("--json", eval_json, "print one JSON object");

  ConfigArgs validate_args;
  auto* validate = app.add_subcommand("validate", "check an experiment config without running it");
  add_config_args(validate, validate_args);

  ConfigArgs show_args;
  auto* config = app.add_subcommand("config", "inspect experiment configs");
  config->require_subcommand(1);
  auto* show = config->add_subcommand("show", "print the fully resolved config (defaults, overrides and every default value)");
  add_config_args(show, show_args);

  std::string plot_dir, plot_out;
  std::vector<std::string> plot_metrics;
  auto* plot = app.add_subcommand("plot", "draw PNG charts of a run's metrics (needs gnuplot)");
  plot->add_option("run_dir", plot_dir, "run directory")->required()->check(CLI::ExistingDirectory);
  plot->add_option("metrics", plot_metrics, "metric names, e.g. charts/episodic_return (default: all)");
  plot->add_option("--out", plot_out, "output directory (default: RUN_DIR/plots)");

  auto* env_cmd = app.add_subcommand("env", "list and inspect environments");
  env_cmd->require_subcommand(1);
  bool env_list_json = false;
  auto* env_list_cmd = env_cmd->add_subcommand("list", "environment ids with their spaces and episode limits");
  env_list_cmd->add_flag("--json", env_list_json, "print JSON");
  controller::TraceArgs trace;
  auto* trace_cmd = env_cmd->add_subcommand(
      "trace", "step one env and print one JSON object per line (for checking against a reference)");
  trace_cmd->add_option("--env", trace.env, "environment id")->required();
  trace_cmd->add_option("--seed", trace.seed, "reset seed");
  trace_cmd->add_option("--init-state", trace.init_state,
                        "the state right after reset: a JSON array in Gymnasium's env.unwrapped.state order, or for "
                        "MPE {\"agents\":[{\"p_pos\":[x,y],\"p_vel\":[x,y]},...],\"landmarks\":[{\"p_pos\":[x,y]},...]}");
  trace_cmd->add_option("--param", trace.params, "env parameter key=value, e.g. N=4 (repeatable)");
  auto* actions_opt = trace_cmd->add_option(
      "--actions", trace.actions, "JSON array of actions, one per step (multi-agent: a list of per-agent actions)");
  trace_cmd->add_option("--actions-file", trace.actions_file, "file with a JSON array of actions (or one per line)")
      ->check(CLI::ExistingFile)
      ->excludes(actions_opt);

  auto* bench = app.add_subcommand("bench", "benchmarks that print figures");
  bench->require_subcommand(1);
  controller::EnvBenchArgs bench_env_args;
  auto* bench_env_cmd = bench->add_subcommand("env", "env steps per second (random valid actions, auto-reset on)");
  bench_env_cmd->add_option("--env", bench_env_args.env, "environment id")->required();
  bench_env_cmd->add_option("--num-envs", bench_env_args.num_envs, "envs stepped together")->check(CLI::Range(1, 1 << 26));
  bench_env_cmd->add_option("--threads", bench_env_args.threads, "CPU threads")->check(CLI::Range(1, 256));
  bench_env_cmd->add_option("--steps", bench_env_args.steps, "batch steps to time (default: about one second)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  bench_env_cmd->add_option("--backend", bench_env_args.backend, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench_env_cmd->add_flag("--json", bench_env_args.json, "print one JSON object");

  controller::TrainBenchArgs bench_train_args;
  auto* bench_train_cmd =
      bench->add_subcommand("train", "run a config once per seed; steps and wall seconds to its stop condition");
  bench_train_cmd->add_option("config", bench_train_args.config, "experiment YAML file")->required()->check(CLI::ExistingFile);
  bench_train_cmd->add_option("overrides", bench_train_args.overrides, "key.path=value overrides");
  bench_train_cmd->add_option("--seeds", bench_train_args.seeds, "how many seeds")->check(CLI::Range(1, 1000));
  bench_train_cmd->add_option("--first-seed", bench_train_args.first_seed, "the first seed (then +1, +2, ...)");
  bench_train_cmd->add_option("--out", bench_train_args.out_dir, "where the runs go (default runs/bench)");
  bench_train_cmd->add_flag("--json", bench_train_args.json, "print one JSON object");

  controller::TokenizeBenchArgs bench_tok_args;
  auto* bench_tok_cmd = bench->add_subcommand("tokenize", "tokenizer encoding throughput (MB per second) over a file");
  bench_tok_cmd->add_option("--tokenizer", bench_tok_args.tokenizer, "tokenizer.json, model directory, encoder.json or bytes")
      ->required();
  bench_tok_cmd->add_option("--file", bench_tok_args.file, "UTF-8 text, encoded line by line")->required()->check(CLI::ExistingFile);
  bench_tok_cmd->add_option("--reference", bench_tok_args.reference,
                            "also time the npm reference encoder (qwen3 or gpt2) on the same file")
      ->check(CLI::IsMember({"qwen3", "gpt2"}));
  bench_tok_cmd->add_flag("--json", bench_tok_args.json, "print one JSON object");

  auto* lm = app.add_subcommand("lm", "language models in Hugging Face's layout");
  lm->require_subcommand(1);
  controller::LmInitArgs lm_init_args;
  auto* lm_init_cmd = lm->add_subcommand("init", "write a randomly initialized model (config.json, model.safetensors, tokenizer.json)");
  lm_init_cmd->add_option("--arch", lm_init_args.arch, "qwen2, qwen3 or llama")->check(CLI::IsMember({"qwen2", "qwen3", "llama"}));
  lm_init_cmd->add_option("--preset", lm_init_args.preset, "tiny or small")->check(CLI::IsMember({"tiny", "small"}));
  lm_init_cmd->add_option("--vocab", lm_init_args.vocab, "vocabulary size (at least 259: bytes and 3 specials)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 22));
  lm_init_cmd->add_option("--out", lm_init_args.out, "the model directory to write")->required();
  lm_init_cmd->add_option("--dtype", lm_init_args.dtype, "float32, bfloat16 or float16")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  lm_init_cmd->add_option("--seed", lm_init_args.seed, "seed of the random weights");
  lm_init_cmd->add_option("--head", lm_init_args.head, "lm (next-token logits), value (critic) or reward")
      ->check(CLI::IsMember({"lm", "value", "reward"}));
  controller::LmScoreArgs lm_score_args;
  auto* lm_score_cmd = lm->add_subcommand("score", "log-probability of each token given the ones before it, per line of ids");
  lm_score_cmd->add_option("--model", lm_score_args.model, "model directory")->required()->check(CLI::ExistingDirectory);
  lm_score_cmd->add_option("--tokens-file", lm_score_args.tokens_file, "one JSON array of token ids per line")
      ->required()
      ->check(CLI::ExistingFile);

  controller::GenerateArgs gen_args;
  auto* gen_cmd = app.add_subcommand("generate", "sample continuations of a prompt with the generation engine (JSON lines)");
  gen_cmd->add_option("--model", gen_args.model, "model directory (config.json, model.safetensors, tokenizer.json)")
      ->required()
      ->check(CLI::ExistingDirectory);
  gen_cmd->add_option("--prompt", gen_args.prompt, "prompt text")->required();
  gen_cmd->add_option("--n", gen_args.n, "samples of the prompt")->check(CLI::Range(1, 4096));
  gen_cmd->add_option("--max-tokens", gen_args.max_tokens, "new tokens at most")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  gen_cmd->add_option("--temperature", gen_args.temperature, "0: greedy")->check(CLI::Range(0.0, 100.0));
  gen_cmd->add_option("--top-p", gen_args.top_p, "nucleus sampling mass")->check(CLI::Range(1e-9, 1.0));
  gen_cmd->add_option("--top-k", gen_args.top_k, "0: no limit")->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  gen_cmd->add_option("--seed", gen_args.seed, "seed (sample k uses seed + k)");

  controller::GenerateBenchArgs bench_gen_args;
  auto* bench_gen_cmd = bench->add_subcommand(
      "generate", "generation tokens per second: the engine next to recomputing the full sequence per token");
  bench_gen_cmd->add_option("--model", bench_gen_args.model, "model directory")->required()->check(CLI::ExistingDirectory);
  bench_gen_cmd->add_option("--batch", bench_gen_args.batch, "sequences")->check(CLI::Range(int64_t{1}, int64_t{4096}));
  bench_gen_cmd->add_option("--prompt-len", bench_gen_args.prompt_len, "prompt tokens")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench_gen_cmd->add_option("--gen-len", bench_gen_args.gen_len, "generated tokens")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench_gen_cmd->add_flag("--json", bench_gen_args.json, "print one JSON object");

  auto* data = app.add_subcommand("data", "datasets for language-model jobs");
  data->require_subcommand(1);
  controller::DataMakeArgs data_args;
  auto* data_make_cmd = data->add_subcommand("make", "write a synthetic task with verifiable answers as JSONL {prompt, answer}");
  data_make_cmd->add_option("task", data_args.task, "addition, sort or reverse")
      ->required()
      ->check(CLI::IsMember({"addition", "sort", "reverse"}));
  data_make_cmd->add_option("--n", data_args.n, "examples")->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  data_make_cmd->add_option("--seed", data_args.seed, "seed (the same examples on every machine)");
  data_make_cmd->add_option("--out", data_args.out, "output file (default: standard output)");
  data_make_cmd->add_option("--max-digits", data_args.max_digits, "addition: operands of 1 to this many digits")
      ->check(CLI::Range(1, 18));
  data_make_cmd->add_option("--length", data_args.length, "sort: numbers per list; reverse: letters per string")
      ->check(CLI::Range(1, 1000));
  data_make_cmd->add_option("--kind", data_args.kind, "verifiable {prompt, answer}, sft {prompt, response} or preference {prompt, chosen, rejected}")
      ->check(CLI::IsMember({"verifiable", "sft", "preference"}));

  controller::TokenizeArgs tok_args;
  auto* tok_cmd = app.add_subcommand("tokenize", "encode text to token ids (one JSON array per input line), or decode");
  tok_cmd->add_option("--tokenizer", tok_args.tokenizer, "tokenizer.json, model directory, encoder.json (GPT-2) or bytes")
      ->required();
  auto* tok_text = tok_cmd->add_option("--text", tok_args.text, "text to encode (each line separately)");
  auto* tok_file = tok_cmd->add_option("--file", tok_args.file, "file to encode, line by line")->check(CLI::ExistingFile);
  tok_cmd->add_flag("--stdin", tok_args.from_stdin, "read the input from standard input")->excludes(tok_text)->excludes(tok_file);
  tok_text->excludes(tok_file);
  tok_cmd->add_flag("--decode", tok_args.decode, "input lines are JSON arrays of ids; print each decoded text as a JSON string");

  controller::StreamBenchArgs bench_stream_args;
  auto* bench_stream_cmd = bench->add_subcommand(
      "stream", "throughput of Flotilla's sample stream between two processes, next to bare ZeroMQ");
  bench_stream_cmd->add_option("--bytes", bench_stream_args.bytes, "bytes per message")->check(CLI::Range(int64_t{1}, int64_t{1} << 32));
  bench_stream_cmd->add_option("--count", bench_stream_args.count, "messages")->check(CLI::Range(int64_t{2}, int64_t{1} << 40));
  bench_stream_cmd->add_option("--transport", bench_stream_args.transport, "tcp (loopback) or ipc")
      ->check(CLI::IsMember({"tcp", "ipc"}));
  bench_stream_cmd->add_flag("--json", bench_stream_args.json, "print one JSON object");
  bench_stream_cmd->add_option("--send-to", bench_stream_args.send_to)->group("");  // the sending child's
  bench_stream_cmd->add_option("--mode", bench_stream_args.mode)->group("");

  runtime::WorkerInfo worker_info;
  int heartbeat_ms = 500;
  auto* worker = app.add_subcommand("worker", "a worker process (started by the controller, never by hand)");
  worker->group("");  // not listed in --help
  worker->add_option("--role", worker_info.role)->required();
  worker->add_option("--rank", worker_info.rank)->required();
  worker->add_option("--world-size", worker_info.world_size);
  worker->add_option("--experiment", worker_info.experiment)->required();
  worker->add_option("--trial", worker_info.trial)->required();
  worker->add_option("--name-dir", worker_info.name_dir)->required();
  worker->add_option("--host", worker_info.host);
  worker->add_option("--heartbeat-ms", heartbeat_ms);
  worker->add_option("--controller-pid", worker_info.controller_pid);
  worker->add_option("--heartbeat-to", worker_info.heartbeat_to)->required();
  worker->add_option("--metrics-to", worker_info.metrics_to)->required();

  auto* version = app.add_subcommand("version", "print the version and build facts");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  core::init_logging();
  try {
    if (*run) {
      if (quiet) run_options.progress = controller::ProgressMode::Quiet;
      else if (progress == "bar") run_options.progress = controller::ProgressMode::Bar;
      else if (progress == "lines") run_options.progress = controller::ProgressMode::Lines;
      return run_command(run_args, run_options);
    }
    if (*validate) {
      controller::LoadedExperiment loaded = controller::load_experiment(validate_args.file, validate_args.overrides);
      std::cout << validate_args.file << ": valid (program '" << loaded.experiment.program << "', name '"
                << loaded.experiment.name << "')\n";
      return 0;
    }
    if (*show) {
      controller::LoadedExperiment loaded = controller::load_experiment(show_args.file, show_args.overrides);
      std::cout << loaded.config->resolved_yaml();
      return 0;
    }
    if (*plot) {
      auto files = controller::plot_run(plot_dir, plot_metrics,
                                        plot_out.empty() ? std::filesystem::path(plot_dir) / "plots" : std::filesystem::path(plot_out));
      for (const auto& f : files) std::cout << f.string() << '\n';
      return 0;
    }
    if (*resume) {
      const std::filesystem::path dir = resume_dir;
      if (!std::filesystem::exists(dir / "config.yaml"))
        throw ConfigError(dir.string() + ": not a run directory (no config.yaml)");
      controller::LoadedExperiment loaded = controller::load_experiment(dir / "config.yaml", {});
      run_options.resume_dir = dir;
      if (quiet) run_options.progress = controller::ProgressMode::Quiet;
      return controller::run_experiment(loaded, run_options);
    }
    if (*eval) {
      std::filesystem::path path = eval_checkpoint;
      if (std::filesystem::is_directory(path)) {
        auto newest = controller::latest_checkpoint(path);
        if (!newest) throw ConfigError(path.string() + ": no checkpoint in checkpoints/");
        path = *newest;
      }
      auto r = controller::evaluate_checkpoint(path, eval_episodes, eval_deterministic, eval_seed);
      if (eval_json) {
        nlohmann::ordered_json j = {{"checkpoint", path.string()}, {"episodes", r.episodes}, {"mean_return", r.mean_return},
                                    {"std_return", r.std_return}, {"mean_length", r.mean_length}};
        if (!std::isnan(r.win_rate)) j["win_rate"] = r.win_rate;
        std::cout << j.dump() << "\n";
      } else {
        std::cout << path.string() << ": " << r.episodes << " episodes, return " << r.mean_return << " +- "
                  << r.std_return << ", length " << r.mean_length;
        if (!std::isnan(r.win_rate)) std::cout << ", win rate " << r.win_rate;
        std::cout << "\n";
      }
      return 0;
    }
    if (*worker) {
      worker_info.heartbeat = std::chrono::milliseconds(heartbeat_ms);
      return runtime::run_worker(worker_info, actors::roles().at(worker_info.role));
    }
    if (*env_list_cmd) return controller::env_list(env_list_json);
    if (*trace_cmd) return controller::env_trace(trace);
    if (*bench_env_cmd) return controller::bench_env(bench_env_args);
    if (*bench_tok_cmd) return controller::bench_tokenize(bench_tok_args);
    if (*tok_cmd) return controller::tokenize(tok_args);
    if (*lm_init_cmd) return controller::lm_init(lm_init_args);
    if (*data_make_cmd) return controller::data_make(data_args);
    if (*gen_cmd) return controller::generate(gen_args);
    if (*bench_gen_cmd) return controller::bench_generate(bench_gen_args);
    if (*lm_score_cmd) return controller::lm_score(lm_score_args);
    if (*bench_train_cmd) return controller::bench_train(bench_train_args);
    if (*bench_stream_cmd) return controller::bench_stream(bench_stream_args);
    if (*version) {
      std::cout << "flotilla " << FLOTILLA_VERSION << "\n"
                << "cuda kernels: " << (FLOTILLA_WITH_CUDA ? "compiled" : "not compiled") << "\n";
      return 0;
    }
  } catch (const ConfigError& e) {
    std::cerr << "flotilla: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "flotilla: error: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
