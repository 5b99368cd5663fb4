// Synthetic text tasks, JSONL datasets and rule-based rewards.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <regex>
#include <sstream>

#include "core/error.hpp"
#include "envs/text_tasks.hpp"
#include "support/cli.hpp"
#include "support/temp_dir.hpp"

using namespace flotilla;

TEST_CASE("synthetic_tasks_have_correct_answers_and_repeat_by_seed") {
  const auto add = envs::make_text_task("addition", 200, 7);
  const std::regex q(R"(What is (\d+) \+ (\d+)\?)");
  int multi_digit = 0;
  for (const auto& e : add) {
    std::smatch m;
    REQUIRE(std::regex_search(e.prompt, m, q));
    CHECK(std::stoll(e.answer) == std::stoll(m[1]) + std::stoll(m[2]));
    multi_digit += m[1].length() > 1 || m[2].length() > 1;
  }
  CHECK(multi_digit > 100);
  for (const auto& e : envs::make_text_task("sort", 50, 3, {4, 8})) {
    std::istringstream in(e.prompt.substr(e.prompt.find(':') + 1)), out(e.answer);
    std::vector<int> given, sorted;
    for (int x; in >> x;) given.push_back(x);
    for (int x; out >> x;) sorted.push_back(x);
    CHECK(given.size() == 8);
    std::sort(given.begin(), given.end());
    CHECK(given == sorted);
  }
  for (const auto& e : envs::make_text_task("reverse", 50, 3, {4, 10})) {
    const std::string s = e.prompt.substr(e.prompt.find(':') + 2, 10);
    CHECK(e.answer == std::string(s.rbegin(), s.rend()));
  }
  // The same seed gives the same examples; another seed others.
  CHECK(envs::make_text_task("addition", 5, 1)[4].prompt == envs::make_text_task("addition", 5, 1)[4].prompt);
  CHECK(envs::make_text_task("addition", 5, 1)[4].prompt != envs::make_text_task("addition", 5, 2)[4].prompt);
  CHECK_THROWS_AS(envs::make_text_task("division", 5, 1), ConfigError);
  CHECK_THROWS_AS(envs::make_text_task("sort", 5, 1, {4, 0}), ConfigError);
}

TEST_CASE("rule_based_rewards_score_responses") {
  CHECK(envs::exact_match_reward("  948\n", "948") == 1.0);
  CHECK(envs::exact_match_reward("948.", "948") == 0.0);
  CHECK(envs::numeric_match_reward("The answer is 948.", "948") == 1.0);
  CHECK(envs::numeric_match_reward("I think 12, no, 14", "14") == 1.0);  // the last number counts
  CHECK(envs::numeric_match_reward("no idea", "14") == 0.0);
  CHECK(envs::numeric_match_reward("3.1416", "3.14159", 1e-3) == 1.0);
  CHECK_THROWS_AS(envs::numeric_match_reward("3", "none"), ConfigError);
  CHECK(envs::similarity_reward(" abcd\n", "abcd") == 1.0);
  CHECK(envs::similarity_reward("abxd", "abcd") == doctest::Approx(0.75));   // one substitution
  CHECK(envs::similarity_reward("abd", "abcd") == doctest::Approx(0.75));    // one deletion
  CHECK(envs::similarity_reward("abcde", "abcd") == doctest::Approx(0.8));   // one insertion, over the longer
  CHECK(envs::similarity_reward("dcba", "abcd") == doctest::Approx(0.0));    // all four substituted
  CHECK(envs::similarity_reward("", "abcd") == 0.0);
  CHECK(envs::similarity_reward("", "") == 1.0);
  CHECK(envs::format_reward("<answer>42</answer>", "<answer>\\d+</answer>") == 1.0);
  CHECK(envs::format_reward("42", "<answer>\\d+</answer>") == 0.0);
  CHECK_THROWS_AS(envs::format_reward("x", "(unclosed"), ConfigError);
  CHECK(envs::length_penalty(10, 16, 0.1) == 0.0);
  CHECK(envs::length_penalty(20, 16, 0.1) == doctest::Approx(-0.4));
}

TEST_CASE("jsonl_datasets_read_each_kind_and_name_bad_lines") {
  test::TempDir dir;
  const auto v = envs::read_text_dataset(dir.write("v.jsonl", R"({"prompt":"1+1?","answer":"2"}
{"prompt":"2+2?","answer":"4"}
)"), "verifiable");
  REQUIRE(v.size() == 2);
  CHECK(v[1].answer == "4");
  CHECK(envs::read_text_dataset(dir.write("s.jsonl", R"({"prompt":"hi","response":"hello"})"), "sft")[0].response == "hello");
  const auto p = envs::read_text_dataset(dir.write("p.jsonl", R"({"prompt":"q","chosen":"good","rejected":"bad"})"), "preference");
  CHECK(p[0].rejected == "bad");
  try {
    envs::read_text_dataset(dir.write("bad.jsonl", "{\"prompt\":\"a\",\"answer\":\"b\"}\n{\"prompt\":\"c\"}\n"), "verifiable");
    FAIL("a line without its answer was accepted");
  } catch (const FormatError& e) {
    CHECK(std::string(e.what()).find("bad.jsonl:2: a verifiable example needs a string field 'answer'") != std::string::npos);
  }
  CHECK_THROWS_AS(envs::read_text_dataset(dir.write("junk.jsonl", "not json\n"), "sft"), FormatError);
  CHECK_THROWS_AS(envs::read_text_dataset(dir.write("empty.jsonl", "\n"), "sft"), FormatError);
  CHECK_THROWS_AS(envs::read_text_dataset(dir.write("x.jsonl", "{}"), "chat"), ConfigError);
}

TEST_CASE("cli_data_make_writes_a_verifiable_dataset") {
  test::TempDir dir;
  auto r = test::run_cli(FLOTILLA_TEST_CLI, {"data", "make", "sort", "--n", "25", "--seed", "4", "--length", "3", "--out", "d.jsonl"},
                         dir.path(), dir.path());
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto examples = envs::read_text_dataset(dir.path() / "d.jsonl", "verifiable");
  CHECK(examples.size() == 25);
  auto bad = test::run_cli(FLOTILLA_TEST_CLI, {"data", "make", "division"}, dir.path());
  CHECK(bad.code == 2);
}

TEST_CASE("command_rewards_run_a_user_program_over_jsonl") {
  std::vector<envs::RewardQuery> q;
  for (int i = 0; i < 300; ++i) q.push_back({"p" + std::to_string(i), i % 3 == 0 ? "yes" : "no", "yes"});
  auto shell = [](const std::string& text, double timeout = 10.0) {
    return envs::RewardCommand{.text = text, .shell = true, .timeout_s = timeout, .cpu_s = 0, .memory_mb = 0};
  };
  // A reward program in any language: here sh + sed, 1 when the response is "yes".
  const std::string cmd = R"(sed -e 's/.*"response":"yes".*/{"score": 1}/' -e 's/.*"response":"no".*/{"score": 0.25}/')";
  const std::vector<double> s = envs::command_rewards(shell(cmd), q);
  REQUIRE(s.size() == 300);
  for (int i = 0; i < 300; ++i) CHECK(s[i] == (i % 3 == 0 ? 1.0 : 0.25));
  auto fails_with = [&](const envs::RewardCommand& command, const std::string& part) {
    CAPTURE(command.text);
    try {
      envs::command_rewards(command, q);
      FAIL("the reward command's failure went unnoticed");
    } catch (const Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(part) != std::string::npos, e.what());
    }
  };
  fails_with(shell("sleep 5", 0.3), "no complete answer within");
  fails_with(shell("exit 3"), "reward command 'exit 3': exited with code 3");
  fails_with(shell("echo '{\"score\": 1}'"), "wrote 1 scores for 300 queries");
  fails_with(shell("cat > /dev/null; echo nonsense"), "output line 1 is not");
  fails_with(shell("head -c 10 > /dev/null; exit 0"), "wrote 0 scores");  // stops reading early: no SIGPIPE death
}

TEST_CASE("a_reward_command_runs_without_a_shell_and_within_its_limits") {
  test::TempDir dir;
  std::vector<envs::RewardQuery> q(8, {"p", "r", "a"});
  auto command = [&](const std::string& text, double cpu_s = 0, int64_t memory_mb = 0) {
    return envs::RewardCommand{.text = text, .shell = false, .timeout_s = 60, .cpu_s = cpu_s, .memory_mb = memory_mb};
  };
  // No shell: the words are the program and its arguments.
  const auto score = dir.write("score.sh", "while read line; do echo '{\"score\": 0.5}'; done\n");
  CHECK(envs::command_rewards(command(std::string("sh  ") + score.string()), q) == std::vector<double>(8, 0.5));
  CHECK(envs::shell_syntax("python3 score.py --scale=2 data/x.jsonl") == 0);
  CHECK(envs::shell_syntax("python3 score.py | tee log") == '|');
  CHECK(envs::shell_syntax("python3 $HOME/score.py") == '$');
  CHECK_THROWS_WITH_AS(envs::command_rewards(command(std::string("sh ") + score.string() + " > log"), q),
                       doctest::Contains("'>', which only a shell understands; set reward.shell: true"), Error);
  // A program that spins past its CPU seconds is stopped long before the wall-time limit.
  const auto t0 = std::chrono::steady_clock::now();
  const auto spin = dir.write("spin.sh", "while :; do :; done\n");
  CHECK_THROWS_WITH_AS(envs::command_rewards(command(std::string("sh ") + spin.string(), 1), q), doctest::Contains("past its limit of 1 CPU seconds"),
                       Error);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30));
  // One that allocates past its address space fails instead of taking the machine's memory.
  const auto hog = dir.write("hog.py", "b = bytearray(1 << 30)\n");
  CHECK_THROWS_WITH_AS(envs::command_rewards(command(std::string("/usr/bin/python3 ") + hog.string(), 0, 256), q),
                       doctest::Contains("exited with code 1"), Error);
  const auto small = dir.write("small.py", "b = bytearray(1 << 20)\n");
  CHECK_THROWS_WITH_AS(envs::command_rewards(command(std::string("/usr/bin/python3 ") + small.string(), 0, 256), q),
                       doctest::Contains("wrote 0 scores for 8"), Error);  // it ran, within the limit, and scored nothing
}

TEST_CASE("long_tailed_list_lengths_stay_in_range_and_are_mostly_short") {
  envs::TextTaskOptions o;
  o.length = 24;
  o.min_length = 2;
  const auto a = envs::make_text_task("sort", 2000, 1, o);
  CHECK(a.front().answer == envs::make_text_task("sort", 2000, 1, o).front().answer);  // the same for a seed
  std::vector<int> lengths;
  for (const auto& e : a) {
    int words = 1;
    for (char c : e.answer) words += c == ' ';
    lengths.push_back(words);
  }
  CHECK(*std::min_element(lengths.begin(), lengths.end()) == 2);
  CHECK(*std::max_element(lengths.begin(), lengths.end()) == 24);
  std::sort(lengths.begin(), lengths.end());
  CHECK(lengths[lengths.size() / 2] <= 5);            // the median list is short
  CHECK(lengths[lengths.size() * 95 / 100] >= 16);   // and a tail is long
  o.min_length = 30;
  CHECK_THROWS_WITH_AS(envs::make_text_task("reverse", 1, 1, o), doctest::Contains("min_length 30 is above length 24"), ConfigError);
}

TEST_CASE("addition_with_work_shown_has_long_tailed_responses_that_end_in_the_sum") {
  envs::TextTaskOptions o;
  o.max_digits = 8, o.min_digits = 1, o.show_work = true;
  const auto xs = envs::make_text_task("addition", 2000, 5, o);
  const std::regex q(R"(What is (\d+) \+ (\d+)\? Show your work\.\n)"), column(R"((\d)\+(\d)\+([01])=(\d+) )");
  std::vector<size_t> lengths;
  for (const auto& e : xs) {
    std::smatch m;
    REQUIRE(std::regex_match(e.prompt, m, q));
    const std::string a = m[1], b = m[2];
    CHECK(std::stoll(e.answer) == std::stoll(a) + std::stoll(b));
    // One column per digit of the longer operand, right to left, each with the carry of the last.
    int carry = 0;
    size_t k = 0;
    for (auto it = std::sregex_iterator(e.response.begin(), e.response.end(), column); it != std::sregex_iterator(); ++it, ++k) {
      const auto& c = *it;
      const int x = k < a.size() ? a[a.size() - 1 - k] - '0' : 0, y = k < b.size() ? b[b.size() - 1 - k] - '0' : 0;
      CHECK(std::stoi(c[1]) == x);
      CHECK(std::stoi(c[2]) == y);
      CHECK(std::stoi(c[3]) == carry);
      CHECK(std::stoi(c[4]) == x + y + carry);
      carry = (x + y + carry) / 10;
    }
    CHECK(k == std::max(a.size(), b.size()));
    CHECK(e.response.substr(e.response.rfind(' ') + 1) == e.answer);  // the response's last number is the sum
    CHECK(envs::numeric_match_reward(e.response, e.answer) == 1.0);
    lengths.push_back(e.response.size());
  }
  // Most responses short, a few long: the median well under the mean of the shortest and longest.
  std::sort(lengths.begin(), lengths.end());
  CHECK(lengths[lengths.size() / 2] * 2 < lengths.front() + lengths.back());
  CHECK(lengths.back() >= 8 * 9);  // some 8-digit sums made it
  // Without the options, addition's examples are as before (datasets made earlier stay the same).
  CHECK(envs::make_text_task("addition", 1, 1, {2})[0].prompt == "What is 2 + 6? Answer with the number only.\n");
  o.min_digits = 9;
  CHECK_THROWS_AS(envs::make_text_task("addition", 5, 1, o), ConfigError);
}
