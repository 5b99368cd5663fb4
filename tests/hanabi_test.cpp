// Hanabi: hints, plays, discards, tokens, lives, the deck's end and the last round at hand-built
// deals; the canonical encoding's sections; legal-move masks; and replays of games played by
// DeepMind's Hanabi Learning Environment (tests/data/hanabi_reference.json, written by
// scripts/hanabi_reference.cc).
//
// Two full-game players: moves 0-4 discard, 5-9 play, 10-14 hint a color (R Y G W B), 15-19 hint a
// rank, 20 the no-op. The encoding (658 bits): the other hand 0-124, short hands 125-126, deck
// 127-166, fireworks 167-191, tokens 192-199, lives 200-202, discards 203-252, the last move
// 253-307 (player, type, target, color, rank, revealed cards, position, card, scored, token),
// card knowledge 308-657 (own hand first, 35 bits a card).
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/multi_agent.hpp"
#include "support/torch_doctest.hpp"

using namespace flotilla;

namespace {

std::unique_ptr<envs::MultiAgentVecEnv> make(const std::string& id, int players = 2, int64_t envs = 1, int threads = 1) {
  core::Config c(core::ConfigTree::load_string("players: " + std::to_string(players), "params"));
  core::ConfigView v = c.root();
  envs::EnvOptions o;
  o.num_envs = envs;
  o.threads = threads;
  auto env = envs::make_multi_agent_env(id, o, &v);
  env->reset(1);
  return env;
}

// A deck for `colors` colors starting with `first`, the rest in order.
std::string deck(const std::vector<std::string>& first, int colors = 5) {
  std::map<std::string, int> left;
  const std::string letters = "RYGWB";
  std::vector<std::string> order;
  for (int c = 0; c < colors; ++c)
    for (int r = 1; r <= 5; ++r) {
      const std::string card = std::string(1, letters[c]) + std::to_string(r);
      left[card] = r == 1 ? 3 : r == 5 ? 1 : 2;
      order.push_back(card);
    }
  nlohmann::json d = nlohmann::json::array();
  for (const auto& card : first) {
    --left[card];
    d.push_back(card);
  }
  for (const auto& card : order)
    for (int k = 0; k < left[card]; ++k) d.push_back(card);
  return nlohmann::json{{"deck", d}}.dump();
}

// Player 0 holds R1 R2 Y1 W5 B3, player 1 G1 R1 Y2 B1 W1.
const std::vector<std::string> kHands = {"R1", "R2", "Y1", "W5", "B3", "G1", "R1", "Y2", "B1", "W1"};

at::Tensor turn(int64_t current, int64_t move, int players = 2, int64_t noop = 20) {
  std::vector<int64_t> a(players, noop);
  a[current] = move;
  return at::tensor(a, at::kLong).reshape({1, players});
}

int bit(const envs::MultiAgentVecEnv& env, int player, int index) { return env.obs()[0][player][index].item<int>(); }
int bits(const envs::MultiAgentVecEnv& env, int player, int from, int count) {
  return env.obs()[0][player].narrow(0, from, count).sum().item<int>();
}
float reward(const envs::MultiAgentVecEnv& env) { return env.reward()[0][0].item<float>(); }
std::vector<int64_t> legal(const envs::MultiAgentVecEnv& env, int player) {
  std::vector<int64_t> out;
  at::Tensor m = env.avail_actions()[0][player];
  for (int64_t k = 0; k < m.size(0); ++k)
    if (m[k].item<bool>()) out.push_back(k);
  return out;
}

}  // namespace

TEST_CASE("hanabi_start_has_full_tokens_the_other_hand_and_legal_moves") {
  auto env = make("hanabi/full");
  env->set_state_json(0, deck(kHands));
  CHECK(env->spec().agents[0].observation.numel() == 658);
  CHECK(env->spec().agents[0].action.n == 21);
  CHECK((env->obs().scalar_type() == at::kByte));
  CHECK(bit(*env, 0, 0 * 25 + 2 * 5 + 0) == 1);  // player 1's first card, G1
  CHECK(bit(*env, 0, 4 * 25 + 3 * 5 + 0) == 1);  // its last, W1
  CHECK(bit(*env, 1, 3 * 25 + 3 * 5 + 4) == 1);  // player 0's W5, seen by player 1
  CHECK(bits(*env, 0, 0, 125) == 5);
  CHECK(bits(*env, 0, 125, 2) == 0);   // no short hands
  CHECK(bits(*env, 0, 127, 40) == 40);  // 40 cards in the deck
  CHECK(bits(*env, 0, 167, 25) == 0);
  CHECK(bits(*env, 0, 192, 8) == 8);
  CHECK(bits(*env, 0, 200, 3) == 3);
  CHECK(bits(*env, 0, 253, 55) == 0);   // no move yet
  CHECK(bits(*env, 0, 308, 25) == 25);  // nothing known about a card: all 25 plausible
  // Discards are illegal with 8 tokens; hints must touch a card (player 1 has no 3, 4 or 5).
  CHECK(legal(*env, 0) == std::vector<int64_t>{5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
  CHECK(legal(*env, 1) == std::vector<int64_t>{20});  // not its turn: the no-op only
  // The global state: both hands, whose turn it is.
  CHECK(env->spec().state.numel() == 2 * 125 + 2);
  CHECK(env->global_state()[0][0 * 25 + 0].item<int>() == 1);    // player 0's R1
  CHECK(env->global_state()[0][9 * 25 + 15].item<int>() == 1);   // player 1's W1
  CHECK(env->global_state()[0].narrow(0, 0, 250).sum().item<int>() == 10);
  CHECK(env->global_state()[0][250].item<int>() == 1);
  env->step(turn(0, 15));
  CHECK(env->global_state()[0][251].item<int>() == 1);
}

TEST_CASE("hanabi_hints_cost_a_token_and_narrow_card_knowledge") {
  auto env = make("hanabi/full");
  env->set_state_json(0, deck(kHands));
  env->step(turn(0, 15));  // player 0 tells player 1 its ones
  CHECK(reward(*env) == 0.0f);
  CHECK(bits(*env, 0, 192, 8) == 7);
  // Player 1's own knowledge: cards 0, 1, 3, 4 are ones (every color still plausible), card 2 is not.
  CHECK(bits(*env, 1, 308, 25) == 5);
  CHECK(bit(*env, 1, 308 + 2 * 5 + 0) == 1);
  CHECK(bit(*env, 1, 308 + 25 + 5 + 0) == 1);  // rank 1 revealed
  CHECK(bits(*env, 1, 308 + 25, 5) == 0);     // no color revealed
  CHECK(bits(*env, 1, 308 + 2 * 35, 25) == 20);
  CHECK(bits(*env, 1, 308 + 2 * 35 + 25, 10) == 0);
  // Player 0 sees the same about player 1's hand, after its own.
  CHECK(bits(*env, 0, 308 + 5 * 35, 25) == 5);
  // The last move, relative to player 1: by the player one seat on, a rank hint to itself.
  CHECK(bit(*env, 1, 253 + 1) == 1);
  CHECK(bit(*env, 1, 255 + 3) == 1);
  CHECK(bit(*env, 1, 259 + 0) == 1);
  CHECK(bit(*env, 1, 266 + 0) == 1);
  CHECK(bits(*env, 1, 271, 5) == 4);
  CHECK(bit(*env, 1, 273) == 0);
  CHECK(bit(*env, 0, 253 + 0) == 1);  // player 0 made it
  CHECK(bit(*env, 0, 259 + 1) == 1);
  CHECK(legal(*env, 0) == std::vector<int64_t>{20});
  CHECK(legal(*env, 1).front() == 0);  // discards are legal below 8 tokens
  // A color hint.
  env->step(turn(1, 10));  // player 1 tells player 0 its reds
  CHECK(bits(*env, 0, 308, 25) == 5);  // R, any rank
  CHECK(bit(*env, 0, 308 + 25 + 0) == 1);
  CHECK(bits(*env, 0, 308 + 2 * 35, 25) == 20);  // Y1: not red
  CHECK(bits(*env, 0, 192, 8) == 6);
}

TEST_CASE("hanabi_plays_build_fireworks_and_misplays_cost_lives") {
  auto env = make("hanabi/full");
  env->set_state_json(0, deck(kHands));
  env->step(turn(0, 5));  // R1: playable
  CHECK(reward(*env) == 1.0f);
  CHECK(reward(*env) == env->reward()[0][1].item<float>());
  CHECK(bit(*env, 1, 167 + 0 * 5 + 0) == 1);
  CHECK(bits(*env, 1, 127, 40) == 39);  // a card drawn
  // Player 0's hand moved down (R2 Y1 W5 B3) and drew the deck's next card last.
  CHECK(bit(*env, 1, 0 * 25 + 0 * 5 + 1) == 1);
  CHECK(bit(*env, 1, 2 * 25 + 3 * 5 + 4) == 1);
  CHECK(bit(*env, 1, 253 + 1) == 1);
  CHECK(bit(*env, 1, 255 + 0) == 1);       // a play
  CHECK(bit(*env, 1, 276 + 0) == 1);       // of card 0
  CHECK(bit(*env, 1, 281 + 0) == 1);       // R1
  CHECK(bit(*env, 1, 306) == 1);           // scored
  CHECK(bit(*env, 1, 307) == 0);
  env->step(turn(1, 8));  // B1 (player 1's card 3): playable
  CHECK(reward(*env) == 1.0f);
  env->step(turn(0, 7));  // W5 (now card 2): a misplay
  CHECK(reward(*env) == 0.0f);
  CHECK(bits(*env, 0, 200, 3) == 2);
  CHECK(bit(*env, 0, 203 + 30 + 9) == 1);  // W5 in the discards
  CHECK(bit(*env, 1, 306) == 0);
  CHECK_FALSE(env->terminated()[0].item<bool>());
  env->step(turn(1, 15));  // a hint: 7 tokens
  env->step(turn(0, 0));   // a discard below 8 tokens gains one (R2, player 0's first card)
  CHECK(bits(*env, 1, 192, 8) == 8);
  CHECK(bit(*env, 1, 203 + 3) == 1);
  CHECK(bit(*env, 1, 255 + 1) == 1);
  CHECK(bit(*env, 1, 307) == 0);  // the token bit is for plays only
  // Three misplays: out of lives, the score falls to 0 and the game ends.
  env = make("hanabi/full");
  env->set_state_json(0, deck({"R2", "R3", "R4", "Y3", "Y4", "G1", "G2", "G3", "G4", "G5"}));
  env->step(turn(0, 5));
  env->step(turn(1, 5));  // G1: playable, score 1
  CHECK(reward(*env) == 1.0f);
  env->step(turn(0, 5));
  env->step(turn(1, 5));  // G2, score 2
  env->step(turn(0, 5));  // the third misplay
  CHECK(env->terminated()[0].item<bool>());
  CHECK(reward(*env) == -2.0f);  // the score it had is lost
  CHECK(env->episode_return()[0][0].item<float>() == 0.0f);
}

TEST_CASE("hanabi_the_deck_running_out_leaves_each_player_one_turn") {
  // Very small: one color, hands of 2, 3 tokens, 1 life; moves 0-1 discard, 2-3 play, 4 hint the
  // color, 5-9 hint a rank, 10 the no-op. Six cards stay in the deck after the deal.
  auto env = make("hanabi/very_small");
  env->set_state_json(0, deck({"R1", "R1", "R1", "R2"}, 1));
  CHECK(env->spec().agents[0].observation.numel() ==
        (1 * 2 * 5 + 2) + (6 + 5 + 3 + 1) + 10 + (2 + 4 + 2 + 1 + 5 + 2 + 2 + 5 + 2) + 2 * 2 * 11);
  for (int k = 0; k < 6; ++k) {
    env->step(turn(0, 4, 2, 10));  // a hint
    env->step(turn(1, 0, 2, 10));  // a discard, which draws
  }
  CHECK_FALSE(env->terminated()[0].item<bool>());
  CHECK(bits(*env, 0, 12, 6) == 0);  // the deck is empty
  env->step(turn(0, 4, 2, 10));
  CHECK_FALSE(env->terminated()[0].item<bool>());
  env->step(turn(1, 0, 2, 10));  // the last turn: a discard with nothing to draw
  CHECK(env->terminated()[0].item<bool>());
  CHECK(env->episode_length()[0].item<int>() == 14);
  // The final view: player 1's hand is one card short.
  CHECK(env->final_obs()[0][0][10 + 1].item<int>() == 1);
  CHECK(env->final_obs()[0][0][10 + 0].item<int>() == 0);
}

TEST_CASE("hanabi_illegal_moves_are_rejected_with_the_env_and_the_legal_ones") {
  auto env = make("hanabi/full", 2, 3);
  env->set_state_json(1, deck(kHands));
  at::Tensor a = at::full({3, 2}, 20, at::kLong);
  a.select(1, 0).fill_(5);
  a[1][0] = 0;  // a discard with 8 tokens
  CHECK_THROWS_WITH(env->step(a), doctest::Contains("env 1, agent 'player_0': action 0 is not legal now (legal: 5, 6,"));
  a[1][0] = 5;
  a[2][1] = 5;  // not player 1's turn
  CHECK_THROWS_WITH(env->step(a), doctest::Contains("env 2, agent 'player_1': action 5 is not legal now (legal: 20)"));
  a[2][1] = 21;
  CHECK_THROWS_WITH(env->step(a), doctest::Contains("action 21 is outside Discrete(21)"));
  a[2][1] = 20;
  env->step(a);  // nothing was applied before: the batch steps
  CHECK(env->reward()[1][0].item<float>() == 1.0f);
  CHECK_THROWS_WITH(env->set_state_json(0, R"({"deck":["R1"]})"), doctest::Contains("the deck has 50 cards, got 1"));
  std::string twice = deck({"R5", "R1"});
  twice.replace(twice.find("\"R5\",\"R1\""), 9, "\"R5\",\"R5\"");
  CHECK_THROWS_WITH(env->set_state_json(0, twice), doctest::Contains("deck[1] R5 is one more than the deck holds"));
  CHECK_THROWS_WITH(env->set_state_json(0, R"({"deck":["Q1"]})"), doctest::Contains("the deck has 50 cards"));
  std::string bad = deck({});
  bad.replace(bad.find("\"R1\""), 4, "\"P1\"");
  CHECK_THROWS_WITH(env->set_state_json(0, bad), doctest::Contains("deck[0] must be a card like \"R1\""));
}

TEST_CASE("hanabi_sizes_follow_players_and_variants") {
  CHECK(make("hanabi/full", 3)->spec().obs_dim() == 956);
  CHECK(make("hanabi/full", 4)->spec().obs_dim() == 1041);
  CHECK(make("hanabi/full", 5)->spec().obs_dim() == 1280);
  CHECK(make("hanabi/full", 5)->spec().agents[0].action.n == 2 * 4 + 4 * 10 + 1);
  CHECK(make("hanabi/small")->spec().agents[0].action.n == 2 * 2 + 2 + 5 + 1);
  CHECK_THROWS_AS(make("hanabi/full", 6), ConfigError);
}

TEST_CASE("hanabi_replays_the_hle_games") {
  const auto path = std::filesystem::path(FLOTILLA_SOURCE_DIR) / "tests/data/hanabi_reference.json";
  const nlohmann::json ref = nlohmann::json::parse(core::read_file(path));
  REQUIRE(ref["cases"].size() == 6);
  for (const auto& c : ref["cases"]) {
    const std::string id = c["env"];
    const int players = c["players"];
    CAPTURE(id);
    CAPTURE(players);
    auto env = make(id, players);
    env->set_state_json(0, nlohmann::json{{"deck", c["deck"]}}.dump());
    const int64_t O = env->spec().obs_dim(), K = env->spec().avail_dim();
    auto decode = [&](const std::string& hex) {
      std::vector<uint8_t> v(hex.size() * 4);
      for (size_t i = 0; i < hex.size(); ++i) {
        const int d = hex[i] <= '9' ? hex[i] - '0' : hex[i] - 'a' + 10;
        for (int k = 0; k < 4; ++k) v[4 * i + k] = (d >> (3 - k)) & 1;
      }
      v.resize(O);
      return v;
    };
    auto ours = [&](const at::Tensor& obs, int pl) {
      at::Tensor o = obs[0][pl].contiguous();
      return std::vector<uint8_t>(o.data_ptr<uint8_t>(), o.data_ptr<uint8_t>() + O);
    };
    auto check_legal = [&](const nlohmann::json& want, int t) {
      std::vector<int64_t> moves = want.get<std::vector<int64_t>>();
      int cur = -1;
      for (int pl = 0; pl < players; ++pl)
        if (!env->avail_actions()[0][pl][K - 1].item<bool>()) cur = pl;
      REQUIRE_MESSAGE(cur >= 0, "step " << t);
      CHECK_MESSAGE(legal(*env, cur) == moves, "step " << t);
      return cur;
    };
    for (int pl = 0; pl < players; ++pl) CHECK(ours(env->obs(), pl) == decode(c["start"]["obs"][pl]));
    int cur = check_legal(c["start"]["legal"], 0), t = 0;
    float total = 0.0f;
    for (const auto& s : c["steps"]) {
      ++t;
      env->step(turn(cur, s["move"].get<int64_t>(), players, K - 1));
      const bool done = s["done"];
      CHECK_MESSAGE(reward(*env) == s["reward"].get<float>(), "step " << t);
      CHECK_MESSAGE(env->terminated()[0].item<bool>() == done, "step " << t);
      total += reward(*env);
      const at::Tensor& obs = done ? env->final_obs() : env->obs();
      for (int pl = 0; pl < players; ++pl)
        CHECK_MESSAGE(ours(obs, pl) == decode(s["obs"][pl]), "step " << t << ", player " << pl);
      if (done) break;
      cur = check_legal(s["legal"], t);
    }
    CHECK(t == static_cast<int>(c["steps"].size()));
    CHECK(total == c["score"].get<float>());
    CHECK(env->episode_return()[0][0].item<float>() == c["score"].get<float>());
  }
}

TEST_CASE("hanabi_deals_follow_the_seed_and_not_the_threads") {
  auto a = make("hanabi/full", 2, 33, 1), b = make("hanabi/full", 2, 33, 3);
  CHECK(at::equal(a->obs(), b->obs()));
  CHECK_FALSE(at::equal(a->obs()[0], a->obs()[1]));  // each env its own deal
  // Random legal moves from the masks, the same in both batches.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (int t = 0; t < 300; ++t) {
    at::Tensor moves = at::multinomial(a->avail_actions().reshape({-1, 21}).to(at::kFloat), 1, false, gen).view({33, 2});
    a->step(moves);
    b->step(moves);
  }
  CHECK(at::equal(a->obs(), b->obs()));
  CHECK(at::equal(a->episode_return(), b->episode_return()));
  auto c = make("hanabi/full", 2, 33, 1);
  c->reset(2);
  CHECK_FALSE(at::equal(c->obs(), make("hanabi/full", 2, 33, 1)->obs()));
}
