#pragma once
// Hanabi with the rules and canonical observation of DeepMind's Hanabi Learning Environment
// (HLE): 2 to 5 players, a deck of `colors` x (3 ones, 2 each of the middle ranks, 1 of the
// highest), hands of 5 cards (4 with 4 or 5 players), 8 information tokens and 3 lives in the full
// game; "small" is 2 colors, hands of 2, 3 tokens and 1 life; "very small" is 1 color of those.
//
// Turn-based on a simultaneous-action batch: every agent acts each step, and only the current
// player's action counts; the others' one legal action is the no-op (the last index). A move's
// index is HLE's: discard card i (i < H), play card i (H + i), reveal color c to the player at
// offset o (2H + (o - 1) C + c), reveal rank r (2H + (P - 1) C + (o - 1) R + r). Legal moves as
// HLE: discards while tokens are below the maximum, hints cost a token and must touch at least
// one card, a misplay costs a life and the card goes to the discards, completing a color's
// firework returns a token. A played or discarded card is replaced from the deck (the hand's later
// cards move down, the new card goes last); once the deck is empty each player has one more turn.
// The game ends with no lives left (score 0), all fireworks complete, or that last round. The
// reward, shared, is the change of the score (its sum is the final score).
//
// Observation, per player, HLE's canonical vector encoding (CanonicalObservationEncoder, card
// knowledge type) as bytes, observer-relative: other hands, missing-card bits, deck size,
// fireworks, tokens, lives, discards, the last non-deal move, and every hand's card knowledge
// (plausible cards, revealed color and rank). 658 bits for 2 full-game players.
// The global state is what the observations hide: every hand's cards (one-hot, player 0's first)
// and the current player (one-hot); a critic reads it beside the agent's own observation
// (model.critic: agent_specific, as MAPPO's agent-specific global state).
//
// One env's state, as bytes (see layout()): the current player, tokens, lives, turns left
// after the deck ran out, the deck position; fireworks; the last move; discard counts; hands
// (card = color * ranks + rank, -1 empty) and their knowledge (per card: plausible colors as bits,
// +32 once the color was revealed; the same for ranks); the deck's order; the step's reward.
#include <cstdint>
#include <string>

#include "kernels/multi_agent_batch.hpp"

namespace flotilla::envs::hanabi {

constexpr int kMaxPlayers = 5, kMaxColors = 5, kMaxRanks = 5, kMaxHand = 5, kMaxDeck = 50;
constexpr int kHinted = 32;
enum MoveType : int32_t { Play = 0, Discard = 1, RevealColor = 2, RevealRank = 3 };

struct Params {
  int32_t agents = 2;  // players
  int32_t colors = 5, ranks = 5, hand_size = 5, max_info = 8, max_life = 3;
  int32_t deck_size = 50;
  int32_t moves = 20;  // HLE's move count; the no-op is index `moves`
  // Canonical encoding offsets and width.
  int32_t off_board = 0, off_discards = 0, off_last = 0, off_knowledge = 0, obs_dim = 0;
  // State variable offsets.
  int32_t v_fireworks = 0, v_last = 0, v_discards = 0, v_hands = 0, v_knowledge = 0, v_deck = 0, v_reward = 0, vars = 0;
};

FLOTILLA_HD int instances(const Params& p, int rank) { return rank == 0 ? 3 : rank == p.ranks - 1 ? 1 : 2; }

// Fills the derived sizes of `p` from players, colors, ranks, hand size and tokens.
inline void layout(Params& p) {
  const int P = p.agents, C = p.colors, R = p.ranks, H = p.hand_size, CR = C * R;
  p.deck_size = 0;
  for (int r = 0; r < R; ++r) p.deck_size += C * instances(p, r);
  p.moves = 2 * H + (P - 1) * (C + R);
  p.off_board = (P - 1) * H * CR + P;
  p.off_discards = p.off_board + (p.deck_size - P * H) + CR + p.max_info + p.max_life;
  p.off_last = p.off_discards + p.deck_size;
  p.off_knowledge = p.off_last + P + 4 + P + C + R + H + H + CR + 2;
  p.obs_dim = p.off_knowledge + P * H * (CR + C + R);
  p.v_fireworks = 5;
  p.v_last = p.v_fireworks + C;
  p.v_discards = p.v_last + 10;
  p.v_hands = p.v_discards + CR;
  p.v_knowledge = p.v_hands + P * H;
  p.v_deck = p.v_knowledge + 2 * P * H;
  p.v_reward = p.v_deck + p.deck_size;
  p.vars = p.v_reward + 1;
}

struct Hanabi {
  using Params = hanabi::Params;
  using State = int8_t;  // every variable fits a byte: cards, bit sets, counts, tokens
  static constexpr bool kEnvMajorState = true;  // ~160 variables an env: keep them in 3 cache lines
  using StateRef = kernels::StateRefOf<State>;
  using Obs = uint8_t;
  // Scalars at the front of the state.
  enum Var { Cur = 0, Info = 1, Life = 2, TurnsLeft = 3, DeckPos = 4 };
  // The last move, from v_last: its player (-1: none yet), type, target player, color, rank,
  // revealed-cards bitmask, card position, card, scored, token gained.
  enum Last { LPlayer, LType, LTarget, LColor, LRank, LReveal, LPosition, LCard, LScored, LToken };

  FLOTILLA_HD static int64_t state_vars(const Params& p) { return p.vars; }
  FLOTILLA_HD static int state_dim(const Params& p) { return p.agents * p.hand_size * p.colors * p.ranks + p.agents; }
  FLOTILLA_HD static int get(StateRef s, int k) { return static_cast<int>(s[k]); }
  FLOTILLA_HD static State& card(const Params& p, StateRef s, int player, int slot) { return s[p.v_hands + player * p.hand_size + slot]; }
  FLOTILLA_HD static State& color_know(const Params& p, StateRef s, int player, int slot) {
    return s[p.v_knowledge + 2 * (player * p.hand_size + slot)];
  }
  FLOTILLA_HD static State& rank_know(const Params& p, StateRef s, int player, int slot) {
    return s[p.v_knowledge + 2 * (player * p.hand_size + slot) + 1];
  }
  FLOTILLA_HD static int hand_count(const Params& p, StateRef s, int player) {
    int n = 0;
    while (n < p.hand_size && card(p, s, player, n) >= 0) ++n;
    return n;
  }
  FLOTILLA_HD static int score(const Params& p, StateRef s) {
    if (get(s, Life) <= 0) return 0;
    int total = 0;
    for (int c = 0; c < p.colors; ++c) total += get(s, p.v_fireworks + c);
    return total;
  }

  // Deals the next card of the deck to the end of `player`'s hand, if any is left.
  FLOTILLA_HD static void draw(const Params& p, StateRef s, int player, int slot) {
    const int pos = get(s, DeckPos);
    if (pos >= p.deck_size) return;
    card(p, s, player, slot) = s[p.v_deck + pos];
    color_know(p, s, player, slot) = (1 << p.colors) - 1;
    rank_know(p, s, player, slot) = (1 << p.ranks) - 1;
    s[DeckPos] = pos + 1;
  }

  FLOTILLA_HD static void reset(const Params& p, StateRef s, kernels::EnvRng& rng) {
    // The deck in a uniformly random order (Fisher-Yates), dealt from the front.
    int n = 0;
    for (int c = 0; c < p.colors; ++c)
      for (int r = 0; r < p.ranks; ++r)
        for (int k = 0; k < instances(p, r); ++k) s[p.v_deck + n++] = c * p.ranks + r;
    for (int i = n - 1; i > 0; --i) {
      const int j = static_cast<int>((static_cast<uint64_t>(rng.next_u32()) * static_cast<uint64_t>(i + 1)) >> 32);
      const State t = s[p.v_deck + i];
      s[p.v_deck + i] = s[p.v_deck + j];
      s[p.v_deck + j] = t;
    }
    start(p, s);
  }

  // A new game on the deck already in the state: tokens, empty board, hands dealt player by player.
  FLOTILLA_HD static void start(const Params& p, StateRef s) {
    s[Cur] = 0;
    s[Info] = p.max_info;
    s[Life] = p.max_life;
    s[TurnsLeft] = p.agents;
    s[DeckPos] = 0;
    for (int c = 0; c < p.colors; ++c) s[p.v_fireworks + c] = 0;
    for (int k = 0; k < 10; ++k) s[p.v_last + k] = 0;
    s[p.v_last + LPlayer] = -1;
    for (int k = 0; k < p.colors * p.ranks; ++k) s[p.v_discards + k] = 0;
    for (int pl = 0; pl < p.agents; ++pl)
      for (int slot = 0; slot < p.hand_size; ++slot) draw(p, s, pl, slot);
    s[p.v_reward] = 0;
  }

  // Whether move `m` is legal for the current player.
  FLOTILLA_HD static bool legal(const Params& p, StateRef s, int m) {
    const int H = p.hand_size, cur = get(s, Cur);
    if (m < 0 || m >= p.moves) return false;
    if (m < 2 * H) {
      if (m < H && get(s, Info) >= p.max_info) return false;
      return card(p, s, cur, m % H) >= 0;
    }
    if (get(s, Info) <= 0) return false;
    int u = m - 2 * H;
    const bool color = u < (p.agents - 1) * p.colors;
    if (!color) u -= (p.agents - 1) * p.colors;
    const int width = color ? p.colors : p.ranks;
    const int target = (cur + 1 + u / width) % p.agents, value = u % width;
    for (int slot = 0; slot < H; ++slot) {
      const int cd = static_cast<int>(card(p, s, target, slot));
      if (cd >= 0 && (color ? cd / p.ranks : cd % p.ranks) == value) return true;
    }
    return false;
  }

  // Removes `slot` from `player`'s hand (later cards move down) and draws into the freed end.
  FLOTILLA_HD static void replace(const Params& p, StateRef s, int player, int slot) {
    const int n = hand_count(p, s, player);
    for (int k = slot; k + 1 < n; ++k) {
      card(p, s, player, k) = card(p, s, player, k + 1);
      color_know(p, s, player, k) = color_know(p, s, player, k + 1);
      rank_know(p, s, player, k) = rank_know(p, s, player, k + 1);
    }
    card(p, s, player, n - 1) = -1;
    draw(p, s, player, n - 1);
  }

  FLOTILLA_HD static void step(const Params& p, StateRef s, kernels::AgentActions actions, float* reward, bool* agent_done,
                               bool& terminated, float& won) {
    const int cur = get(s, Cur), H = p.hand_size, m = static_cast<int>(actions.discrete(cur));
    const int before = score(p, s);
    if (legal(p, s, m)) {  // the batch checks masks on the CPU; a CUDA batch skips an illegal move
      if (get(s, DeckPos) >= p.deck_size) s[TurnsLeft] -= 1;
      for (int k = 0; k < 10; ++k) s[p.v_last + k] = 0;
      s[p.v_last + LPlayer] = cur;
      if (m < 2 * H) {
        const int slot = m % H, cd = static_cast<int>(card(p, s, cur, slot));
        const int c = cd / p.ranks, r = cd % p.ranks;
        s[p.v_last + LPosition] = slot;
        s[p.v_last + LCard] = cd;
        bool to_discards = true;
        if (m < H) {
          s[p.v_last + LType] = Discard;
          if (get(s, Info) < p.max_info) {
            s[Info] += 1;
            s[p.v_last + LToken] = 1;
          }
        } else {
          s[p.v_last + LType] = Play;
          if (get(s, p.v_fireworks + c) == r) {
            s[p.v_fireworks + c] += 1;
            to_discards = false;
            s[p.v_last + LScored] = 1;
            if (r == p.ranks - 1 && get(s, Info) < p.max_info) {
              s[Info] += 1;
              s[p.v_last + LToken] = 1;
            }
          } else {
            s[Life] -= 1;
          }
        }
        if (to_discards) s[p.v_discards + cd] += 1;
        replace(p, s, cur, slot);
      } else {
        s[Info] -= 1;
        int u = m - 2 * H;
        const bool color = u < (p.agents - 1) * p.colors;
        if (!color) u -= (p.agents - 1) * p.colors;
        const int width = color ? p.colors : p.ranks;
        const int target = (cur + 1 + u / width) % p.agents, value = u % width;
        s[p.v_last + LType] = color ? RevealColor : RevealRank;
        s[p.v_last + LTarget] = target;
        s[p.v_last + (color ? LColor : LRank)] = value;
        int mask = 0;
        for (int slot = 0; slot < H; ++slot) {
          const int cd = static_cast<int>(card(p, s, target, slot));
          if (cd < 0) break;
          State& know = color ? color_know(p, s, target, slot) : rank_know(p, s, target, slot);
          const int k = static_cast<int>(know);
          if ((color ? cd / p.ranks : cd % p.ranks) == value) {
            mask |= 1 << slot;
            know = (1 << value) | kHinted;
          } else {
            know = k & ~(1 << value);
          }
        }
        s[p.v_last + LReveal] = mask;
      }
      s[Cur] = (cur + 1) % p.agents;
    }
    const int after = score(p, s);
    int total = 0;
    for (int c = 0; c < p.colors; ++c) total += get(s, p.v_fireworks + c);
    terminated = get(s, Life) < 1 || total >= p.colors * p.ranks || get(s, TurnsLeft) <= 0;
    s[p.v_reward] = after - before;
    for (int a = 0; a < p.agents; ++a) {
      reward[a] = static_cast<float>(after - before);
      agent_done[a] = terminated;
    }
    won = 0.0f;
  }

  // Bytes at[0 .. width) set to whether their index is below n, without branches.
  FLOTILLA_HD static void thermometer(uint8_t* at, int n, int width) {
    for (int i = 0; i < width; ++i) at[i] = i < n;
  }

  // Every variant has 5 ranks; the encoding's loops over ranks use the constant.
  FLOTILLA_HD static void observe(const Params& p, StateRef s, int o, uint8_t* obs) {
    constexpr int R = kMaxRanks;
    const int P = p.agents, C = p.colors, H = p.hand_size, CR = C * R;
    kernels::zero_bytes(obs, p.obs_dim);
    // Other hands, then a bit per player whose hand is short.
    int at = 0;
    for (int k = 1; k < P; ++k) {
      const int pl = (o + k) % P;
      for (int slot = 0; slot < H; ++slot) {
        const int cd = card(p, s, pl, slot);
        if (cd >= 0) obs[at + cd] = 1;
        at += CR;
      }
    }
    for (int k = 0; k < P; ++k) obs[at + k] = card(p, s, (o + k) % P, H - 1) < 0;
    // Board: deck size, fireworks, information tokens, lives.
    at = p.off_board;
    thermometer(obs + at, p.deck_size - get(s, DeckPos), p.deck_size - P * H);
    at += p.deck_size - P * H;
    for (int c = 0; c < C; ++c) {
      const int f = get(s, p.v_fireworks + c);
      if (f > 0) obs[at + f - 1] = 1;
      at += R;
    }
    thermometer(obs + at, get(s, Info), p.max_info);
    at += p.max_info;
    thermometer(obs + at, get(s, Life), p.max_life);
    // Discards: per card kind, as many bits as were discarded out of its copies (3, 2, 2, 2, 1).
    at = p.off_discards;
    for (int c = 0; c < C; ++c, at += 10) {
      const int base = p.v_discards + c * R;
      thermometer(obs + at, get(s, base), 3);
      thermometer(obs + at + 3, get(s, base + 1), 2);
      thermometer(obs + at + 5, get(s, base + 2), 2);
      thermometer(obs + at + 7, get(s, base + 3), 2);
      obs[at + 9] = get(s, base + 4) > 0;
    }
    // The last move, with players relative to the observer.
    at = p.off_last;
    const int mover = get(s, p.v_last + LPlayer);
    if (mover >= 0) {
      const int type = get(s, p.v_last + LType);
      obs[at + (mover - o + P) % P] = 1;
      at += P;
      obs[at + type] = 1;
      at += 4;
      const bool hint = type == RevealColor || type == RevealRank;
      if (hint) obs[at + (get(s, p.v_last + LTarget) - o + P) % P] = 1;
      at += P;
      if (type == RevealColor) obs[at + get(s, p.v_last + LColor)] = 1;
      at += C;
      if (type == RevealRank) obs[at + get(s, p.v_last + LRank)] = 1;
      at += R;
      if (hint) {
        const int mask = get(s, p.v_last + LReveal);
        for (int i = 0; i < H; ++i) obs[at + i] = (mask >> i) & 1;
      }
      at += H;
      if (!hint) obs[at + get(s, p.v_last + LPosition)] = 1;
      at += H;
      if (!hint) obs[at + get(s, p.v_last + LCard)] = 1;
      at += CR;
      if (type == Play) {
        obs[at] = get(s, p.v_last + LScored) != 0;
        obs[at + 1] = get(s, p.v_last + LToken) != 0;
      }
    }
    // Card knowledge of every hand, the observer's first: plausible cards are the plausible colors'
    // rows of the plausible ranks' pattern.
    const int block = CR + C + R;
    for (int k = 0; k < P; ++k) {
      const int pl = (o + k) % P;
      at = p.off_knowledge + k * H * block;
      for (int slot = 0; slot < H; ++slot, at += block) {
        if (card(p, s, pl, slot) < 0) break;
        const int ck = color_know(p, s, pl, slot), rk = rank_know(p, s, pl, slot);
        uint8_t ranks[R], none[R] = {};
        for (int r = 0; r < R; ++r) ranks[r] = (rk >> r) & 1;
        for (int c = 0; c < C; ++c) {
          const uint8_t* row = (ck >> c) & 1 ? ranks : none;
          for (int r = 0; r < R; ++r) obs[at + c * R + r] = row[r];
        }
        const int color_hinted = (ck & kHinted) != 0, rank_hinted = (rk & kHinted) != 0;
        for (int c = 0; c < C; ++c) obs[at + CR + c] = color_hinted & (ck >> c);
        for (int r = 0; r < R; ++r) obs[at + CR + C + r] = rank_hinted & ranks[r];
      }
    }
  }

  FLOTILLA_HD static void global_state(const Params& p, StateRef s, const uint8_t*, int, uint8_t* state) {
    const int CR = p.colors * p.ranks, hands = p.agents * p.hand_size;
    kernels::zero_bytes(state, hands * CR);
    for (int k = 0; k < hands; ++k) {
      const int cd = s[p.v_hands + k];
      if (cd >= 0) state[k * CR + cd] = 1;
    }
    for (int a = 0; a < p.agents; ++a) state[hands * CR + a] = a == get(s, Cur);
  }

  FLOTILLA_HD static void available(const Params& p, StateRef s, int agent, bool* avail) {
    const int H = p.hand_size, cur = get(s, Cur);
    if (agent != cur) {
      for (int m = 0; m < p.moves; ++m) avail[m] = false;
      avail[p.moves] = true;
      return;
    }
    const int n = hand_count(p, s, cur), info = get(s, Info);
    for (int i = 0; i < H; ++i) {
      avail[i] = i < n && info < p.max_info;
      avail[H + i] = i < n;
    }
    // Hints: the colors and ranks each other hand holds.
    bool* colors = avail + 2 * H;
    bool* ranks = colors + (p.agents - 1) * p.colors;
    for (int t = 1; t < p.agents; ++t) {
      const int target = (cur + t) % p.agents;
      int cm = 0, rm = 0;
      for (int slot = 0; slot < H; ++slot) {
        const int cd = card(p, s, target, slot);
        if (cd < 0) break;
        cm |= 1 << (cd / p.ranks);
        rm |= 1 << (cd % p.ranks);
      }
      for (int c = 0; c < p.colors; ++c) colors[(t - 1) * p.colors + c] = info > 0 && ((cm >> c) & 1);
      for (int r = 0; r < p.ranks; ++r) ranks[(t - 1) * p.ranks + r] = info > 0 && ((rm >> r) & 1);
    }
    avail[p.moves] = false;
  }

  // {"deck": ["R1", "Y3", ...]}: the whole deck in dealing order (hands first, player 0's first),
  // cards as HLE writes them (color letter R Y G W B, rank 1-5); the game restarts on it.
  static void set_state_json(const Params& p, StateRef s, const std::string& json);
};

}  // namespace flotilla::envs::hanabi
