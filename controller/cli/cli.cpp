#include "controller/cli/cli.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <dlfcn.h>
#include <unistd.h>
#include <malloc.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <set>
#include <functional>
#include <iostream>
#include <memory>

#include "controller/cli/commands.hpp"
#include "controller/run/experiment.hpp"
#include "controller/cli/plot.hpp"
#include "actors/roles.hpp"
#include "controller/run/checkpoint.hpp"
#include "controller/programs/rl.hpp"
#include "core/curve.hpp"
#include "core/log.hpp"
#include "core/process.hpp"

#ifndef FLOTILLA_VERSION
#define FLOTILLA_VERSION "unknown"
#endif

namespace flotilla::controller {

int set_openblas_threads(int n) {
  using GetThreads = int (*)();
  using SetThreads = void (*)(int);
  auto get = reinterpret_cast<GetThreads>(::dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  auto set = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!get || !set) return 0;
  const int before = get();
  set(n);
  return before;
}

}  // namespace flotilla::controller

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

// OpenBLAS picks its kernels from the CPU's model number, and a model newer than it knows falls back
// to its oldest SSE kernels: on a 2-core AVX-512 Xeon here it chose "Prescott" and ran sgemm at
// 27 GFLOP/s against 99 with its SkylakeX kernels (a GRPO step about 3 times slower). It reads its
// kernel choice once, when it loads, so on such a fallback the process starts itself again with
// OPENBLAS_CORETYPE naming the best kernels the CPU supports (its workers inherit it). A user's
// explicit OPENBLAS_CORETYPE is left alone.
void use_the_cpus_blas_kernels(char** argv) {
#if defined(__x86_64__)
  if (std::getenv("OPENBLAS_CORETYPE")) return;
  using CoreName = char* (*)();
  auto corename = reinterpret_cast<CoreName>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!corename || !corename()) return;  // not OpenBLAS
  static const std::set<std::string> fallbacks = {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom",
                                                  "sandybridge", "barcelona", "bobcat", "unknown"};
  std::string name = corename();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (!fallbacks.count(name)) return;
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!avx512 && !avx2) return;  // the fallback is right for this CPU
  ::setenv("OPENBLAS_CORETYPE", avx512 ? "SkylakeX" : "Haswell", 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: then run on with the slow kernels
  ::unsetenv("OPENBLAS_CORETYPE");
#else
  (void)argv;
#endif
}

// libtorch runs its own thread pool; OpenBLAS's pool on top of it oversubscribes the cores and runs
// several times slower. A user's explicit OPENBLAS_NUM_THREADS is left alone.
void pin_openblas_threads() {
  if (!std::getenv("OPENBLAS_NUM_THREADS")) controller::set_openblas_threads(1);
}

// glibc hands blocks of more than 128 KB to mmap and gives freed memory back to the kernel as soon
// as it can, so every training step faults its tensors' pages in afresh: measured on a GRPO step
// here, 570k page faults and 0.72 s a step against 73k and 0.43 s with these limits. Freed memory
// stays with the process for the next step. A user's MALLOC_MMAP_THRESHOLD_ or
// MALLOC_TRIM_THRESHOLD_ is left alone.
void keep_freed_memory() {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_")) return;
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);   // the largest glibc allows
  ::mallopt(M_TRIM_THRESHOLD, 256 << 20);  // keep up to 256 MB of freed heap
}

// Each command adds its options and the action that runs it once parsed.
using Action = std::function<int()>;
using Commands = controller::CliCommands;

controller::ProgressMode progress_mode(bool quiet, const std::string& progress) {
  if (quiet) return controller::ProgressMode::Quiet;
  if (progress == "bar") return controller::ProgressMode::Bar;
  if (progress == "lines") return controller::ProgressMode::Lines;
  return controller::ProgressMode::Auto;
}

// run and resume: an experiment's life cycle.
void add_run_commands(CLI::App& app, Commands& commands) {
  struct Args {
    ConfigArgs config;
    controller::RunOptions options;
    bool quiet = false;
    std::string progress = "auto", resume_dir;
  };
  auto a = std::make_shared<Args>();
  auto* run = app.add_subcommand("run", "run an experiment; results go to a new run directory");
  add_config_args(run, a->config);
  // run and resume take the same output options.
  auto add_output_options = [a](CLI::App* command) {
    command->add_flag("-q,--quiet", a->quiet, "no progress bar or progress lines; warnings and errors only");
    command->add_option("--progress", a->progress, "progress display: auto (bar on a terminal, lines otherwise), bar, lines")
        ->check(CLI::IsMember({"auto", "bar", "lines"}));
    command->add_option("--log-level", a->options.log_level, "trace, debug, info, warn or error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  };
  add_output_options(run);
  run->add_flag("--detach", a->options.detach, "launcher.kind slurm: submit the job and return (see `flotilla status`, `flotilla stop`)");
  run->add_option("--in-run-dir", a->options.in_run_dir, "run in this prepared run directory (a Slurm job's controller)")->group("");
  commands.emplace_back(run, [a] {
    a->options.progress = progress_mode(a->quiet, a->progress);
    controller::LoadedExperiment loaded = controller::load_experiment(a->config.file, a->config.overrides);
    return controller::run_experiment(loaded, a->options);
  });
  auto* resume = app.add_subcommand("resume", "continue a stopped run from its newest checkpoint, in the same directory");
  resume->add_option("run_dir", a->resume_dir, "run directory")->required()->check(CLI::ExistingDirectory);
  resume->add_option("overrides", a->options.resume_overrides,
                     "key=value changes from here on, kept in the run's config.yaml (e.g. train.steps=2000, or another "
                     "layout: 'workers=[{role: actor, parallel: {tp: 2}}]')");
  add_output_options(resume);
  resume->add_flag("--detach", a->options.detach, "launcher.kind slurm: submit the job and return");
  commands.emplace_back(resume, [a] {
    const std::filesystem::path dir = a->resume_dir;
    if (!std::filesystem::exists(dir / "config.yaml")) throw ConfigError(dir.string() + ": not a run directory (no config.yaml)");
    controller::LoadedExperiment loaded = controller::load_experiment(dir / "config.yaml", a->options.resume_overrides);
    a->options.resume_dir = dir;
    a->options.progress = progress_mode(a->quiet, a->progress);
    return controller::run_experiment(loaded, a->options);
  });
}

// checkpoint verify: every file of a run's checkpoints (or of one) against its manifest.
void add_checkpoint_commands(CLI::App& app, Commands& commands) {
  auto path = std::make_shared<std::string>();
  auto* checkpoint = app.add_subcommand("checkpoint", "checkpoints of a run");
  checkpoint->require_subcommand(1);
  auto* verify = checkpoint->add_subcommand("verify", "check every file of a run's checkpoints (or of one manifest) against the sizes "
                                                      "and SHA-256 sums in its manifest; exit 1 if any is damaged");
  verify->add_option("path", *path, "run directory, or a checkpoint's manifest (checkpoints/ckpt-N.json)")->required()->check(CLI::ExistingPath);
  commands.emplace_back(verify, [path] {
    std::vector<std::filesystem::path> manifests;
    if (std::filesystem::is_directory(*path)) {
      for (const auto& [iteration, m] : controller::checkpoints_of(*path)) manifests.push_back(m);
      if (manifests.empty()) throw ConfigError(*path + ": no checkpoint in checkpoints/");
    } else {
      manifests.push_back(*path);
    }
    int damaged = 0;
    for (const auto& m : manifests) {
      const auto problems = controller::verify_checkpoint(m);
      std::cout << m.string() << ": " << (problems.empty() ? "ok" : "DAMAGED") << "\n";
      for (const auto& p : problems) std::cout << "  " << p << "\n";
      damaged += !problems.empty();
    }
    return damaged ? 1 : 0;
  });
}

// status and stop: a run that is under way, here or as a Slurm job.
void add_control_commands(CLI::App& app, Commands& commands) {
  auto dir = std::make_shared<std::string>();
  auto now = std::make_shared<bool>(false);
  auto* status = app.add_subcommand("status", "where a run is: its Slurm job's state or its controller's process, and its last step");
  status->add_option("run_dir", *dir, "run directory")->required()->check(CLI::ExistingDirectory);
  commands.emplace_back(status, [dir] { return controller::run_status(*dir); });
  auto* stop = app.add_subcommand("stop", "ask a run to stop after its current step (a final checkpoint where it keeps them)");
  stop->add_option("run_dir", *dir, "run directory")->required()->check(CLI::ExistingDirectory);
  stop->add_flag("--now", *now, "stop at once (cancel the Slurm job, or kill the controller)");
  commands.emplace_back(stop, [dir, now] { return controller::stop_run(*dir, *now); });
}

// keys gen: a run's CURVE keys in a directory of the user's choosing.
void add_keys_command(CLI::App& app, Commands& commands) {
  struct Args {
    std::string dir;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  auto* keys = app.add_subcommand("keys", "CURVE keys for runs whose run directory is not private");
  keys->require_subcommand(1);
  auto* gen = keys->add_subcommand("gen", "write new server and client key pairs to DIR/curve.keys (mode 0600)");
  gen->add_option("dir", a->dir, "directory for curve.keys (created 0700)")->required();
  gen->add_flag("--force", a->force, "replace a key file already there");
  commands.emplace_back(gen, [a] {
    const std::filesystem::path file = std::filesystem::path(a->dir) / "curve.keys";
    if (std::filesystem::exists(file) && !a->force)
      throw ConfigError(file.string() + " exists; pass --force to replace it (runs using it must restart)");
    core::curve::write(file, core::curve::generate());
    const core::curve::RunKeys k = core::curve::read(file);
    std::cout << "wrote " << file.string() << " (mode 0600)\n"
              << "server public key: " << k.server.public_key << "\n"
              << "client public key: " << k.client.public_key << "\n"
              << "use it with: security.keys=" << a->dir << "\n";
    return 0;
  });
}

// validate, config show and plot: reading configs and runs.
void add_inspect_commands(CLI::App& app, Commands& commands) {
  struct Args {
    ConfigArgs validate, show;
    std::string plot_dir, plot_out;
    std::vector<std::string> plot_metrics;
  };
  auto a = std::make_shared<Args>();
  auto* validate = app.add_subcommand("validate", "check an experiment config without running it");
  add_config_args(validate, a->validate);
  commands.emplace_back(validate, [a] {
    controller::LoadedExperiment loaded = controller::load_experiment(a->validate.file, a->validate.overrides);
    std::cout << a->validate.file << ": valid (program '" << loaded.experiment.program << "', name '" << loaded.experiment.name << "')\n";
    return 0;
  });
  auto* config = app.add_subcommand("config", "inspect experiment configs");
  config->require_subcommand(1);
  auto* show = config->add_subcommand("show", "print the fully resolved config (defaults, overrides and every default value)");
  add_config_args(show, a->show);
  commands.emplace_back(show, [a] {
    std::cout << controller::load_experiment(a->show.file, a->show.overrides).config->resolved_yaml();
    return 0;
  });
  auto* plot = app.add_subcommand("plot", "draw PNG charts of a run's metrics (needs gnuplot)");
  plot->add_option("run_dir", a->plot_dir, "run directory")->required()->check(CLI::ExistingDirectory);
  plot->add_option("metrics", a->plot_metrics, "metric names, e.g. charts/episodic_return (default: all)");
  plot->add_option("--out", a->plot_out, "output directory (default: RUN_DIR/plots)");
  commands.emplace_back(plot, [a] {
    const std::filesystem::path out = a->plot_out.empty() ? std::filesystem::path(a->plot_dir) / "plots" : std::filesystem::path(a->plot_out);
    for (const auto& f : controller::plot_run(a->plot_dir, a->plot_metrics, out)) std::cout << f.string() << '\n';
    return 0;
  });
}

void add_eval_command(CLI::App& app, Commands& commands) {
  struct Args {
    std::string checkpoint;
    int episodes = 10;
    bool deterministic = false, json = false;
    uint64_t seed = 12345;
  };
  auto a = std::make_shared<Args>();
  auto* eval = app.add_subcommand("eval", "run a checkpoint's policy for some episodes and report the return");
  eval->add_option("checkpoint", a->checkpoint, "checkpoint (.json or .safetensors), or a run directory (newest)")
      ->required()
      ->check(CLI::ExistingPath);
  eval->add_option("--episodes", a->episodes, "episodes to run")->check(CLI::Range(1, 1000000));
  eval->add_flag("--deterministic", a->deterministic, "take the most likely action instead of sampling");
  eval->add_option("--seed", a->seed, "env and sampling seed");
  eval->add_flag("--json", a->json, "print one JSON object");
  commands.emplace_back(eval, [a] {
    std::filesystem::path path = a->checkpoint;
    if (std::filesystem::is_directory(path)) {
      auto newest = controller::latest_checkpoint(path);
      if (!newest) throw ConfigError(path.string() + ": no checkpoint in checkpoints/");
      path = *newest;
    }
    auto r = controller::evaluate_checkpoint(path, a->episodes, a->deterministic, a->seed);
    if (a->json) {
      nlohmann::ordered_json j = {{"checkpoint", path.string()}, {"episodes", r.episodes}, {"mean_return", r.mean_return},
                                  {"std_return", r.std_return}, {"mean_length", r.mean_length}};
      if (!std::isnan(r.win_rate)) j["win_rate"] = r.win_rate;
      std::cout << j.dump() << "\n";
    } else {
      std::cout << path.string() << ": " << r.episodes << " episodes, return " << r.mean_return << " +- " << r.std_return
                << ", length " << r.mean_length;
      if (!std::isnan(r.win_rate)) std::cout << ", win rate " << r.win_rate;
      std::cout << "\n";
    }
    return 0;
  });
}

void add_env_commands(CLI::App& app, Commands& commands) {
  auto* env_cmd = app.add_subcommand("env", "list and inspect environments");
  env_cmd->require_subcommand(1);
  auto json = std::make_shared<bool>(false);
  auto* env_list_cmd = env_cmd->add_subcommand("list", "environment ids with their spaces and episode limits");
  env_list_cmd->add_flag("--json", *json, "print JSON");
  commands.emplace_back(env_list_cmd, [json] { return controller::env_list(*json); });
  auto trace = std::make_shared<controller::TraceArgs>();
  auto* trace_cmd = env_cmd->add_subcommand(
      "trace", "step one env and print one JSON object per line (for checking against a reference)");
  trace_cmd->add_option("--env", trace->env, "environment id")->required();
  trace_cmd->add_option("--seed", trace->seed, "reset seed");
  trace_cmd->add_option("--init-state", trace->init_state,
                        "the state right after reset: a JSON array in Gymnasium's env.unwrapped.state order, or for "
                        "MPE {\"agents\":[{\"p_pos\":[x,y],\"p_vel\":[x,y]},...],\"landmarks\":[{\"p_pos\":[x,y]},...]}");
  trace_cmd->add_option("--param", trace->params, "env parameter key=value, e.g. N=4 (repeatable)");
  auto* actions_opt = trace_cmd->add_option(
      "--actions", trace->actions, "JSON array of actions, one per step (multi-agent: a list of per-agent actions)");
  trace_cmd->add_option("--actions-file", trace->actions_file, "file with a JSON array of actions (or one per line)")
      ->check(CLI::ExistingFile)
      ->excludes(actions_opt);

  commands.emplace_back(trace_cmd, [trace] { return controller::env_trace(*trace); });
}

void add_lm_commands(CLI::App& app, Commands& commands) {
  auto* lm = app.add_subcommand("lm", "language models in Hugging Face's layout");
  lm->require_subcommand(1);
  auto init_args = std::make_shared<controller::LmInitArgs>();
  auto* lm_init_cmd = lm->add_subcommand("init", "write a randomly initialized model (config.json, model.safetensors, tokenizer.json)");
  lm_init_cmd->add_option("--arch", init_args->arch, "qwen2, qwen3 or llama")->check(CLI::IsMember({"qwen2", "qwen3", "llama"}));
  lm_init_cmd->add_option("--preset", init_args->preset, "tiny, small or base (133M parameters, for benchmarks)")->check(CLI::IsMember({"tiny", "small", "base"}));
  lm_init_cmd->add_option("--vocab", init_args->vocab, "vocabulary size (at least 259: bytes and 3 specials)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 22));
  lm_init_cmd->add_option("--out", init_args->out, "the model directory to write")->required();
  lm_init_cmd->add_option("--dtype", init_args->dtype, "float32, bfloat16 or float16")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  lm_init_cmd->add_option("--seed", init_args->seed, "seed of the random weights");
  for (auto [flag, size, what] : {std::tuple{"--hidden", &init_args->hidden, "hidden size"},
                                  {"--layers", &init_args->layers, "decoder layers"},
                                  {"--heads", &init_args->heads, "query heads"},
                                  {"--kv-heads", &init_args->kv_heads, "key-value heads (a divisor of --heads)"},
                                  {"--head-dim", &init_args->head_dim, "size of one head"},
                                  {"--intermediate", &init_args->intermediate, "MLP intermediate size"}})
    lm_init_cmd->add_option(flag, *size, std::string(what) + " (default: the preset's)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  lm_init_cmd->add_option("--head", init_args->head, "lm (next-token logits), value (critic) or reward")
      ->check(CLI::IsMember({"lm", "value", "reward"}));
  auto score_args = std::make_shared<controller::LmScoreArgs>();
  auto* lm_score_cmd = lm->add_subcommand("score", "log-probability of each token given the ones before it, per line of ids");
  lm_score_cmd->add_option("--model", score_args->model, "model directory")->required()->check(CLI::ExistingDirectory);
  lm_score_cmd->add_option("--tokens-file", score_args->tokens_file, "one JSON array of token ids per line")
      ->required()
      ->check(CLI::ExistingFile);

  auto gen_args = std::make_shared<controller::GenerateArgs>();
  auto* gen_cmd = app.add_subcommand("generate", "sample continuations of a prompt with the generation engine (JSON lines)");
  gen_cmd->add_option("--model", gen_args->model, "model directory (config.json, model.safetensors, tokenizer.json)")
      ->required()
      ->check(CLI::ExistingDirectory);
  gen_cmd->add_option("--prompt", gen_args->prompt, "prompt text")->required();
  gen_cmd->add_option("--n", gen_args->n, "samples of the prompt")->check(CLI::Range(1, 4096));
  gen_cmd->add_option("--max-tokens", gen_args->max_tokens, "new tokens at most")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  gen_cmd->add_option("--temperature", gen_args->temperature, "0: greedy")->check(CLI::Range(0.0, 100.0));
  gen_cmd->add_option("--top-p", gen_args->top_p, "nucleus sampling mass")->check(CLI::Range(1e-9, 1.0));
  gen_cmd->add_option("--top-k", gen_args->top_k, "0: no limit")->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  gen_cmd->add_option("--seed", gen_args->seed, "seed (sample k uses seed + k)");

  commands.emplace_back(lm_init_cmd, [init_args] { return controller::lm_init(*init_args); });
  commands.emplace_back(lm_score_cmd, [score_args] { return controller::lm_score(*score_args); });
  commands.emplace_back(gen_cmd, [gen_args] { return controller::generate(*gen_args); });
}

void add_data_commands(CLI::App& app, Commands& commands) {
  auto* data = app.add_subcommand("data", "datasets for language-model jobs");
  data->require_subcommand(1);
  auto data_args = std::make_shared<controller::DataMakeArgs>();
  auto* data_make_cmd = data->add_subcommand("make", "write a synthetic task with verifiable answers as JSONL {prompt, answer}");
  data_make_cmd->add_option("task", data_args->task, "addition, sort or reverse")
      ->required()
      ->check(CLI::IsMember({"addition", "sort", "reverse"}));
  data_make_cmd->add_option("--n", data_args->n, "examples")->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  data_make_cmd->add_option("--seed", data_args->seed, "seed (the same examples on every machine)");
  data_make_cmd->add_option("--out", data_args->out, "output file (default: standard output)");
  data_make_cmd->add_option("--max-digits", data_args->max_digits, "addition: operands of 1 to this many digits")
      ->check(CLI::Range(1, 18));
  data_make_cmd->add_option("--min-digits", data_args->min_digits,
                            "addition: the longer operand has this to --max-digits digits, most few and some many (a long tail)")
      ->check(CLI::Range(1, 18));
  data_make_cmd->add_flag("--show-work", data_args->show_work,
                          "addition: SFT responses work the sum out column by column, ending with it (responses grow with the operands)");
  data_make_cmd->add_option("--min-length", data_args->min_length,
                            "sort, reverse: draw each length from this to --length, most short and a few long (a long tail)")
      ->check(CLI::Range(1, 1000));
  data_make_cmd->add_option("--length", data_args->length, "sort: numbers per list; reverse: letters per string")
      ->check(CLI::Range(1, 1000));
  data_make_cmd->add_option("--kind", data_args->kind, "verifiable {prompt, answer}, sft {prompt, response} or preference {prompt, chosen, rejected}")
      ->check(CLI::IsMember({"verifiable", "sft", "preference"}));

  auto tok_args = std::make_shared<controller::TokenizeArgs>();
  auto* tok_cmd = app.add_subcommand("tokenize", "encode text to token ids (one JSON array per input line), or decode");
  tok_cmd->add_option("--tokenizer", tok_args->tokenizer, "tokenizer.json, model directory, encoder.json (GPT-2) or bytes")
      ->required();
  auto* tok_text = tok_cmd->add_option("--text", tok_args->text, "text to encode (each line separately)");
  auto* tok_file = tok_cmd->add_option("--file", tok_args->file, "file to encode, line by line")->check(CLI::ExistingFile);
  tok_cmd->add_flag("--stdin", tok_args->from_stdin, "read the input from standard input")->excludes(tok_text)->excludes(tok_file);
  tok_text->excludes(tok_file);
  tok_cmd->add_flag("--decode", tok_args->decode, "input lines are JSON arrays of ids; print each decoded text as a JSON string");

  commands.emplace_back(data_make_cmd, [data_args] { return controller::data_make(*data_args); });
  commands.emplace_back(tok_cmd, [tok_args] { return controller::tokenize(*tok_args); });
}

// The worker processes a controller starts (not listed in --help).
void add_worker_command(CLI::App& app, Commands& commands) {
  auto info = std::make_shared<runtime::WorkerInfo>();
  auto heartbeat_ms = std::make_shared<int>(500);
  auto* worker = app.add_subcommand("worker", "a worker process (started by the controller, never by hand)");
  worker->group("");  // not listed in --help
  worker->add_option("--role", info->role)->required();
  worker->add_option("--rank", info->rank)->required();
  worker->add_option("--world-size", info->world_size);
  worker->add_option("--experiment", info->experiment)->required();
  worker->add_option("--trial", info->trial)->required();
  worker->add_option("--name-dir", info->name_dir)->required();
  auto interface = std::make_shared<std::string>();
  worker->add_option("--host", info->host, "the address to bind, or 'auto': this node's (on --interface)");
  worker->add_option("--interface", *interface);
  worker->add_option("--heartbeat-ms", *heartbeat_ms);
  worker->add_option("--controller-pid", info->controller_pid);
  worker->add_option("--heartbeat-to", info->heartbeat_to)->required();
  worker->add_option("--metrics-to", info->metrics_to)->required();
  worker->add_option("--bind-rpc", info->rpc_endpoint, "the RPC address to bind (a replacement's: its predecessor's)");
  auto keys = std::make_shared<std::string>();
  worker->add_option("--keys", *keys, "the run's CURVE key file");

  commands.emplace_back(worker, [info, heartbeat_ms, interface, keys] {
    info->heartbeat = std::chrono::milliseconds(*heartbeat_ms);
    if (!keys->empty()) core::curve::use(core::curve::read(*keys), *keys);
    if (info->host == "auto") info->host = core::node_address(*interface);
    return runtime::run_worker(*info, actors::roles().at(info->role));
  });
}

}  // namespace

int flotilla::controller::cli_main(int argc, char** argv) {
  use_the_cpus_blas_kernels(argv);
  pin_openblas_threads();
  keep_freed_memory();
  CLI::App app{"Flotilla: distributed reinforcement learning and RLHF.\n"
               "Run `flotilla COMMAND --help` for the options of a command."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every command");
  Commands commands;
  add_run_commands(app, commands);
  add_control_commands(app, commands);
  add_keys_command(app, commands);
  add_checkpoint_commands(app, commands);
  add_eval_command(app, commands);
  add_inspect_commands(app, commands);
  add_env_commands(app, commands);
  controller::add_bench_commands(app, commands);
  add_lm_commands(app, commands);
  add_data_commands(app, commands);
  add_worker_command(app, commands);
  auto* version = app.add_subcommand("version", "print the version and build facts");
  commands.emplace_back(version, [] {
    std::cout << "flotilla " << FLOTILLA_VERSION << "\n"
              << "cuda kernels: " << (FLOTILLA_WITH_CUDA ? "compiled" : "not compiled") << "\n";
    return 0;
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  core::init_logging();
  try {
    for (const auto& [command, action] : commands)
      if (command->parsed()) return action();
  } catch (const ConfigError& e) {
    std::cerr << "flotilla: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "flotilla: error: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
