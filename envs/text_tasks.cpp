#include "envs/text_tasks.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <random>
#include <regex>
#include <sstream>
#include <chrono>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/process.hpp"

namespace flotilla::envs {
namespace {

// Draws from mt19937_64's raw output, whose sequence the C++ standard fixes, so a seed gives the
// same task on every platform (the standard distributions are implementation-defined).
struct Draw {
  std::mt19937_64 gen;
  explicit Draw(uint64_t seed) : gen(seed) {}
  int64_t below(int64_t n) { return static_cast<int64_t>(gen() % static_cast<uint64_t>(n)); }
  int64_t between(int64_t lo, int64_t hi) { return lo + below(hi - lo + 1); }
};

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

int64_t pow10(int digits) {
  int64_t p = 1;
  for (int i = 0; i < digits; ++i) p *= 10;
  return p;
}

}  // namespace

std::vector<std::string> text_task_names() { return {"addition", "reverse", "sort"}; }

namespace {
// A list's length: `length`, or with a min_length a long-tailed draw in [min_length, length]
// (u^3 for u uniform: half the lists in the shortest eighth of the range).
int long_tailed(int low, int high, Draw& d) {
  const double u = static_cast<double>(d.below(1 << 30)) / static_cast<double>(1 << 30);
  return low + static_cast<int>(u * u * u * (high - low + 1));
}

int list_length(const TextTaskOptions& o, Draw& d, const std::string& task) {
  if (o.length < 1 || o.length > 1000) throw ConfigError(task + ": length must be 1 to 1000");
  if (o.min_length <= 0) return o.length;
  if (o.min_length > o.length) throw ConfigError(task + ": min_length " + std::to_string(o.min_length) + " is above length " + std::to_string(o.length));
  return long_tailed(o.min_length, o.length, d);
}

// "8+6+0=14 7+5+1=13 4+0+1=5 answer 534" for 478 + 56: each column's digits and carry, then the sum.
std::string addition_work(int64_t a, int64_t b) {
  std::string work;
  int64_t carry = 0;
  do {
    const int64_t x = a % 10, y = b % 10, sum = x + y + carry;
    work += std::to_string(x) + "+" + std::to_string(y) + "+" + std::to_string(carry) + "=" + std::to_string(sum) + " ";
    carry = sum / 10, a /= 10, b /= 10;
  } while (a > 0 || b > 0);
  return work + "answer ";
}
}  // namespace

std::vector<TextExample> make_text_task(const std::string& task, int64_t n, uint64_t seed, const TextTaskOptions& o) {
  if (n < 1) throw ConfigError("the number of examples must be at least 1, got " + std::to_string(n));
  Draw d(seed);
  std::vector<TextExample> out;
  if (task == "addition") {
    if (o.max_digits < 1 || o.max_digits > 18) throw ConfigError("addition: max_digits must be 1 to 18");
    if (o.min_digits > o.max_digits)
      throw ConfigError("addition: min_digits " + std::to_string(o.min_digits) + " is above max_digits " + std::to_string(o.max_digits));
    for (int64_t i = 0; i < n; ++i) {
      auto number = [&](int digits) { return digits == 1 ? d.between(0, 9) : d.between(pow10(digits - 1), pow10(digits) - 1); };
      int64_t a = 0, b = 0;
      if (o.min_digits > 0) {
        const int longer = long_tailed(o.min_digits, o.max_digits, d);
        a = number(longer), b = number(static_cast<int>(d.between(1, longer)));
        if (d.below(2)) std::swap(a, b);
      } else {
        a = number(static_cast<int>(d.between(1, o.max_digits)));
        b = number(static_cast<int>(d.between(1, o.max_digits)));
      }
      const std::string question = "What is " + std::to_string(a) + " + " + std::to_string(b) + "?";
      const std::string sum = std::to_string(a + b);
      if (o.show_work) out.push_back({question + " Show your work.\n", sum, addition_work(a, b) + sum, "", ""});
      else out.push_back({question + " Answer with the number only.\n", sum, "", "", ""});
    }
  } else if (task == "sort") {
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int64_t> v(static_cast<size_t>(list_length(o, d, task)));
      for (auto& x : v) x = d.between(0, 99);
      std::string list, sorted;
      for (size_t k = 0; k < v.size(); ++k) (k ? list += ' ' : list) += std::to_string(v[k]);
      std::sort(v.begin(), v.end());
      for (size_t k = 0; k < v.size(); ++k) (k ? sorted += ' ' : sorted) += std::to_string(v[k]);
      out.push_back({"Sort these numbers in ascending order, separated by spaces: " + list + "\n", sorted, "", "", ""});
    }
  } else if (task == "reverse") {
    for (int64_t i = 0; i < n; ++i) {
      std::string s;
      const int length = list_length(o, d, task);
      for (int k = 0; k < length; ++k) s.push_back(static_cast<char>('a' + d.below(26)));
      out.push_back({"Reverse this string: " + s + "\n", std::string(s.rbegin(), s.rend()), "", "", ""});
    }
  } else {
    throw ConfigError("unknown task '" + task + "' (known: addition, reverse, sort)");
  }
  return out;
}

std::string corrupt_answer(const std::string& answer, uint64_t seed) {
  Draw d(seed);
  std::vector<size_t> positions;
  for (size_t i = 0; i < answer.size(); ++i)
    if (std::isalnum(static_cast<unsigned char>(answer[i]))) positions.push_back(i);
  if (positions.empty()) return answer + "?";
  std::string out = answer;
  char& c = out[positions[static_cast<size_t>(d.below(static_cast<int64_t>(positions.size())))]];
  const bool digit = std::isdigit(static_cast<unsigned char>(c));
  const int base = digit ? '0' : std::islower(static_cast<unsigned char>(c)) ? 'a' : 'A', span = digit ? 10 : 26;
  c = static_cast<char>(base + (c - base + 1 + d.below(span - 1)) % span);  // any other digit or letter
  return out;
}

void set_kind(std::vector<TextExample>& examples, const std::string& kind, uint64_t seed) {
  if (kind == "verifiable") return;
  if (kind != "sft" && kind != "preference") throw ConfigError("dataset kind '" + kind + "' is not one of verifiable, sft, preference");
  for (size_t i = 0; i < examples.size(); ++i) {
    TextExample& e = examples[i];
    if (kind == "sft") e.response = e.response.empty() ? e.answer : e.response;  // a worked response when the task made one
    else e.chosen = e.answer, e.rejected = corrupt_answer(e.answer, seed * 1000003 + i);
  }
}

std::string text_example_json(const TextExample& e, const std::string& kind) {
  nlohmann::ordered_json j = {{"prompt", e.prompt}};
  if (kind == "verifiable") j["answer"] = e.answer;
  else if (kind == "sft") j["response"] = e.response;
  else if (kind == "preference") j["chosen"] = e.chosen, j["rejected"] = e.rejected;
  else throw ConfigError("dataset kind '" + kind + "' is not one of verifiable, sft, preference");
  return j.dump();
}

std::vector<TextExample> read_text_dataset(const std::filesystem::path& path, const std::string& kind) {
  std::vector<std::string> fields;
  if (kind == "verifiable") fields = {"prompt", "answer"};
  else if (kind == "sft") fields = {"prompt", "response"};
  else if (kind == "preference") fields = {"prompt", "chosen", "rejected"};
  else throw ConfigError("dataset kind '" + kind + "' is not one of verifiable, sft, preference");
  std::istringstream in(core::read_file(path));
  std::vector<TextExample> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path.string() + ":" + std::to_string(n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(where + ": not a JSON object: " + e.what());
    }
    if (!j.is_object()) throw FormatError(where + ": expected a JSON object");
    for (const auto& f : fields)
      if (!j.contains(f) || !j[f].is_string())
        throw FormatError(where + ": a " + kind + " example needs a string field '" + f + "'");
    TextExample e;
    e.prompt = j["prompt"].get<std::string>();
    if (kind == "verifiable") e.answer = j["answer"].get<std::string>();
    if (kind == "sft") e.response = j["response"].get<std::string>();
    if (kind == "preference") e.chosen = j["chosen"].get<std::string>(), e.rejected = j["rejected"].get<std::string>();
    out.push_back(std::move(e));
  }
  if (out.empty()) throw FormatError(path.string() + ": the dataset has no examples");
  return out;
}

double exact_match_reward(const std::string& response, const std::string& answer) {
  return trim(response) == trim(answer) ? 1.0 : 0.0;
}

double similarity_reward(const std::string& response, const std::string& answer) {
  const std::string a = trim(response), b = trim(answer);
  if (a.empty() && b.empty()) return 1.0;
  // Levenshtein distance, one row at a time.
  std::vector<size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), size_t{0});
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitute = diagonal + (a[i - 1] != b[j - 1] ? 1 : 0);
      diagonal = row[j];
      row[j] = std::min({substitute, row[j] + 1, row[j - 1] + 1});
    }
  }
  return 1.0 - static_cast<double>(row[b.size()]) / static_cast<double>(std::max(a.size(), b.size()));
}

double numeric_match_reward(const std::string& response, const std::string& answer, double tolerance) {
  static const std::regex number(R"([-+]?\d+(\.\d+)?)");
  auto last_number = [&](const std::string& s, double& value) {
    bool found = false;
    for (auto it = std::sregex_iterator(s.begin(), s.end(), number); it != std::sregex_iterator(); ++it) {
      value = std::stod(it->str());
      found = true;
    }
    return found;
  };
  double got = 0, want = 0;
  if (!last_number(answer, want)) throw ConfigError("numeric_match: the answer '" + answer + "' holds no number");
  if (!last_number(response, got)) return 0.0;
  return std::fabs(got - want) <= tolerance ? 1.0 : 0.0;
}

double format_reward(const std::string& response, const std::string& pattern) {
  std::regex re;
  try {
    re = std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw ConfigError("format reward: the pattern '" + pattern + "' is not a valid regular expression: " + e.what());
  }
  return std::regex_match(trim(response), re) ? 1.0 : 0.0;
}

double length_penalty(int64_t response_tokens, int64_t limit, double coef) {
  return response_tokens > limit ? -coef * static_cast<double>(response_tokens - limit) : 0.0;
}

char shell_syntax(const std::string& text) {
  const auto at = text.find_first_of("|&;<>()$`\\\"'*?[]#~\n");
  return at == std::string::npos ? 0 : text[at];
}

std::vector<double> command_rewards(const RewardCommand& command, const std::vector<RewardQuery>& queries) {
  const std::string who = "reward command '" + command.text + "'";
  core::ProcessSpec spec{.program = "/bin/sh", .args = {"-c", command.text}, .what = who, .cpu_s = command.cpu_s,
                         .memory_bytes = command.memory_mb << 20};
  if (!command.shell) {
    if (const char c = shell_syntax(command.text))
      throw Error(who + " has '" + std::string(1, c) + "', which only a shell understands; set reward.shell: true to run it under /bin/sh");
    std::istringstream words(command.text);
    std::string word;
    spec.args.clear();
    for (words >> word, spec.program = word; words >> word;) spec.args.push_back(word);
    if (spec.program.empty()) throw Error("the reward command is empty");
  }
  std::string input;
  for (const auto& q : queries)
    input += nlohmann::json{{"prompt", q.prompt}, {"response", q.response}, {"answer", q.answer}}.dump(
                 -1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const std::string output = core::run_with_input(spec, input, std::chrono::duration<double>(command.timeout_s));
  std::vector<double> scores;
  std::istringstream lines(output);
  std::string line;
  for (int n = 1; std::getline(lines, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const nlohmann::json j = nlohmann::json::parse(line);
      if (!j.is_object() || !j.contains("score") || !j["score"].is_number()) throw std::runtime_error("no number 'score'");
      scores.push_back(j["score"].get<double>());
    } catch (const std::exception&) {
      throw Error(who + ": output line " + std::to_string(n) + " is not {\"score\": number}: '" + line + "'");
    }
  }
  if (scores.size() != queries.size())
    throw Error(who + ": wrote " + std::to_string(scores.size()) + " scores for " + std::to_string(queries.size()) + " queries");
  return scores;
}

}  // namespace flotilla::envs
