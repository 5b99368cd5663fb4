// Plays DeepMind's Hanabi Learning Environment (HLE) on fixed decks with random legal moves and
// writes what it gives, for tests/hanabi_test.cpp to replay with Flotilla's Hanabi.
//
//   HLE=path/to/hanabi_learning_environment/hanabi_lib
//   g++ -O2 -std=c++17 -I$HLE scripts/hanabi_reference.cc $HLE/*.cc -o /tmp/hanabi_reference
//   /tmp/hanabi_reference > tests/data/hanabi_reference.json
//   /tmp/hanabi_reference --speed [SECONDS]   (HLE's own speed, below)
//
// Each case deals a shuffled deck in order (the case records it, as --init-state takes it), then
// plays legal moves chosen at random (playable cards are played half the time they exist and
// other plays are rare, so games run on to the deck's end with a score),
// and records per move: the move's index, the reward (score change), whether the game ended, the
// legal moves of the player to move next, and every player's canonical observation as hex
// digits (four bits each, first bit highest).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "canonical_encoders.h"
#include "hanabi_game.h"
#include "hanabi_state.h"

using namespace hanabi_learning_env;

namespace {

struct Case {
  const char* env;
  int players, colors, hand_size, info, life;
  unsigned seed;
};

// The bits as hex digits, four bits each, the first bit the high bit of the first digit.
std::string bits(const std::vector<int>& v) {
  std::string out = "\"";
  for (size_t i = 0; i < v.size(); i += 4) {
    int d = 0;
    for (size_t k = 0; k < 4; ++k) d = d * 2 + (i + k < v.size() ? v[i + k] : 0);
    out += "0123456789abcdef"[d];
  }
  return out + "\"";
}

void deal(HanabiState& state, const std::vector<std::pair<int, int>>& deck, size_t& next) {
  while (state.CurPlayer() == kChancePlayerId) {
    const auto [c, r] = deck[next++];
    state.ApplyMove(HanabiMove(HanabiMove::kDeal, -1, -1, c, r));
  }
}

}  // namespace

// HLE's speed on one thread, 2 players of the full game, random legal moves (as rl_env deals:
// random chance outcomes), without observations and with the canonical encoding of every player
// after every move.
int speed(double seconds) {
  std::unordered_map<std::string, std::string> params = {{"players", "2"}, {"seed", "1"}};
  HanabiGame game(params);
  CanonicalObservationEncoder encoder(&game);
  std::mt19937 rng(1);
  for (bool encode : {false, true}) {
    long moves = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double elapsed = 0.0;
    while (elapsed < seconds) {
      HanabiState state(&game, 0);
      while (!state.IsTerminal()) {
        if (state.CurPlayer() == kChancePlayerId) {
          state.ApplyRandomChance();
          continue;
        }
        std::vector<HanabiMove> legal = state.LegalMoves(state.CurPlayer());
        state.ApplyMove(legal[std::uniform_int_distribution<size_t>(0, legal.size() - 1)(rng)]);
        while (state.CurPlayer() == kChancePlayerId) state.ApplyRandomChance();
        if (encode)
          for (int pl = 0; pl < 2; ++pl) encoder.Encode(HanabiObservation(state, pl));
        ++moves;
      }
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    std::printf("HLE, 2 players, %s: %.0f moves/s\n", encode ? "canonical encoding for both" : "no observations",
                moves / elapsed);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--speed") return speed(argc > 2 ? std::atof(argv[2]) : 3.0);
  const Case cases[] = {
      {"hanabi/full", 2, 5, 5, 8, 3, 1}, {"hanabi/full", 2, 5, 5, 8, 3, 2},     {"hanabi/full", 3, 5, 5, 8, 3, 3},
      {"hanabi/full", 5, 5, 4, 8, 3, 4}, {"hanabi/small", 2, 2, 2, 3, 1, 5},    {"hanabi/very_small", 3, 1, 2, 3, 1, 6},
  };
  const char* letters = "RYGWB";
  std::printf("{\"source\":\"Hanabi Learning Environment (DeepMind), played by scripts/hanabi_reference.cc\",\"cases\":[");
  bool first_case = true;
  for (const Case& k : cases) {
    std::unordered_map<std::string, std::string> params = {
        {"players", std::to_string(k.players)},     {"colors", std::to_string(k.colors)},
        {"ranks", "5"},                             {"hand_size", std::to_string(k.hand_size)},
        {"max_information_tokens", std::to_string(k.info)}, {"max_life_tokens", std::to_string(k.life)},
        {"seed", "1"}};
    HanabiGame game(params);
    CanonicalObservationEncoder encoder(&game);
    std::mt19937 rng(k.seed);
    std::vector<std::pair<int, int>> deck;
    for (int c = 0; c < k.colors; ++c)
      for (int r = 0; r < 5; ++r)
        for (int n = 0; n < game.NumberCardInstances(c, r); ++n) deck.push_back({c, r});
    std::shuffle(deck.begin(), deck.end(), rng);
    HanabiState state(&game, 0);
    size_t next = 0;
    deal(state, deck, next);
    std::printf("%s{\"env\":\"%s\",\"players\":%d,\"deck\":[", first_case ? "" : ",", k.env, k.players);
    first_case = false;
    for (size_t i = 0; i < deck.size(); ++i)
      std::printf("%s\"%c%d\"", i ? "," : "", letters[deck[i].first], deck[i].second + 1);
    auto observations = [&]() {
      std::string out = "[";
      for (int pl = 0; pl < k.players; ++pl)
        out += (pl ? "," : "") + bits(encoder.Encode(HanabiObservation(state, pl)));
      return out + "]";
    };
    auto legal = [&]() {
      std::string out = "[";
      bool first = true;
      for (const HanabiMove& m : state.LegalMoves(state.CurPlayer())) {
        out += (first ? "" : ",") + std::to_string(game.GetMoveUid(m));
        first = false;
      }
      return out + "]";
    };
    std::printf("],\"start\":{\"obs\":%s,\"legal\":%s},\"steps\":[", observations().c_str(), legal().c_str());
    bool first_step = true;
    while (!state.IsTerminal()) {
      std::vector<HanabiMove> moves = state.LegalMoves(state.CurPlayer()), good, other;
      const auto& hand = state.Hands()[state.CurPlayer()].Cards();
      for (const HanabiMove& m : moves) {
        if (m.MoveType() != HanabiMove::kPlay) other.push_back(m);
        else if (state.CardPlayableOnFireworks(hand[m.CardIndex()].Color(), hand[m.CardIndex()].Rank())) good.push_back(m);
      }
      std::uniform_real_distribution<double> u(0.0, 1.0);
      const std::vector<HanabiMove>& from = !good.empty() && u(rng) < 0.5 ? good : u(rng) < 0.1 || other.empty() ? moves : other;
      const HanabiMove move = from[std::uniform_int_distribution<size_t>(0, from.size() - 1)(rng)];
      const int before = state.Score();
      state.ApplyMove(move);
      deal(state, deck, next);
      const bool done = state.IsTerminal();
      std::printf("%s{\"move\":%d,\"reward\":%d,\"done\":%s,\"obs\":%s,\"legal\":%s}", first_step ? "" : ",",
                  game.GetMoveUid(move), state.Score() - before, done ? "true" : "false", observations().c_str(),
                  done ? "[]" : legal().c_str());
      first_step = false;
    }
    std::printf("],\"score\":%d,\"deck_left\":%d}", state.Score(), state.Deck().Size());
  }
  std::printf("]}\n");
  return 0;
}
