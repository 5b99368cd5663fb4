// Language-model commands: `flotilla lm init`, `lm score`, `generate`, `tokenize`, `data make`
// and the `bench tokenize` and `bench checkpoint` benchmarks.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <unistd.h>
#include <sstream>

#include "controller/cli/commands.hpp"
#include "controller/cli/json32.hpp"
#include "controller/run/checkpoint.hpp"
#include "actors/lm/checkpoint.hpp"
#include "algorithms/lm_trainer.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/process.hpp"
#include "envs/text_tasks.hpp"
#include "models/generation.hpp"
#include "models/tokenizer.hpp"
#include "models/transformer.hpp"

namespace flotilla::controller {
namespace {

std::vector<std::string> input_lines(const TokenizeArgs& args) {
  std::string text = args.text;
  if (!args.file.empty()) text = core::read_file(args.file);
  else if (args.text.empty() && !args.from_stdin) return {};
  if (args.from_stdin) {
    std::ostringstream s;
    s << std::cin.rdbuf();
    text = s.str();
  }
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      if (pos < text.size() || lines.empty()) lines.push_back(text.substr(pos));
      break;
    }
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

// The specials a new model's tokenizer carries (ids 256, 257, 258).
const std::vector<std::string> kSpecials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

}  // namespace

int lm_init(const LmInitArgs& args) {
  models::LmConfig c = models::LmConfig::preset(args.arch, args.preset, args.vocab);
  c.head = args.head;
  for (auto [size, given] : {std::pair{&c.hidden_size, args.hidden}, {&c.num_hidden_layers, args.layers},
                             {&c.num_attention_heads, args.heads}, {&c.num_key_value_heads, args.kv_heads},
                             {&c.head_dim, args.head_dim}, {&c.intermediate_size, args.intermediate}})
    if (given > 0) *size = given;
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw ConfigError(fmt::format("--heads {} is not a multiple of --kv-heads {}: each key-value head serves a whole group of query heads",
                                  c.num_attention_heads, c.num_key_value_heads));
  if (args.vocab < 256 + static_cast<int64_t>(kSpecials.size()))
    throw ConfigError("--vocab " + std::to_string(args.vocab) + " is too small for the byte-level tokenizer written beside "
                      "the model (256 bytes + " + std::to_string(kSpecials.size()) + " specials = 259)");
  at::manual_seed(args.seed);
  models::CausalLm lm(c);
  lm.save(args.out, args.dtype);
  const std::string tok = models::byte_level_tokenizer_json(kSpecials);
  core::write_file_atomically(std::filesystem::path(args.out) / "tokenizer.json", [&](std::ostream& o) { o << tok; });
  int64_t params = 0;
  for (const auto& [name, t] : lm.named_parameters()) params += t.numel();
  std::cout << fmt::format("{}: {} {}, {} parameters (hidden {}, {} layers, {} query / {} key-value heads of {}, intermediate {}), "
                           "vocab {}, {}\n",
                           args.out, args.arch, args.preset, params, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                           c.num_key_value_heads, c.head_dim, c.intermediate_size, args.vocab, args.dtype);
  return 0;
}

int lm_score(const LmScoreArgs& args) {
  models::CausalLm lm = models::CausalLm::load(args.model);
  if (lm.config().head != "lm")
    throw ConfigError(args.model + " has a " + lm.config().head + " head; lm score needs a language-model head");
  const std::string text = core::read_file(args.tokens_file);
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = args.tokens_file + ":" + std::to_string(n);
    nlohmann::json ids;
    try {
      ids = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      throw ConfigError(where + ": expected a JSON array of token ids, got '" + line + "'");
    }
    if (!ids.is_array() || ids.empty()) throw ConfigError(where + ": expected a non-empty JSON array of token ids");
    std::vector<int64_t> v;
    for (const auto& x : ids) {
      if (!x.is_number_integer()) throw ConfigError(where + ": token ids are integers, got " + x.dump());
      const int64_t id = x.get<int64_t>();
      if (id < 0 || id >= lm.config().vocab_size)
        throw ConfigError(where + ": token id " + std::to_string(id) + " is outside the model's vocabulary (0 to " +
                          std::to_string(lm.config().vocab_size - 1) + ")");
      v.push_back(id);
    }
    at::Tensor lp = lm.token_log_probs(at::tensor(v, at::kLong).unsqueeze(0))[0].contiguous();
    std::cout << f32_list(lp.data_ptr<float>(), lp.numel()).dump() << "\n";
  }
  return 0;
}

int generate(const GenerateArgs& args) {
  models::CausalLm lm = models::CausalLm::load(args.model);
  auto tok = models::load_tokenizer(args.model);
  std::vector<int32_t> prompt;
  try {
    prompt = tok->encode(args.prompt);
  } catch (const FormatError& e) {
    throw ConfigError(std::string("--prompt: ") + e.what());
  }
  models::GenerationRequest r;
  r.id = 0;
  r.prompt = prompt;
  r.n = args.n;
  r.sampling.temperature = args.temperature;
  r.sampling.top_p = args.top_p;
  r.sampling.top_k = args.top_k;
  r.sampling.seed = args.seed;
  r.sampling.max_new_tokens = args.max_tokens;
  for (const std::string& stop : {std::string("<|endoftext|>"), std::string("<|im_end|>")})
    if (auto id = tok->token_id(stop)) r.sampling.stop_tokens.push_back(*id);
  models::EngineConfig c;
  c.max_batch = std::max<int64_t>(c.max_batch, args.n);
  c.num_blocks = std::max<int64_t>(c.num_blocks, args.n * ((static_cast<int64_t>(prompt.size()) + args.max_tokens) / c.block_size + 2));
  models::GenerationEngine engine(lm, c);
  engine.submit(r);
  auto out = engine.run();
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.sample < b.sample; });
  for (const auto& g : out) {
    // A model's vocabulary may be larger than its tokenizer's (padding rows, as in Qwen's): ids
    // the tokenizer lacks have no text.
    std::vector<int32_t> known;
    for (int32_t id : g.tokens)
      if (id < tok->vocab_size()) known.push_back(id);
    nlohmann::ordered_json j = {{"sample", g.sample},
                                {"text", tok->decode(known)},
                                {"tokens", g.tokens},
                                {"logprobs", g.logprobs},
                                {"finish_reason", g.finish_reason}};
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  return 0;
}

int bench_checkpoint(const CheckpointBenchArgs& args) {
  namespace fs = std::filesystem;
  using clock = std::chrono::steady_clock;
  auto since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  models::CausalLm lm = models::CausalLm::load(args.model);
  algorithms::LmOptimConfig optim;
  optim.micro_batch = args.batch;
  algorithms::LmTrainer trainer(lm, optim);
  algorithms::PolicyLossConfig sft;
  sft.loss = "sft";
  core::Batch batch;
  batch.set("tokens", at::randint(0, lm.config().vocab_size, {args.batch, args.seq_len}, at::kLong));
  batch.set("response_mask", at::ones({args.batch, args.seq_len - 1}, at::kFloat));
  uint64_t seed = 1;
  auto train_step = [&] {
    const auto t = clock::now();
    trainer.update_policy(batch, sft, seed++);
    return since(t);
  };
  train_step();  // Adam's state exists from the first step
  std::vector<double> alone;
  for (int i = 0; i < 3; ++i) alone.push_back(train_step());
  const fs::path root = args.dir.empty() ? fs::temp_directory_path() / ("flotilla-bench-checkpoint-" + std::to_string(::getpid())) : fs::path(args.dir);
  struct Remove {
    fs::path dir;
    bool owned;
    ~Remove() {
      if (owned) fs::remove_all(dir);
    }
  } remove{root, args.dir.empty()};
  // As the RLHF program does: the actor writes checkpoints/step-N/actor, then the controller the
  // manifest (hashing every file).
  auto manifest = [&](int64_t step) { return nlohmann::json{{"program", "bench"}, {"step", step}, {"dir", step_dir(step)}}.dump(); };
  double sync_stall = 1e30, async_stall = 1e30, written_s = 0;
  std::vector<double> during;
  int64_t step = 0;
  for (int r = 0; r < args.repeats; ++r) {
    ++step;
    auto t = clock::now();
    actors::lm::save_trained(lm, &trainer, nullptr, 0, root / step_dir(step) / "actor");
    save_checkpoint(root, step, {}, manifest(step), 2);
    sync_stall = std::min(sync_stall, since(t));
  }
  actors::lm::BackgroundSaver saver;
  CheckpointWriter writer;
  for (int r = 0; r < args.repeats; ++r) {
    ++step;
    const fs::path dir = root / step_dir(step) / "actor";
    auto t = clock::now();
    saver.save(lm, &trainer, nullptr, 0, dir, step);
    writer.add(root, step, manifest(step), 2, [dir] { return background_written(dir); });
    async_stall = std::min(async_stall, since(t));
    // Training goes on while the files and then the manifest are written.
    const fs::path json = root / "checkpoints" / ("ckpt-" + std::to_string(step) + ".json");
    while (!fs::exists(json)) {
      during.push_back(train_step());
      writer.poll();
    }
    written_s = std::max(written_s, since(t));
  }
  writer.flush();
  if (!verify_checkpoint(root / "checkpoints" / ("ckpt-" + std::to_string(step) + ".json")).empty())
    throw Error("the last asynchronous checkpoint does not verify");
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  int64_t params = 0;
  for (const auto& [name, t] : lm.named_parameters()) params += t.numel();
  const double step_alone = median(alone), step_during = median(during);
  nlohmann::ordered_json j = {{"model", args.model},
                              {"parameters", params},
                              {"sync_stall_s", sync_stall},
                              {"async_stall_s", async_stall},
                              {"stall_ratio", sync_stall / async_stall},
                              {"async_written_s", written_s},
                              {"train_step_s", step_alone},
                              {"train_step_during_write_s", step_during},
                              {"steps_during_writes", static_cast<int64_t>(during.size())}};
  if (args.json) std::cout << j.dump() << "\n";
  else
    std::cout << "model " << args.model << " (" << params << " parameters, with Adam's state), best of " << args.repeats << "\n"
              << "synchronous checkpoint: training stalls " << sync_stall << " s (files, then the manifest's SHA-256s)\n"
              << "asynchronous checkpoint: training stalls " << async_stall << " s (a copy in host memory); written "
              << written_s << " s later\n"
              << "stall ratio: " << sync_stall / async_stall << "\n"
              << "train step: " << step_alone << " s alone, " << step_during << " s while a checkpoint is written ("
              << during.size() << " steps)\n";
  return 0;
}

int data_make(const DataMakeArgs& args) {
  envs::TextTaskOptions o;
  o.max_digits = args.max_digits;
  o.length = args.length;
  o.min_length = args.min_length;
  o.min_digits = args.min_digits;
  o.show_work = args.show_work;
  auto examples = envs::make_text_task(args.task, args.n, args.seed, o);
  envs::set_kind(examples, args.kind, args.seed);
  std::string text;
  for (const auto& e : examples) text += envs::text_example_json(e, args.kind) + "\n";
  if (args.out.empty() || args.out == "-") {
    std::cout << text;
    return 0;
  }
  const std::filesystem::path parent = std::filesystem::path(args.out).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  core::write_file_atomically(args.out, [&](std::ostream& o) { o << text; });
  std::cerr << args.out << ": " << examples.size() << " " << args.task << " examples (" << args.kind << ")\n";
  return 0;
}

int tokenize(const TokenizeArgs& args) {
  auto tok = models::load_tokenizer(args.tokenizer);
  const std::vector<std::string> lines = input_lines(args);
  for (size_t n = 0; n < lines.size(); ++n) {
    const std::string where = "line " + std::to_string(n + 1);
    if (args.decode) {
      nlohmann::json ids;
      try {
        ids = nlohmann::json::parse(lines[n]);
      } catch (const nlohmann::json::exception&) {
        throw ConfigError(where + ": --decode takes one JSON array of token ids per line, got '" + lines[n] + "'");
      }
      if (!ids.is_array()) throw ConfigError(where + ": expected a JSON array of token ids");
      std::vector<int32_t> v;
      for (const auto& x : ids) {
        if (!x.is_number_integer()) throw ConfigError(where + ": token ids are integers, got " + x.dump());
        v.push_back(x.get<int32_t>());
      }
      std::string text;
      try {
        text = tok->decode(v);
      } catch (const Error& e) {
        throw ConfigError(where + ": " + e.what());
      }
      // A JSON string: decoded text may hold newlines or invalid UTF-8 (a cut multi-byte character).
      std::cout << nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      continue;
    }
    std::vector<int32_t> ids;
    try {
      ids = tok->encode(lines[n]);
    } catch (const FormatError& e) {
      throw ConfigError(where + ": " + e.what());
    }
    std::cout << nlohmann::json(ids).dump() << "\n";
  }
  return 0;
}

int bench_tokenize(const TokenizeBenchArgs& args) {
  auto tok = models::load_tokenizer(args.tokenizer);
  const std::string text = core::read_file(args.file);
  if (text.empty()) throw ConfigError(args.file + " is empty");
  using clock = std::chrono::steady_clock;
  // Line by line, as `flotilla tokenize` reads files; repeated until about a second has passed.
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    lines.push_back(std::string_view(text).substr(pos, nl - pos));
    pos = nl + 1;
  }
  size_t tokens = 0;
  int rounds = 0;
  const auto t0 = clock::now();
  double seconds = 0;
  while (seconds < 1.0 || rounds < 1) {
    for (std::string_view l : lines) tokens += tok->encode(l).size();
    ++rounds;
    seconds = std::chrono::duration<double>(clock::now() - t0).count();
  }
  const double mb = static_cast<double>(text.size()) * rounds / 1e6;
  nlohmann::ordered_json j = {{"tokenizer", args.tokenizer},   {"file", args.file},
                              {"bytes", text.size()},          {"rounds", rounds},
                              {"tokens_per_round", tokens / static_cast<size_t>(rounds)},
                              {"seconds", seconds},            {"mb_per_second", mb / seconds}};
  if (!args.reference.empty()) {
    // The npm reference encoder on the same file, in the same run (tests/reference/bench_tokenize.js).
    const std::filesystem::path script =
        std::filesystem::path(FLOTILLA_SOURCE_DIR) / "tests" / "reference" / "bench_tokenize.js";
    if (!std::filesystem::exists(script))
      throw ConfigError("--reference needs " + script.string() + " (a source checkout) and scripts/setup --tests");
    const std::string out = core::run_with_input({"node", {script.string(), args.reference, args.file}, "the reference encoder"}, "",
                                                 std::chrono::minutes(30));
    nlohmann::json ref;
    try {
      ref = nlohmann::json::parse(out);
    } catch (const nlohmann::json::exception&) {
      throw Error("the reference encoder printed no result: " + out);
    }
    j["reference"] = ref;
    j["ratio"] = (mb / seconds) / ref.at("mb_per_second").get<double>();
  }
  if (args.json) {
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::cout << "tokenizer: " << args.tokenizer << "  file: " << args.file << " (" << text.size() << " bytes, "
            << tokens / static_cast<size_t>(rounds) << " tokens)\n"
            << "mb_per_second: " << mb / seconds << "\n";
  if (j.contains("reference"))
    std::cout << "reference (" << args.reference << ", npm): " << j["reference"]["mb_per_second"].get<double>()
              << " MB/s, " << j["reference"]["tokens_per_round"] << " tokens\n"
              << "ratio: " << j["ratio"].get<double>() << "\n";
  return 0;
}

}  // namespace flotilla::controller
