// Hanabi's variants (HLE's full, small and very small games), parameters, registration and
// --init-state.
#include "envs/hanabi/hanabi.hpp"

#include <nlohmann/json.hpp>

#include <limits>
#include <vector>

#include "core/error.hpp"
#include "envs/batched_multi_agent_env.hpp"
#include "envs/init_state.hpp"

namespace flotilla::envs {

#if FLOTILLA_WITH_CUDA
void install_hanabi_cuda();  // envs/hanabi/hanabi_cuda.cu
#endif

namespace hanabi {
namespace {

constexpr char kColorLetters[] = "RYGWB";  // HLE's color order

struct Variant {
  const char* name;
  int colors, hand_size, max_info, max_life;  // hand_size 0: by the rules (5, or 4 with 4-5 players)
  const char* summary;
};

const Variant kVariants[] = {
    {"full", 5, 0, 8, 3, "HLE's Hanabi-Full: 5 colors, 8 tokens, 3 lives (params.players 2-5)"},
    {"small", 2, 2, 3, 1, "HLE's Hanabi-Small: 2 colors, hands of 2, 3 tokens, 1 life (params.players 2-5)"},
    {"very_small", 1, 2, 3, 1, "HLE's Hanabi-Very-Small: 1 color, hands of 2, 3 tokens, 1 life (params.players 2-5)"},
};

Params build(const Variant& v, const core::ConfigView* view) {
  Params p;
  p.agents = view ? view->get<int>("players", 2, core::in_range(2, kMaxPlayers)) : 2;
  p.colors = v.colors;
  p.ranks = 5;
  p.hand_size = v.hand_size > 0 ? v.hand_size : (p.agents < 4 ? 5 : 4);
  p.max_info = v.max_info;
  p.max_life = v.max_life;
  layout(p);
  return p;
}

MultiAgentSpec spec_of(const Variant& v, const Params& p) {
  auto bits = [](int n) {
    Space s = Space::box(std::vector<double>(n, 0.0), std::vector<double>(n, 1.0));
    s.dtype = "uint8";
    return s;
  };
  MultiAgentSpec spec;
  spec.id = std::string("hanabi/") + v.name;
  spec.summary = v.summary;
  // A bound no game reaches: each card is played or discarded once, and each hint spends a token
  // that only the start, discards and completed fireworks provide.
  spec.max_episode_steps = 2 * p.deck_size + p.max_info + p.colors;
  for (int a = 0; a < p.agents; ++a)
    spec.agents.push_back({"player_" + std::to_string(a), bits(p.obs_dim), Space::discrete(p.moves + 1)});
  spec.state = bits(Hanabi::state_dim(p));
  spec.strict_masks = true;
  return spec;
}

}  // namespace

void Hanabi::set_state_json(const Params& p, StateRef s, const std::string& text) {
  const nlohmann::json j = init_state::parse(text);
  const std::string shape = R"({"deck":["R1","Y3",...]} (every card once, in dealing order))";
  if (!j.is_object() || j.size() != 1 || !j.contains("deck") || !j["deck"].is_array())
    throw ConfigError("--init-state takes " + shape);
  const nlohmann::json& deck = j["deck"];
  if (static_cast<int>(deck.size()) != p.deck_size)
    throw ConfigError("--init-state: the deck has " + std::to_string(p.deck_size) + " cards, got " +
                      std::to_string(deck.size()));
  std::vector<int> left(p.colors * p.ranks);
  for (int c = 0; c < p.colors; ++c)
    for (int r = 0; r < p.ranks; ++r) left[c * p.ranks + r] = instances(p, r);
  for (int i = 0; i < p.deck_size; ++i) {
    const std::string where = "deck[" + std::to_string(i) + "]";
    const std::string name = deck[i].is_string() ? deck[i].get<std::string>() : "";
    int c = -1;
    for (int k = 0; k < p.colors; ++k)
      if (name.size() == 2 && name[0] == kColorLetters[k]) c = k;
    const int r = name.size() == 2 ? name[1] - '1' : -1;
    if (c < 0 || r < 0 || r >= p.ranks)
      throw ConfigError("--init-state: " + where + " must be a card like \"R1\" (colors " +
                        std::string(kColorLetters, p.colors) + ", ranks 1-" + std::to_string(p.ranks) + "), got " +
                        deck[i].dump());
    if (--left[c * p.ranks + r] < 0)
      throw ConfigError("--init-state: " + where + " " + name + " is one more than the deck holds");
    s[p.v_deck + i] = c * p.ranks + r;
  }
  start(p, s);
}

}  // namespace hanabi

void register_hanabi_envs() {
  using namespace hanabi;
  for (const Variant& v : kVariants) {
    const Variant* variant = &v;
    register_multi_agent_env(spec_of(v, build(v, nullptr)), [variant](const EnvOptions& options, const core::ConfigView* view) {
      const Params p = build(*variant, view);
      return std::unique_ptr<MultiAgentVecEnv>(
          std::make_unique<BatchedMultiAgentEnv<Hanabi>>(spec_of(*variant, p), p, options));
    });
  }
#if FLOTILLA_WITH_CUDA
  install_hanabi_cuda();
#endif
}

}  // namespace flotilla::envs
