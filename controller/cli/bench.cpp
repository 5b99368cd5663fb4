#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <algorithm>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <unistd.h>
#include <sodium.h>
#include <zmq.hpp>

#include "controller/cli/commands.hpp"
#include "controller/run/experiment.hpp"
#include "core/curve.hpp"
#include "core/fs.hpp"
#include "core/process.hpp"
#include "core/stream.hpp"
#include "envs/multi_agent.hpp"
#include "envs/registry.hpp"

namespace flotilla::controller {
namespace {

// `count` batches of random valid actions, drawn before the clock starts.
std::vector<at::Tensor> random_actions(const envs::Space& space, int64_t num_envs, int count) {
  std::vector<at::Tensor> out;
  for (int i = 0; i < count; ++i) {
    switch (space.kind) {
      case envs::Space::Kind::Discrete: out.push_back(at::randint(0, space.n, {num_envs}, at::kLong)); break;
      case envs::Space::Kind::MultiDiscrete: {
        std::vector<at::Tensor> cols;
        for (int64_t n : space.nvec) cols.push_back(at::randint(0, n, {num_envs, 1}, at::kLong));
        out.push_back(at::cat(cols, 1).contiguous());
        break;
      }
      case envs::Space::Kind::Box: {
        auto low = at::tensor(space.low, at::kDouble).to(at::kFloat), high = at::tensor(space.high, at::kDouble).to(at::kFloat);
        out.push_back((at::rand({num_envs, space.numel()}) * (high - low) + low).contiguous());
        break;
      }
    }
  }
  return out;
}

// Uniform draws among each agent's legal actions ([N, A, K] mask), with a small fast generator so
// the drawing stays a small part of the timed loop.
struct LegalSampler {
  uint64_t state = 0x9e3779b97f4a7c15ULL;
  uint64_t next() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  }
  void draw(const at::Tensor& avail, at::Tensor& out) {
    const at::Tensor m = avail.contiguous();
    const bool* mask = m.data_ptr<bool>();
    int64_t* a = out.data_ptr<int64_t>();
    const int64_t rows = out.numel(), K = m.size(2);
    int64_t legal[256];
    for (int64_t i = 0; i < rows; ++i) {
      int64_t n = 0;
      for (int64_t k = 0; k < K; ++k)
        if (mask[i * K + k]) legal[n++] = k;
      a[i] = legal[static_cast<int64_t>((next() >> 32) * static_cast<uint64_t>(n) >> 32)];
    }
  }
};

// `count` batches of random actions, each agent's inside its own space: [N, A] or [N, A, k].
std::vector<at::Tensor> random_agent_actions(const envs::MultiAgentSpec& spec, int64_t num_envs, int count) {
  std::vector<at::Tensor> out;
  for (int i = 0; i < count; ++i) {
    std::vector<at::Tensor> cols;
    for (const auto& agent : spec.agents) {
      at::Tensor a = random_actions(agent.action, num_envs, 1)[0];
      if (!spec.discrete()) a = at::constant_pad_nd(a, {0, spec.action_dim() - a.size(1)});
      cols.push_back(a.unsqueeze(1));
    }
    out.push_back(at::cat(cols, 1).contiguous());
  }
  return out;
}

}  // namespace

int bench_env(const EnvBenchArgs& args) {
  envs::EnvOptions options;
  options.num_envs = args.num_envs;
  options.threads = args.threads;
  options.backend = args.backend;
  // Multi-agent envs are timed natively ([N, A] actions); agent steps = env steps x agents.
  std::function<void(const at::Tensor&)> step;
  std::vector<at::Tensor> actions;
  int agents = 1;
  std::unique_ptr<envs::VecEnv> env;
  std::unique_ptr<envs::MultiAgentVecEnv> ma_env;
  // Turn-based envs reject moves outside the mask: each step draws uniformly among the legal ones.
  at::Tensor legal_actions;
  LegalSampler sampler;
  double sampling_s = 0.0;
  if (envs::is_multi_agent(args.env)) {
    ma_env = envs::make_multi_agent_env(args.env, options);
    agents = ma_env->num_agents();
    ma_env->reset(1);
    if (ma_env->spec().strict_masks) {
      legal_actions = at::zeros({args.num_envs, agents}, at::kLong);
      actions = {legal_actions};
      step = [&](const at::Tensor& a) {
        const auto t0 = std::chrono::steady_clock::now();
        sampler.draw(ma_env->avail_actions(), legal_actions);
        sampling_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ma_env->step(a);
      };
    } else {
      actions = random_agent_actions(ma_env->spec(), args.num_envs, 16);
      step = [&](const at::Tensor& a) { ma_env->step(a); };
    }
  } else {
    env = envs::make_env(args.env, options);
    actions = random_actions(env->spec().action_space, args.num_envs, 16);
    env->reset(1);
    step = [&](const at::Tensor& a) { env->step(a); };
  }
  using clock = std::chrono::steady_clock;
  auto run = [&](int64_t steps) {
    const auto t0 = clock::now();
    for (int64_t s = 0; s < steps; ++s) step(actions[s % actions.size()]);
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  // Warm up (caches, thread wake-up), then size the measured run to about a second.
  const double warm = run(20) / 20;
  const int64_t steps = args.steps > 0 ? args.steps : std::clamp<int64_t>(static_cast<int64_t>(1.0 / std::max(warm, 1e-9)), 50, 2'000'000);
  sampling_s = 0.0;
  const double seconds = run(steps);
  const double sps = static_cast<double>(steps) * args.num_envs / seconds;
  const bool legal = legal_actions.defined();
  if (args.json) {
    nlohmann::ordered_json j = {{"env", args.env},         {"num_envs", args.num_envs}, {"threads", args.threads},
                                {"backend", args.backend}, {"batch_steps", steps},     {"seconds", seconds},
                                {"steps_per_second", sps}};
    if (ma_env) {
      j["agents"] = agents;
      j["agent_steps_per_second"] = sps * agents;
    }
    if (legal) {
      j["actions"] = "random legal";
      j["sampling_seconds"] = sampling_s;
      j["steps_per_second_without_sampling"] = static_cast<double>(steps) * args.num_envs / (seconds - sampling_s);
    }
    std::cout << j.dump() << "\n";
  } else {
    std::cout << "env: " << args.env << "  num_envs: " << args.num_envs << "  threads: " << args.threads
              << "  backend: " << args.backend << "\n"
              << "env steps: " << steps * args.num_envs << " in " << seconds << " s (" << steps << " batch steps)\n"
              << "steps_per_second: " << static_cast<int64_t>(sps) << "\n";
    if (ma_env)
      std::cout << "agents: " << agents << "  agent_steps_per_second: " << static_cast<int64_t>(sps * agents) << "\n";
    if (legal)
      std::cout << "actions: random legal, drawn each step in " << sampling_s << " s of the total ("
                << static_cast<int64_t>(static_cast<double>(steps) * args.num_envs / (seconds - sampling_s))
                << " steps/s without the drawing)\n";
  }
  return 0;
}

namespace {
double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}
}  // namespace

int bench_train(const TrainBenchArgs& args) {
  char stamp[32];
  std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  const std::filesystem::path root = std::filesystem::path(args.out_dir) / stamp;
  std::vector<double> steps, seconds;
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  int solved = 0;
  for (int k = 0; k < args.seeds; ++k) {
    const int seed = args.first_seed + k;
    std::vector<std::string> overrides = args.overrides;
    overrides.push_back("seed=" + std::to_string(seed));
    overrides.push_back("run.dir=" + (root / ("seed-" + std::to_string(seed))).string());
    LoadedExperiment loaded = load_experiment(args.config, overrides);
    RunOptions options;
    options.progress = ProgressMode::Quiet;
    const int code = run_experiment(loaded, options);
    auto summary = nlohmann::json::parse(core::read_file(root / ("seed-" + std::to_string(seed)) / "summary.json"));
    const bool ok = summary.value("exit_reason", "") == "stop_condition";
    nlohmann::ordered_json row = {{"seed", seed}, {"exit_reason", summary.value("exit_reason", "")}};
    if (ok) {
      ++solved;
      steps.push_back(summary["solved_at_step"].get<double>());
      seconds.push_back(summary["solved_at_time_s"].get<double>());
      row["solved_at_step"] = steps.back();
      row["solved_at_time_s"] = seconds.back();
    } else {
      row["last_step"] = summary.value("last_step", 0);
      row["recent_mean_return"] = summary.value("recent_mean_return", NAN);
    }
    rows.push_back(row);
    if (!args.json) {
      std::cout << "seed " << seed << ": ";
      if (ok) std::cout << "solved at step " << static_cast<int64_t>(steps.back()) << " after " << std::fixed
                        << std::setprecision(2) << seconds.back() << " s\n";
      else std::cout << summary.value("exit_reason", "?") << " without meeting the stop condition (exit code " << code << ")\n";
    }
  }
  if (args.json) {
    nlohmann::ordered_json out = {{"config", args.config}, {"seeds", args.seeds}, {"solved", solved},
                                  {"median_steps", median(steps)}, {"median_seconds", median(seconds)}, {"runs", rows},
                                  {"run_dirs", root.string()}};
    std::cout << out.dump() << "\n";
  } else {
    std::cout << "solved: " << solved << "/" << args.seeds << "  runs in " << root.string() << "\n"
              << "median_steps_to_solve: " << static_cast<int64_t>(median(steps)) << "\n"
              << "median_seconds_to_solve: " << std::fixed << std::setprecision(2) << median(seconds) << "\n";
  }
  return solved == args.seeds ? 0 : 1;
}

namespace {

constexpr size_t kBareHeaderBytes = 64;  // about the size of a sample-stream envelope

// The sending side, in the child process.
int stream_sender(const StreamBenchArgs& a) {
  if (a.mode == "curve") core::curve::use(core::curve::read(a.keys), a.keys);
  zmq::context_t context(1);
  if (a.mode != "zmq") {
    auto sender = core::zmq_sample_sender(context, a.send_to, "bench/0");
    core::Batch batch;
    batch.set("data", at::zeros({a.bytes}, at::kByte));
    for (int64_t i = 0; i < a.count; ++i) sender->send(batch, i);
    return 0;
  }
  zmq::socket_t push(context, zmq::socket_type::push);
  push.set(zmq::sockopt::sndhwm, 64);
  push.set(zmq::sockopt::linger, 2000);
  push.connect(a.send_to);
  static std::vector<uint8_t> header(kBareHeaderBytes), data;
  data.assign(static_cast<size_t>(a.bytes), 0);
  for (int64_t i = 0; i < a.count; ++i) {
    zmq::message_t h(header.data(), header.size());
    push.send(h, zmq::send_flags::sndmore);
    zmq::message_t d(data.data(), data.size(), [](void*, void*) {}, nullptr);  // no copy, as Flotilla's frames
    push.send(d, zmq::send_flags::none);
  }
  return 0;
}

// The sending side of `bench stream`: this executable again, in its own process.
std::unique_ptr<core::Process> spawn_sender(const StreamBenchArgs& a, const std::string& endpoint, const std::string& mode) {
  return std::make_unique<core::Process>(core::ProcessSpec{
      std::filesystem::read_symlink("/proc/self/exe"),
      {"bench", "stream", "--bytes", std::to_string(a.bytes), "--count", std::to_string(a.count), "--send-to", endpoint, "--mode", mode,
       "--keys", a.keys},
      "bench stream: the sending process"});
}

struct StreamFigures {
  double seconds = 0, mb_per_s = 0, messages_per_s = 0;
};

StreamFigures measure(const StreamBenchArgs& a, const std::string& mode) {
  zmq::context_t context(1);
  const std::string bind = a.transport == "ipc" ? "ipc:///tmp/flotilla-bench-" + std::to_string(::getpid()) : "tcp://127.0.0.1:*";
  using clock = std::chrono::steady_clock;
  clock::time_point first, last;
  int64_t got = 0;
  std::unique_ptr<core::Process> child;
  auto finish_child = [&] {
    const auto status = child->wait_for(std::chrono::seconds(60));
    if (!status) throw TimeoutError("bench stream: the sending process did not end within 60 s of its last message");
    if (status->code != 0 || status->signal != 0) throw Error("bench stream: the sending process " + status->str());
  };
  const auto timeout = std::chrono::seconds(60);
  if (mode != "zmq") {
    // CURVE: this process's sockets use the keys while it measures, and the sender loads them.
    struct Keys {
      explicit Keys(const StreamBenchArgs& a, bool on) {
        if (on) core::curve::use(core::curve::read(a.keys), a.keys);
      }
      ~Keys() { core::curve::use(std::nullopt); }
    } keys(a, mode == "curve");
    auto receiver = core::zmq_sample_receiver(context, bind);
    child = spawn_sender(a, receiver->endpoint(), mode);
    while (got < a.count) {
      auto s = receiver->receive(timeout);
      if (!s) throw TimeoutError("bench stream: no message from the sender for 60 s");
      if (s->batch["data"].numel() != a.bytes) throw Error("bench stream: a message arrived with the wrong size");
      last = clock::now();
      if (got++ == 0) first = last;
    }
  } else {
    zmq::socket_t pull(context, zmq::socket_type::pull);
    pull.set(zmq::sockopt::rcvhwm, 64);
    pull.set(zmq::sockopt::rcvtimeo, 60000);
    pull.bind(bind);
    child = spawn_sender(a, pull.get(zmq::sockopt::last_endpoint), mode);
    while (got < a.count) {
      zmq::message_t h, d;
      if (!pull.recv(h) || !pull.recv(d)) throw TimeoutError("bench stream: no message from the sender for 60 s");
      if (static_cast<int64_t>(d.size()) != a.bytes) throw Error("bench stream: a message arrived with the wrong size");
      last = clock::now();
      if (got++ == 0) first = last;
    }
  }
  finish_child();
  StreamFigures f;
  f.seconds = std::chrono::duration<double>(last - first).count();
  const double messages = static_cast<double>(a.count - 1);  // timed from the first arrival
  f.messages_per_s = messages / std::max(f.seconds, 1e-9);
  f.mb_per_s = f.messages_per_s * static_cast<double>(a.bytes) / 1e6;
  return f;
}

// CURVE's cipher alone, as libzmq calls it (libsodium's XSalsa20-Poly1305 box with a precomputed
// key), on one core over messages of `bytes`: a bound on CURVE's throughput per core and side.
double cipher_mb_per_s(int64_t bytes) {
  if (sodium_init() < 0) throw Error("bench stream: libsodium did not initialize");
  std::vector<unsigned char> key(crypto_box_BEFORENMBYTES), nonce(crypto_box_NONCEBYTES);
  randombytes_buf(key.data(), key.size());
  randombytes_buf(nonce.data(), nonce.size());
  std::vector<unsigned char> plain(static_cast<size_t>(bytes) + crypto_box_ZEROBYTES, 0), boxed(plain.size());
  int64_t done = 0;
  const auto start = std::chrono::steady_clock::now();
  double seconds = 0;
  while (seconds < 0.5 || done < 3) {
    if (crypto_box_afternm(boxed.data(), plain.data(), plain.size(), nonce.data(), key.data()) != 0)
      throw Error("bench stream: crypto_box_afternm failed");
    ++done;
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return static_cast<double>(done * bytes) / seconds / 1e6;
}

}  // namespace

int bench_stream(const StreamBenchArgs& a) {
  if (!a.send_to.empty()) return stream_sender(a);
  if (a.count < 2) throw ConfigError("bench stream: --count must be at least 2");
  // Alternate and keep each side's best of two, so a noisy moment hurts neither more.
  // The CURVE run's keys, in a directory of this process's own.
  char made[] = "/tmp/flotilla-bench-keys-XXXXXX";  // 0700
  if (!::mkdtemp(made)) throw IoError(std::string("bench stream: cannot make a key directory in /tmp: ") + std::strerror(errno));
  struct Remove {
    std::filesystem::path dir;
    ~Remove() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } remove{made};
  StreamBenchArgs args = a;
  args.keys = (remove.dir / "curve.keys").string();
  core::curve::write(args.keys, core::curve::generate());
  StreamFigures flot, bare, curve;
  for (int round = 0; round < 2; ++round) {
    StreamFigures b = measure(args, "zmq"), f = measure(args, "flotilla"), c = measure(args, "curve");
    if (b.mb_per_s > bare.mb_per_s) bare = b;
    if (f.mb_per_s > flot.mb_per_s) flot = f;
    if (c.mb_per_s > curve.mb_per_s) curve = c;
  }
  const double ratio = flot.mb_per_s / bare.mb_per_s;
  const double curve_cost = flot.mb_per_s / curve.mb_per_s;
  const double cipher = cipher_mb_per_s(a.bytes);
  if (a.json) {
    nlohmann::ordered_json j = {{"bytes", a.bytes},
                                {"count", a.count},
                                {"transport", a.transport},
                                {"flotilla_mb_per_s", flot.mb_per_s},
                                {"flotilla_messages_per_s", flot.messages_per_s},
                                {"zmq_mb_per_s", bare.mb_per_s},
                                {"zmq_messages_per_s", bare.messages_per_s},
                                {"ratio", ratio},
                                {"curve_mb_per_s", curve.mb_per_s},
                                {"curve_messages_per_s", curve.messages_per_s},
                                {"curve_cost", curve_cost},
                                {"cipher_mb_per_s", cipher}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << std::fixed << std::setprecision(1) << "messages: " << a.count << " x " << a.bytes << " bytes over "
              << a.transport << "\n"
              << "flotilla sample stream: " << flot.mb_per_s << " MB/s, " << flot.messages_per_s << " messages/s\n"
              << "bare zeromq push/pull:  " << bare.mb_per_s << " MB/s, " << bare.messages_per_s << " messages/s\n"
              << "sample stream, CURVE:   " << curve.mb_per_s << " MB/s, " << curve.messages_per_s << " messages/s\n"
              << std::setprecision(3) << "ratio (flotilla / bare): " << ratio << "\n"
              << "CURVE cost (plain / CURVE): " << curve_cost << "\n"
              << std::setprecision(1) << "CURVE's cipher alone (XSalsa20-Poly1305), one core: " << cipher << " MB/s\n";
  }
  return 0;
}

// `flotilla bench ...`: each benchmark's options and the function that runs it.
void add_bench_commands(CLI::App& app, CliCommands& commands) {
  auto* bench = app.add_subcommand("bench", "benchmarks that print figures");
  bench->require_subcommand(1);
  auto env_args = std::make_shared<EnvBenchArgs>();
  auto* bench_env_cmd = bench->add_subcommand("env", "env steps per second (random valid actions, auto-reset on)");
  bench_env_cmd->add_option("--env", env_args->env, "environment id")->required();
  bench_env_cmd->add_option("--num-envs", env_args->num_envs, "envs stepped together")->check(CLI::Range(1, 1 << 26));
  bench_env_cmd->add_option("--threads", env_args->threads, "CPU threads")->check(CLI::Range(1, 256));
  bench_env_cmd->add_option("--steps", env_args->steps, "batch steps to time (default: about one second)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  bench_env_cmd->add_option("--backend", env_args->backend, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench_env_cmd->add_flag("--json", env_args->json, "print one JSON object");

  auto train_args = std::make_shared<TrainBenchArgs>();
  auto* bench_train_cmd =
      bench->add_subcommand("train", "run a config once per seed; steps and wall seconds to its stop condition");
  bench_train_cmd->add_option("config", train_args->config, "experiment YAML file")->required()->check(CLI::ExistingFile);
  bench_train_cmd->add_option("overrides", train_args->overrides, "key.path=value overrides");
  bench_train_cmd->add_option("--seeds", train_args->seeds, "how many seeds")->check(CLI::Range(1, 1000));
  bench_train_cmd->add_option("--first-seed", train_args->first_seed, "the first seed (then +1, +2, ...)");
  bench_train_cmd->add_option("--out", train_args->out_dir, "where the runs go (default runs/bench)");
  bench_train_cmd->add_flag("--json", train_args->json, "print one JSON object");

  auto rlhf_args = std::make_shared<RlhfBenchArgs>();
  auto* bench_rlhf_cmd = bench->add_subcommand(
      "rlhf", "an RLHF config once per variant (e.g. synchronous and asynchronous): held-out accuracy against wall time");
  bench_rlhf_cmd->add_option("config", rlhf_args->config, "experiment YAML file (program: rlhf)")->required()->check(CLI::ExistingFile);
  bench_rlhf_cmd->add_option("overrides", rlhf_args->overrides, "key.path=value overrides for every variant");
  bench_rlhf_cmd->add_option("--variant", rlhf_args->variants,
                             "LABEL:key=value,... one run each, in order (e.g. s1:placement=split,async.max_staleness=1)")
      ->required();
  bench_rlhf_cmd->add_option("--baseline", rlhf_args->baseline, "the variant the others are compared with (default: the first)");
  bench_rlhf_cmd->add_option("--out", rlhf_args->out_dir, "where the runs go (default runs/bench)");
  bench_rlhf_cmd->add_flag("--json", rlhf_args->json, "print one JSON object");

  auto tok_args = std::make_shared<TokenizeBenchArgs>();
  auto* bench_tok_cmd = bench->add_subcommand("tokenize", "tokenizer encoding throughput (MB per second) over a file");
  bench_tok_cmd->add_option("--tokenizer", tok_args->tokenizer, "tokenizer.json, model directory, encoder.json or bytes")
      ->required();
  bench_tok_cmd->add_option("--file", tok_args->file, "UTF-8 text, encoded line by line")->required()->check(CLI::ExistingFile);
  bench_tok_cmd->add_option("--reference", tok_args->reference,
                            "also time the npm reference encoder (qwen3 or gpt2) on the same file")
      ->check(CLI::IsMember({"qwen3", "gpt2"}));
  bench_tok_cmd->add_flag("--json", tok_args->json, "print one JSON object");

  auto gen_args = std::make_shared<GenerateBenchArgs>();
  auto* bench_gen_cmd = bench->add_subcommand(
      "generate", "the generation engine's prefill and decode rates against this machine's sgemm and memory bandwidth; "
                  "--group: with shared prefixes; --reference: next to an eager libtorch loop");
  bench_gen_cmd->add_option("--model", gen_args->model, "model directory (e.g. `flotilla lm init --preset base --vocab 32000`)")
      ->required()
      ->check(CLI::ExistingDirectory);
  bench_gen_cmd->add_option("--batch", gen_args->batches, "sequences decoded together, one run each (default 1 8 32 128)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->delimiter(',');
  bench_gen_cmd->add_option("--prompt-len", gen_args->prompt_len, "prompt tokens (default 64)")->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  bench_gen_cmd->add_option("--gen-len", gen_args->gen_len, "generated tokens (default 32)")->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  bench_gen_cmd->add_option("--group", gen_args->group, "samples per prompt: also run them sharing the prompt's prefill (default 1)")
      ->check(CLI::Range(1, 4096));
  bench_gen_cmd->add_option("--threads", gen_args->threads, "libtorch threads for the engine and the eager loop (default: libtorch's)")
      ->check(CLI::Range(1, 1024));
  bench_gen_cmd->add_option("--prefill-chunk", gen_args->prefill_chunk, "prompt tokens prefilled per engine step (default 256)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench_gen_cmd->add_flag("--reference", gen_args->reference, "also run an eager libtorch loop with a KV cache, for a ratio");
  bench_gen_cmd->add_option("--weights", gen_args->weights, "the engine's weights: float32 or bfloat16 (then also its log-prob cost)")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  bench_gen_cmd->add_flag("--stream", gen_args->stream,
                          "also a stream of 4x the largest batch with varied lengths: chunked prefill against whole prompts");
  bench_gen_cmd->add_option("--seed", gen_args->seed, "seed of the random prompts");
  bench_gen_cmd->add_flag("--json", gen_args->json, "print one JSON object");

  auto upd_args = std::make_shared<UpdateBenchArgs>();
  auto* bench_upd_cmd = bench->add_subcommand(
      "update", "a policy update on GRPO groups over whole sequences and with shared prompts (each prompt's positions once)");
  bench_upd_cmd->add_option("--model", upd_args->model, "model directory with a language-model head")->required()->check(CLI::ExistingDirectory);
  bench_upd_cmd->add_option("--prompts", upd_args->prompts, "distinct prompts (default 32)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench_upd_cmd->add_option("--group", upd_args->group, "samples per prompt (default 8)")->check(CLI::Range(1, 4096));
  bench_upd_cmd->add_option("--prompt-len", upd_args->prompt_len, "longest prompt; prompts run from half of it (default 48)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench_upd_cmd->add_option("--gen-len", upd_args->gen_len, "longest response (default 8)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench_upd_cmd->add_option("--micro-batch", upd_args->micro_batch, "rows per forward pass (default 64)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench_upd_cmd->add_option("--threads", upd_args->threads, "libtorch threads (default 1)")->check(CLI::Range(1, 1024));
  bench_upd_cmd->add_option("--repeats", upd_args->repeats, "timed updates of each kind (default 5)")->check(CLI::Range(1, 10000));
  bench_upd_cmd->add_option("--seed", upd_args->seed, "seed of the random batch");
  bench_upd_cmd->add_flag("--json", upd_args->json, "print one JSON object");

  auto stream_args = std::make_shared<StreamBenchArgs>();
  auto* bench_stream_cmd = bench->add_subcommand(
      "stream", "throughput of Flotilla's sample stream between two processes, next to bare ZeroMQ");
  bench_stream_cmd->add_option("--bytes", stream_args->bytes, "bytes per message")->check(CLI::Range(int64_t{1}, int64_t{1} << 32));
  bench_stream_cmd->add_option("--count", stream_args->count, "messages")->check(CLI::Range(int64_t{2}, int64_t{1} << 40));
  bench_stream_cmd->add_option("--transport", stream_args->transport, "tcp (loopback) or ipc")
      ->check(CLI::IsMember({"tcp", "ipc"}));
  bench_stream_cmd->add_flag("--json", stream_args->json, "print one JSON object");
  bench_stream_cmd->add_option("--send-to", stream_args->send_to)->group("");  // the sending child's
  bench_stream_cmd->add_option("--mode", stream_args->mode)->group("");
  bench_stream_cmd->add_option("--keys", stream_args->keys)->group("");

  auto reshard_args = std::make_shared<ReshardBenchArgs>();
  auto* bench_reshard_cmd = bench->add_subcommand(
      "reshard", "weights moved from a training layout to a generation layout: the reshard plan against all-gather + broadcast");
  bench_reshard_cmd->add_option("--model", reshard_args->model, "model directory")->required()->check(CLI::ExistingDirectory);
  bench_reshard_cmd->add_option("--from", reshard_args->from, "the training layout, e.g. fsdp=4 or dp=2,tp=2 (default fsdp=4)");
  bench_reshard_cmd->add_option("--to", reshard_args->to, "the generation layout: replicas (dp) of tp ranks (default dp=2,tp=2)");
  bench_reshard_cmd->add_option("--placement", reshard_args->placement, "split (processes of their own) or colocated")
      ->check(CLI::IsMember({"split", "colocated"}));
  bench_reshard_cmd->add_option("--bucket-mb", reshard_args->bucket_mb, "largest bucket (MiB, default 32)");
  bench_reshard_cmd->add_option("--window", reshard_args->window, "buckets in flight per source (default 4)")->check(CLI::Range(1, 1024));
  bench_reshard_cmd->add_option("--repeats", reshard_args->repeats, "transfers of each kind; the best counts (default 3)")
      ->check(CLI::Range(1, 100));
  bench_reshard_cmd->add_flag("--replicated-vocab", reshard_args->replicated_vocab,
                              "every tp rank holds the whole embedding and output head (default: split by vocabulary)");
  bench_reshard_cmd->add_flag("--json", reshard_args->json, "print one JSON object");
  bench_reshard_cmd->add_flag("-q,--quiet", reshard_args->quiet, "no progress on stderr");

  commands.emplace_back(bench_env_cmd, [env_args] { return bench_env(*env_args); });
  commands.emplace_back(bench_reshard_cmd, [reshard_args] { return bench_reshard(*reshard_args); });
  commands.emplace_back(bench_train_cmd, [train_args] { return bench_train(*train_args); });
  commands.emplace_back(bench_rlhf_cmd, [rlhf_args] { return bench_rlhf(*rlhf_args); });
  commands.emplace_back(bench_tok_cmd, [tok_args] { return bench_tokenize(*tok_args); });
  commands.emplace_back(bench_gen_cmd, [gen_args] { return bench_generate(*gen_args); });
  commands.emplace_back(bench_upd_cmd, [upd_args] { return bench_update(*upd_args); });
  auto ckpt_args = std::make_shared<CheckpointBenchArgs>();
  auto* bench_ckpt_cmd = bench->add_subcommand(
      "checkpoint", "the training stall of a checkpoint of a model and its Adam state: synchronous against asynchronous");
  bench_ckpt_cmd->add_option("--model", ckpt_args->model, "model directory (e.g. `flotilla lm init --preset base`)")->required()->check(CLI::ExistingDirectory);
  bench_ckpt_cmd->add_option("--dir", ckpt_args->dir, "where to write the checkpoints (default: a temporary directory, removed after)");
  bench_ckpt_cmd->add_option("--repeats", ckpt_args->repeats, "checkpoints of each kind; the best counts (default 2)")->check(CLI::Range(1, 100));
  bench_ckpt_cmd->add_option("--batch", ckpt_args->batch, "rows per training step (default 4)")->check(CLI::Range(int64_t{1}, int64_t{4096}));
  bench_ckpt_cmd->add_option("--seq-len", ckpt_args->seq_len, "tokens per row (default 64)")->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  bench_ckpt_cmd->add_flag("--json", ckpt_args->json, "print one JSON object");
  commands.emplace_back(bench_ckpt_cmd, [ckpt_args] { return bench_checkpoint(*ckpt_args); });
  commands.emplace_back(bench_stream_cmd, [stream_args] { return bench_stream(*stream_args); });
}

}  // namespace flotilla::controller
