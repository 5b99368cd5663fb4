// Language-model commands: `flotilla tokenize` and `flotilla bench tokenize`.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "controller/commands.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "models/tokenizer.hpp"

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

}  // namespace

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
    const std::string cmd = "node '" + script.string() + "' '" + args.reference + "' '" + args.file + "' 2>&1";
    std::string out;
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char buf[4096];
      while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
      if (pclose(p) != 0) throw Error("the reference encoder failed: " + out);
    }
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
