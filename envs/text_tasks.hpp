#pragma once
// Text tasks for language-model RL: synthetic tasks with verifiable answers (made here, so a whole
// RLHF job runs without downloads), JSONL datasets, and rule-based rewards that score a response.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace flotilla::envs {

struct TextExample {
  std::string prompt;
  std::string answer;    // verifiable tasks
  std::string response;  // SFT
  std::string chosen, rejected;  // preferences
};

struct TextTaskOptions {
  int max_digits = 4;  // addition: operands of 1 .. max_digits digits
  int length = 6;      // sort: numbers in the list; reverse: letters in the string
  // When > 0 (and below `length`): each example's length is drawn from min_length to length, most
  // of them short and a few long (a long tail, as real responses have).
  int min_length = 0;
  // addition: when > 0, each example's longer operand has min_digits to max_digits digits, most of
  // them few and some many (a long tail), and the other 1 up to as many.
  int min_digits = 0;
  // addition: the SFT response works the sum out column by column from the right ("8+6+0=14
  // 7+5+1=13 4+0+1=5 answer 534"), so responses grow with the operands; the answer is the sum.
  bool show_work = false;
};

// Names of the built-in tasks: addition, sort, reverse.
std::vector<std::string> text_task_names();
// `n` examples of a task, the same for the same seed on every machine. An unknown task or an
// option out of range is a ConfigError naming it.
std::vector<TextExample> make_text_task(const std::string& task, int64_t n, uint64_t seed, const TextTaskOptions& options = {});

// The examples of a verifiable task as another kind of dataset: "sft" (the answer is the
// response) or "preference" (the answer is chosen; rejected is the answer with one digit or
// letter changed, drawn from `seed`).
void set_kind(std::vector<TextExample>& examples, const std::string& kind, uint64_t seed);
std::string corrupt_answer(const std::string& answer, uint64_t seed);

// A JSONL dataset of one kind: "verifiable" ({"prompt", "answer"}), "sft" ({"prompt",
// "response"}) or "preference" ({"prompt", "chosen", "rejected"}). A malformed line or a missing
// field is a FormatError naming the file and line.
std::vector<TextExample> read_text_dataset(const std::filesystem::path& path, const std::string& kind);
std::string text_example_json(const TextExample& e, const std::string& kind);

// Rule-based rewards, each in [0, 1] unless noted.
// 1 when the response, trimmed, equals the answer, trimmed.
double exact_match_reward(const std::string& response, const std::string& answer);
// 1 when the last number in the response equals the answer's number within `tolerance`.
double numeric_match_reward(const std::string& response, const std::string& answer, double tolerance = 1e-6);
// Partial credit: 1 - (edit distance between the trimmed strings) / (the longer one's length), so a
// response one character off a long answer scores near 1, and an exact match 1.
double similarity_reward(const std::string& response, const std::string& answer);
// 1 when the whole response (trimmed) matches the ECMAScript regular expression `pattern`.
double format_reward(const std::string& response, const std::string& pattern);
// -coef per token past `limit` (0 within it).
double length_penalty(int64_t response_tokens, int64_t limit, double coef);

struct RewardQuery {
  std::string prompt, response, answer;
};
// An external reward program: `text` is the program and its arguments separated by spaces, run
// directly, or with `shell` a /bin/sh command line. It runs with `timeout_s` of wall time, and
// within `cpu_s` CPU seconds and `memory_mb` of address space (0: no limit).
struct RewardCommand {
  std::string text;
  bool shell = false;
  double timeout_s = 30, cpu_s = 0;
  int64_t memory_mb = 0;
};
// The first character of `text` only a shell would understand (a quote, `|`, `;`, `$`, `*`,
// ...), or 0: a command run without a shell must have none.
char shell_syntax(const std::string& text);
// Rewards from the program, so users write reward code in any language: it reads one JSON object
// {"prompt", "response", "answer"} per line on stdin and writes one {"score": x} per line on
// stdout, in order. A timeout, a non-zero exit, a limit reached, a malformed line or a wrong
// number of scores is an Error naming the command and what went wrong.
std::vector<double> command_rewards(const RewardCommand& command, const std::vector<RewardQuery>& queries);

}  // namespace flotilla::envs
