// The transformer family against an independent plain-Python forward pass
// (tests/reference/lm_forward.py), Hugging Face checkpoints both ways (F32, BF16, F16, shards),
// `flotilla lm init` / `lm score`, and the errors a user meets with a bad model directory.
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/safetensors.hpp"
#include "models/tokenizer.hpp"
#include "models/transformer.hpp"
#include "support/cli.hpp"
#include "support/temp_dir.hpp"
#include "support/tiny_lm.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;
using test::spread_model;
namespace fs = std::filesystem;

namespace {

const std::string kCli = FLOTILLA_TEST_CLI;
const std::vector<std::vector<int64_t>> kLines = {{7}, {1, 2, 3, 4, 5}, {256, 72, 105, 33, 299, 0, 17, 17, 17, 150, 9, 258}};

std::vector<std::vector<double>> json_lines(const std::string& text) {
  std::vector<std::vector<double>> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line).get<std::vector<double>>());
  return out;
}

fs::path tokens_file(const test::TempDir& dir) {
  std::string text;
  for (const auto& l : kLines) text += nlohmann::json(l).dump() + "\n";
  return dir.write("tokens.txt", text);
}

std::vector<std::vector<double>> reference_scores(const fs::path& model, const fs::path& tokens) {
  const fs::path out = model / "reference.jsonl";
  const std::string cmd = "python3 '" + (fs::path(FLOTILLA_SOURCE_DIR) / "tests" / "reference" / "lm_forward.py").string() +
                          "' '" + model.string() + "' '" + tokens.string() + "' > '" + out.string() + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);
  return json_lines(core::read_file(out));
}

std::vector<std::vector<double>> cli_scores(const fs::path& model, const fs::path& tokens, const fs::path& dir) {
  auto r = test::run_cli(kCli, {"lm", "score", "--model", model.string(), "--tokens-file", tokens.string()}, dir);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  return json_lines(r.out);
}

double worst_difference(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].size() == b[i].size());
    for (size_t t = 0; t < a[i].size(); ++t) worst = std::max(worst, std::fabs(a[i][t] - b[i][t]));
  }
  return worst;
}

}  // namespace

TEST_CASE("lm_forward_matches_an_independent_implementation_for_every_architecture") {
  test::TempDir dir;
  const fs::path tokens = tokens_file(dir);
  for (const char* arch : {"qwen3", "qwen2", "llama"}) {
    for (bool tied : {true, false}) {
      CAPTURE(std::string(arch));
      CAPTURE(tied);
      const fs::path model = dir.path() / (std::string(arch) + (tied ? "-tied" : "-untied"));
      spread_model(arch, tied).save(model);
      CHECK(fs::exists(model / "config.json"));
      CHECK(core::load_safetensors(model / "model.safetensors").contains("lm_head.weight") == !tied);
      const auto ours = cli_scores(model, tokens, dir.path()), ref = reference_scores(model, tokens);
      REQUIRE(ours.size() == 3);
      CHECK(ours[0].empty());  // one token: nothing to predict
      CHECK(ours[2].size() == 11);
      CHECK(worst_difference(ours, ref) < 1e-4);
      // The check means something: these log-probabilities are far from uniform.
      double lo = 0, hi = -1e9;
      for (double x : ours[2]) lo = std::min(lo, x), hi = std::max(hi, x);
      CHECK(hi - lo > 3.0);
    }
  }
}

TEST_CASE("lm_checkpoints_round_trip_in_f32_bf16_f16_and_shards") {
  test::TempDir dir;
  const fs::path tokens = tokens_file(dir);
  models::CausalLm lm = spread_model("qwen3", true);
  const at::Tensor probe = at::tensor(std::vector<int64_t>{1, 2, 3, 4, 5, 6}).unsqueeze(0);
  lm.save(dir.path() / "f32");
  models::CausalLm back = models::CausalLm::load(dir.path() / "f32");
  CHECK(at::equal(back.token_log_probs(probe), lm.token_log_probs(probe)));
  for (const char* dtype : {"bfloat16", "float16"}) {
    CAPTURE(std::string(dtype));
    const fs::path d = dir.path() / dtype;
    lm.save(d, dtype);
    const auto header = core::load_safetensors(d / "model.safetensors");
    CHECK((header.at("model.embed_tokens.weight").scalar_type() ==
           (std::string(dtype) == "bfloat16" ? at::kBFloat16 : at::kHalf)));
    CHECK((nlohmann::json::parse(core::read_file(d / "config.json"))["torch_dtype"] == dtype));
    // The reduced weights load as they are: ours and the reference agree on them.
    CHECK(worst_difference(cli_scores(d, tokens, dir.path()), reference_scores(d, tokens)) < 1e-4);
  }
  // Shards listed by model.safetensors.index.json load to the same model.
  const fs::path sharded = dir.path() / "sharded";
  fs::create_directories(sharded);
  fs::copy_file(dir.path() / "f32" / "config.json", sharded / "config.json");
  auto all = core::load_safetensors(dir.path() / "f32" / "model.safetensors").tensors;
  std::vector<std::pair<std::string, at::Tensor>> a(all.begin(), all.begin() + all.size() / 2), b(all.begin() + all.size() / 2, all.end());
  core::save_safetensors(sharded / "model-00001-of-00002.safetensors", a);
  core::save_safetensors(sharded / "model-00002-of-00002.safetensors", b);
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  for (const auto& [n, t] : a) index["weight_map"][n] = "model-00001-of-00002.safetensors";
  for (const auto& [n, t] : b) index["weight_map"][n] = "model-00002-of-00002.safetensors";
  std::ofstream(sharded / "model.safetensors.index.json") << index.dump();
  CHECK(at::equal(models::CausalLm::load(sharded).token_log_probs(probe), lm.token_log_probs(probe)));
}

TEST_CASE("lm_bad_model_directories_name_the_problem") {
  test::TempDir dir;
  const fs::path good = dir.path() / "good";
  spread_model("qwen2", true).save(good);
  auto config = nlohmann::json::parse(core::read_file(good / "config.json"));
  auto expect = [&](const fs::path& model, const std::string& part) {
    CAPTURE(part);
    try {
      models::CausalLm::load(model);
      FAIL("a bad model directory loaded");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find(part) != std::string::npos);
    }
  };
  auto variant = [&](const std::string& name, const nlohmann::json& c) {
    const fs::path d = dir.path() / name;
    fs::create_directories(d);
    fs::copy_file(good / "model.safetensors", d / "model.safetensors", fs::copy_options::overwrite_existing);
    std::ofstream(d / "config.json") << c.dump();
    return d;
  };
  nlohmann::json missing = config;
  missing.erase("hidden_size");
  expect(variant("missing", missing), "missing key 'hidden_size'");
  nlohmann::json gpt2 = config;
  gpt2["model_type"] = "gpt2";
  expect(variant("gpt2", gpt2), "model_type 'gpt2' is not supported");
  nlohmann::json heads = config;
  heads["num_key_value_heads"] = 3;
  expect(variant("heads", heads), "not a multiple of num_key_value_heads");
  nlohmann::json wider = config;
  wider["intermediate_size"] = 200;
  expect(variant("wider", wider), "'model.layers.0.mlp.gate_proj.weight' has shape [192, 64], the config implies [200, 64]");
  // A tensor missing from the checkpoint is named.
  const fs::path holed = variant("holed", config);
  auto tensors = core::load_safetensors(holed / "model.safetensors").tensors;
  std::erase_if(tensors, [](const auto& p) { return p.first == "model.layers.1.self_attn.q_proj.bias"; });
  core::save_safetensors(holed / "model.safetensors", tensors);
  expect(holed, "no tensor 'model.layers.1.self_attn.q_proj.bias'");
  expect(dir.path() / "nowhere", "no config.json");
  // A token id outside the vocabulary is the user's error, with the line it is on.
  const fs::path bad_tokens = dir.write("bad.txt", "[1,2]\n[1,300]\n");
  auto r = test::run_cli(kCli, {"lm", "score", "--model", good.string(), "--tokens-file", bad_tokens.string()}, dir.path());
  CHECK(r.code == 2);
  CHECK(r.err.find("bad.txt:2: token id 300 is outside the model's vocabulary") != std::string::npos);
}

TEST_CASE("lm_init_writes_a_model_directory_with_its_tokenizer") {
  test::TempDir dir;
  auto r = test::run_cli(kCli, {"lm", "init", "--arch", "llama", "--preset", "small", "--vocab", "1000", "--out", "m", "--dtype",
                                "bfloat16"}, dir.path(), dir.path());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"}) CHECK(fs::exists(dir.path() / "m" / f));
  models::CausalLm lm = models::CausalLm::load(dir.path() / "m");
  CHECK(lm.config().model_type == "llama");
  CHECK(lm.config().hidden_size == 256);
  CHECK(lm.config().vocab_size == 1000);
  auto tok = models::load_tokenizer((dir.path() / "m").string());
  const std::vector<int32_t> ids = tok->encode("Hi<|im_end|>");
  CHECK(ids == std::vector<int32_t>{72, 105, 258});
  CHECK(tok->decode(ids) == "Hi<|im_end|>");
  // Explicit sizes replace the preset's.
  auto sized = test::run_cli(kCli, {"lm", "init", "--preset", "tiny", "--vocab", "300", "--out", "sized", "--hidden", "48", "--layers",
                                    "3", "--heads", "6", "--kv-heads", "2", "--head-dim", "8", "--intermediate", "100"},
                             dir.path(), dir.path());
  REQUIRE_MESSAGE(sized.code == 0, sized.err);
  const models::LmConfig s = models::CausalLm::load(dir.path() / "sized").config();
  CHECK(std::vector<int64_t>{s.hidden_size, s.num_hidden_layers, s.num_attention_heads, s.num_key_value_heads, s.head_dim,
                             s.intermediate_size} == std::vector<int64_t>{48, 3, 6, 2, 8, 100});
  auto groups = test::run_cli(kCli, {"lm", "init", "--vocab", "300", "--out", "g", "--heads", "6", "--kv-heads", "4"}, dir.path(),
                              dir.path());
  CHECK(groups.code == 2);
  CHECK(groups.err.find("--heads 6 is not a multiple of --kv-heads 4") != std::string::npos);
  CHECK(!fs::exists(dir.path() / "g"));
  auto small = test::run_cli(kCli, {"lm", "init", "--vocab", "100", "--out", "x"}, dir.path(), dir.path());
  CHECK(small.code == 2);
  CHECK(small.err.find("too small") != std::string::npos);
}

TEST_CASE("cli_generate_and_bench_generate") {
  test::TempDir dir;
  REQUIRE(test::run_cli(kCli, {"lm", "init", "--out", "m", "--vocab", "300"}, dir.path(), dir.path()).code == 0);
  auto g = test::run_cli(kCli, {"generate", "--model", "m", "--prompt", "Hello", "--n", "3", "--max-tokens", "5", "--seed", "4"},
                         dir.path(), dir.path());
  REQUIRE_MESSAGE(g.code == 0, g.err);
  std::istringstream lines(g.out);
  int samples = 0;
  for (std::string line; std::getline(lines, line); ++samples) {
    auto j = nlohmann::json::parse(line);
    CHECK(j["sample"] == samples);
    CHECK(j["tokens"].size() == j["logprobs"].size());
    CHECK(j["tokens"].size() <= 5);
    for (double lp : j["logprobs"]) CHECK(lp <= 0.0);
  }
  CHECK(samples == 3);
  auto again = test::run_cli(kCli, {"generate", "--model", "m", "--prompt", "Hello", "--n", "3", "--max-tokens", "5", "--seed", "4"},
                             dir.path(), dir.path());
  CHECK(again.out == g.out);  // a seed repeats the samples
  auto b = test::run_cli(kCli, {"bench", "generate", "--model", "m", "--batch", "1,4", "--prompt-len", "8", "--gen-len", "6", "--group",
                                "2", "--reference", "--weights", "bfloat16", "--stream", "--prefill-chunk", "4", "--json"},
                         dir.path(), dir.path());
  REQUIRE_MESSAGE(b.code == 0, b.err);
  auto j = nlohmann::json::parse(b.out);
  REQUIRE(j["rows"].size() == 2);
  for (const auto& row : j["rows"]) {
    CHECK(row["tokens_per_second"].get<double>() > 0);
    CHECK(row["decode_sgemm_share"].get<double>() > 0);
    CHECK(row["reference"]["tokens_per_second"].get<double>() > 0);
    CHECK(row["reference"]["same_tokens"].get<double>() >= 0);
    CHECK(row["reference"]["openblas_threads"].get<int>() >= 1);
    CHECK(row["float32"]["mean_abs_logprob_diff"].get<double>() >= 0);
    // One prefill per group of two: half the prompt tokens of the unshared run. Batch 1 has no
    // group of two.
    if (row["batch"] == 1) {
      CHECK(!row.contains("shared"));
      continue;
    }
    CHECK(row["shared"]["prefill_tokens"].get<int64_t>() * 2 == row["shared"]["unshared_prefill_tokens"].get<int64_t>());
  }
  // 16 requests of 8-token prompts through 4 slots: chunks of 4 prompt tokens take more steps.
  CHECK(j["stream"]["requests"] == 16);
  CHECK(j["stream"]["chunked"]["steps"].get<int64_t>() > j["stream"]["whole_prompts"]["steps"].get<int64_t>());
  // bench update: both paths time an update on the same batch, and their first updates agree.
  auto u = test::run_cli(kCli, {"bench", "update", "--model", "m", "--prompts", "3", "--group", "4", "--prompt-len", "10", "--gen-len", "5",
                                "--micro-batch", "5", "--repeats", "1", "--json"},
                         dir.path(), dir.path());
  REQUIRE_MESSAGE(u.code == 0, u.err);
  auto uj = nlohmann::json::parse(u.out);
  CHECK(uj["rows"] == 12);
  CHECK(uj["whole_s"].get<double>() > 0);
  CHECK(uj["shared_s"].get<double>() > 0);
  CHECK(uj["pg_loss_shared"].get<double>() == doctest::Approx(uj["pg_loss_whole"].get<double>()).epsilon(1e-4).scale(1e-6));
  REQUIRE(test::run_cli(kCli, {"lm", "init", "--out", "v", "--vocab", "300", "--head", "value"}, dir.path(), dir.path()).code == 0);
  auto no_lm = test::run_cli(kCli, {"bench", "update", "--model", "v"}, dir.path(), dir.path());
  CHECK(no_lm.code == 2);
  CHECK(no_lm.err.find("a policy update needs a language-model head") != std::string::npos);
  auto bad = test::run_cli(kCli, {"bench", "generate", "--model", "m", "--prompt-len", "4000", "--gen-len", "100"}, dir.path(), dir.path());
  CHECK(bad.code == 2);
  CHECK(bad.err.find("--prompt-len plus twice --gen-len is 4200, more than the model's max_position_embeddings") != std::string::npos);
}

TEST_CASE("value_and_reward_heads_save_load_and_score_causally") {
  test::TempDir dir;
  for (const char* head : {"value", "reward"}) {
    CAPTURE(std::string(head));
    auto r = test::run_cli(kCli, {"lm", "init", "--head", head, "--vocab", "300", "--out", head}, dir.path(), dir.path());
    REQUIRE_MESSAGE(r.code == 0, r.err);
    auto config = nlohmann::json::parse(core::read_file(dir.path() / head / "config.json"));
    CHECK((config["architectures"][0] == (std::string(head) == "reward" ? "Qwen3ForSequenceClassification" : "Qwen3ForTokenClassification")));
    CHECK(config["num_labels"] == 1);
    const auto file = core::load_safetensors(dir.path() / head / "model.safetensors");
    CHECK((file.at("score.weight").sizes() == at::IntArrayRef({1, 64})));
    CHECK_FALSE(file.contains("lm_head.weight"));
    models::CausalLm lm = models::CausalLm::load(dir.path() / head);
    CHECK(lm.config().head == head);
    at::Tensor a = at::tensor(std::vector<int64_t>{5, 6, 7, 8, 9}).unsqueeze(0);
    at::Tensor b = at::tensor(std::vector<int64_t>{5, 6, 7, 100, 200}).unsqueeze(0);
    at::Tensor sa = lm.scores(a).detach(), sb = lm.scores(b).detach();
    CHECK((sa.sizes() == at::IntArrayRef({1, 5})));
    CHECK(at::allclose(sa.narrow(1, 0, 3), sb.narrow(1, 0, 3)));  // a position sees only what came before
    CHECK_FALSE(at::allclose(sa.narrow(1, 3, 2), sb.narrow(1, 3, 2)));
    if (std::string(head) == "reward") {
      at::Tensor two = at::cat({a, b}, 0);
      at::Tensor r2 = lm.rewards(two, at::tensor(std::vector<int64_t>{4, 2})).detach();
      CHECK(r2[0].item<float>() == doctest::Approx(sa[0][4].item<float>()).epsilon(1e-5));
      CHECK(r2[1].item<float>() == doctest::Approx(sb[0][2].item<float>()).epsilon(1e-5));
    }
    const fs::path tokens = dir.write("t.txt", "[1,2,3]\n");
    auto score = test::run_cli(kCli, {"lm", "score", "--model", head, "--tokens-file", tokens.string()}, dir.path(), dir.path());
    CHECK(score.code == 2);
    CHECK(score.err.find("needs a language-model head") != std::string::npos);
  }
}
