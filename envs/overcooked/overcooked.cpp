// Overcooked's layouts (the five of the original benchmark, or a user's text grid), parameters,
// registration and --init-state.
#include "envs/overcooked/overcooked.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <vector>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "envs/batched_multi_agent_env.hpp"
#include "envs/init_state.hpp"

namespace flotilla::envs {

#if FLOTILLA_WITH_CUDA
void install_overcooked_cuda();  // envs/overcooked/overcooked_cuda.cu
#endif

namespace overcooked {
namespace {

struct LayoutInfo {
  const char* name;
  const char* grid;  // rows joined by '|'
  const char* summary;
};

// The grids of overcooked_ai's layout files; counter circuit is its onion-only version
// (counter_circuit_o_1order), the one the benchmark ran.
const LayoutInfo kLayouts[] = {
    {"cramped_room", "XXPXX|O  2O|X1  X|XDXSX", "a small room, one pot, both cooks in each other's way"},
    {"asymmetric_advantages", "XXXXXXXXX|O XSXOX S|X   P 1 X|X2  P   X|XXXDXDXXX",
     "two rooms, each cook nearer to different stations"},
    {"coordination_ring", "XXXPX|X 1 P|D2X X|O   X|XOSXX", "a ring around a counter; cooks must circle without blocking"},
    {"forced_coordination", "XXXPX|O X1P|O2X X|D X X|XXXSX",
     "separated cooks: one has onions and dishes, the other the pots and serving"},
    {"counter_circuit", "XXXPPXXX|X  2   X|D XXXX S|X  1   X|XXXOOXXX",
     "a long loop around a central counter, passing items across it helps"},
};

std::vector<std::string> split_rows(const std::string& text, char sep) {
  std::vector<std::string> rows;
  std::string row;
  std::istringstream in(text);
  while (std::getline(in, row, sep)) {
    // As the original reads a layout: each row without surrounding whitespace, blank rows dropped.
    const size_t b = row.find_first_not_of(" \t\r"), e = row.find_last_not_of(" \t\r");
    if (b == std::string::npos) continue;
    rows.push_back(row.substr(b, e - b + 1));
  }
  return rows;
}

// A layout file: the grid alone, one row per line, or an overcooked_ai .layout file, whose
// "grid" entry between triple quotes is taken.
std::vector<std::string> read_layout_file(const std::string& path) {
  if (!std::filesystem::exists(path)) throw ConfigError("overcooked: layout file '" + path + "' does not exist");
  const std::string text = core::read_file(path);
  const size_t key = text.find("\"grid\"");
  if (key != std::string::npos) {
    const size_t open = text.find("\"\"\"", key), close = open == std::string::npos ? open : text.find("\"\"\"", open + 3);
    if (close == std::string::npos)
      throw ConfigError("overcooked: layout file '" + path + "' has a \"grid\" entry without a triple-quoted grid");
    return split_rows(text.substr(open + 3, close - open - 3), '\n');
  }
  return split_rows(text, '\n');
}

// Checks a grid as the original does and fills the layout part of `p`.
void set_layout(Params& p, const std::vector<std::string>& rows, const std::string& source) {
  auto bad = [&](const std::string& why) { throw ConfigError("overcooked: layout " + source + ": " + why); };
  if (rows.empty()) bad("the grid is empty");
  const int H = static_cast<int>(rows.size()), W = static_cast<int>(rows[0].size());
  for (int y = 0; y < H; ++y)
    if (static_cast<int>(rows[y].size()) != W)
      bad("row " + std::to_string(y) + " has " + std::to_string(rows[y].size()) + " cells, row 0 has " + std::to_string(W) +
          " (rows must be equally long)");
  if (W * H > kMaxCells) bad("the grid has " + std::to_string(W * H) + " cells, at most " + std::to_string(kMaxCells));
  p.width = W;
  p.height = H;
  p.pots = 0;
  int starts = 0, onions = 0, dishes = 0, serving = 0;
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const char ch = rows[y][x];
      const int cell = y * W + x;
      const std::string at = "'" + std::string(1, ch) + "' at x=" + std::to_string(x) + ", y=" + std::to_string(y);
      p.pot_of[cell] = -1;
      const bool border = x == 0 || y == 0 || x == W - 1 || y == H - 1;
      if (border && (ch == ' ' || ch == '1' || ch == '2')) bad("the border must not be walkable, found " + at);
      switch (ch) {
        case ' ': p.terrain[cell] = Floor; break;
        case 'X': p.terrain[cell] = Counter; break;
        case 'O': p.terrain[cell] = OnionDispenser, ++onions; break;
        case 'D': p.terrain[cell] = DishDispenser, ++dishes; break;
        case 'S': p.terrain[cell] = Serving, ++serving; break;
        case 'P':
          if (p.pots == kMaxPots) bad("more than " + std::to_string(kMaxPots) + " pots");
          p.terrain[cell] = Pot;
          p.pot_of[cell] = static_cast<int8_t>(p.pots++);
          break;
        case '1':
        case '2': {
          const int c = ch - '1';
          if (p.start_x[c] >= 0) bad("cook " + std::string(1, ch) + " appears twice");
          p.start_x[c] = x;
          p.start_y[c] = y;
          p.terrain[cell] = Floor;
          ++starts;
          break;
        }
        case 'T': bad("tomato dispensers are not supported (the benchmark's soups are onion soups), found " + at);
        default:
          if (ch >= '3' && ch <= '9') bad("two cooks play; found a third at " + at);
          bad("unknown cell " + at + " (cells: X counter, P pot, O onions, D dishes, S serving, 1 and 2 the cooks, space floor)");
      }
    }
  if (starts != kCooks) bad("both cooks '1' and '2' must appear");
  if (p.pots == 0 || onions == 0 || dishes == 0 || serving == 0)
    bad("a kitchen needs at least one pot (P), onion dispenser (O), dish dispenser (D) and serving counter (S)");
}

Params build(const LayoutInfo* builtin, const EnvOptions& options, const core::ConfigView* v) {
  Params p;
  p.start_x[0] = p.start_x[1] = -1;
  if (builtin) {
    if (v && (v->has("grid") || v->has("layout_file")))
      v->fail(v->has("grid") ? "grid" : "layout_file",
              std::string("overcooked/") + builtin->name + " has its own layout; use overcooked/custom for a grid of your own");
    set_layout(p, split_rows(builtin->grid, '|'), builtin->name);
  } else if (v && v->has("grid")) {
    if (v->has("layout_file")) v->fail("layout_file", "give either grid or layout_file, not both");
    set_layout(p, split_rows(v->require<std::string>("grid"), '\n'), "from params.grid");
  } else if (v && v->has("layout_file")) {
    const std::string path = v->require<std::string>("layout_file");
    set_layout(p, read_layout_file(path), "'" + path + "'");
  } else {
    throw ConfigError("overcooked/custom needs params.grid (rows of X P O D S 1 2 and spaces) or params.layout_file");
  }
  if (v) {
    p.cook_time = v->get<int>("cook_time", 20, core::in_range(1, 235));
    p.delivery_reward = static_cast<float>(v->get<double>("delivery_reward", 20.0));
    p.placement_reward = static_cast<float>(v->get<double>("placement_in_pot_reward", 3.0));
    p.dish_pickup_reward = static_cast<float>(v->get<double>("dish_pickup_reward", 3.0));
    p.soup_pickup_reward = static_cast<float>(v->get<double>("soup_pickup_reward", 5.0));
    p.old_dynamics = v->get<bool>("old_dynamics", true);
    p.shaping = static_cast<float>(v->get<double>("shaping", 1.0, core::at_least(0.0)));
    p.shaping_horizon = v->get<double>("shaping_horizon", 0.0, core::at_least(0.0));
  }
  p.num_envs = std::max<int64_t>(1, options.num_envs);
  p.horizon = options.max_episode_steps > 0 ? options.max_episode_steps : 400;
  return p;
}

MultiAgentSpec spec_of(const std::string& id, const std::string& summary, const Params& p) {
  const int n = Overcooked::obs_dim(p);
  const double top = std::max(p.cook_time, 3);
  Space obs = Space::box(std::vector<double>(n, 0.0), std::vector<double>(n, top));
  obs.dtype = "uint8";
  MultiAgentSpec spec;
  spec.id = id;
  spec.summary = summary;
  spec.max_episode_steps = 400;
  for (int c = 0; c < kCooks; ++c) spec.agents.push_back({"agent_" + std::to_string(c), obs, Space::discrete(kActions)});
  spec.state = obs;
  return spec;
}

std::unique_ptr<MultiAgentVecEnv> make(const LayoutInfo* builtin, const std::string& id, const std::string& summary,
                                       const EnvOptions& options, const core::ConfigView* v) {
  const Params p = build(builtin, options, v);
  return std::make_unique<BatchedMultiAgentEnv<Overcooked>>(spec_of(id, summary, p), p, options);
}

void read_xy(const nlohmann::json& j, const std::string& where, int& x, int& y) {
  if (!j.is_array() || j.size() != 2) throw ConfigError("--init-state: " + where + " must be [x, y], got " + j.dump());
  x = init_state::integer(j[0], where + "[0]");
  y = init_state::integer(j[1], where + "[1]");
}

// An object's item code; soups count their onions.
int item_of(const nlohmann::json& o, const std::string& where) {
  if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
    throw ConfigError("--init-state: " + where + " must be an object with a \"name\"");
  const std::string name = o["name"];
  if (name == "onion") return Onion;
  if (name == "dish") return Dish;
  if (name != "soup") throw ConfigError("--init-state: " + where + " is a '" + name + "'; items are onion, dish and soup");
  const nlohmann::json& ing = o.contains("_ingredients") ? o["_ingredients"] : nlohmann::json::array();
  if (!ing.is_array() || ing.empty() || ing.size() > 3)
    throw ConfigError("--init-state: " + where + "._ingredients must list 1 to 3 onions");
  for (const auto& i : ing)
    if (!i.is_object() || i.value("name", "") != "onion")
      throw ConfigError("--init-state: " + where + "._ingredients may hold onions only, got " + i.dump());
  return 2 + static_cast<int>(ing.size());
}

}  // namespace

void Overcooked::set_state_json(const Params& p, StateRef s, const std::string& text) {
  const nlohmann::json j = init_state::parse(text);
  const std::string shape =
      R"({"players":[{"position":[x,y],"orientation":[dx,dy],"held_object":null},...],"objects":[{"name":"soup","position":[x,y],"_ingredients":[{"name":"onion"},...],"cooking_tick":t},...],"timestep":t})";
  if (!j.is_object()) throw ConfigError("--init-state must be a JSON object " + shape);
  for (const auto& [key, value] : j.items())
    if (key != "players" && key != "objects" && key != "timestep" && key != "bonus_orders" && key != "all_orders")
      throw ConfigError("--init-state: unknown key '" + key + "' (expected " + shape + ")");
  if (j.contains("bonus_orders") && !(j["bonus_orders"].is_array() && j["bonus_orders"].empty()))
    throw ConfigError("--init-state: bonus_orders must be empty (the layouts have none)");
  kernels::EnvRng unused(0, 0, 0);
  reset(p, s, unused);
  auto inside = [&](int x, int y, const std::string& where) {
    if (x < 0 || y < 0 || x >= p.width || y >= p.height)
      throw ConfigError("--init-state: " + where + " [" + std::to_string(x) + ", " + std::to_string(y) +
                        "] is outside the " + std::to_string(p.width) + " x " + std::to_string(p.height) + " grid");
    return y * p.width + x;
  };
  if (j.contains("players")) {
    const nlohmann::json& players = j["players"];
    if (!players.is_array() || players.size() != kCooks) throw ConfigError("--init-state: players must list 2 cooks");
    for (int c = 0; c < kCooks; ++c) {
      const nlohmann::json& pl = players[c];
      const std::string where = "players[" + std::to_string(c) + "]";
      if (!pl.is_object() || !pl.contains("position")) throw ConfigError("--init-state: " + where + " needs a position");
      int x, y;
      read_xy(pl["position"], where + ".position", x, y);
      if (p.terrain[inside(x, y, where + ".position")] != Floor)
        throw ConfigError("--init-state: " + where + ".position is not a floor cell");
      cook(s, c, 0) = x;
      cook(s, c, 1) = y;
      if (pl.contains("orientation")) {
        int ox, oy;
        read_xy(pl["orientation"], where + ".orientation", ox, oy);
        int dir = -1;
        for (int d = North; d <= West; ++d)
          if (dx(d) == ox && dy(d) == oy) dir = d;
        if (dir < 0) throw ConfigError("--init-state: " + where + ".orientation must be [0,-1], [0,1], [1,0] or [-1,0]");
        cook(s, c, 2) = dir;
      }
      if (pl.contains("held_object") && !pl["held_object"].is_null())
        cook(s, c, 3) = item_of(pl["held_object"], where + ".held_object");
    }
    if (cook(s, 0, 0) == cook(s, 1, 0) && cook(s, 0, 1) == cook(s, 1, 1))
      throw ConfigError("--init-state: both cooks stand on one cell");
  }
  if (j.contains("objects")) {
    if (!j["objects"].is_array()) throw ConfigError("--init-state: objects must be a list");
    for (size_t i = 0; i < j["objects"].size(); ++i) {
      const nlohmann::json& o = j["objects"][i];
      const std::string where = "objects[" + std::to_string(i) + "]";
      const int it = item_of(o, where);
      if (!o.contains("position")) throw ConfigError("--init-state: " + where + " needs a position");
      int x, y;
      read_xy(o["position"], where + ".position", x, y);
      const int cell = inside(x, y, where + ".position");
      if (p.terrain[cell] == Pot) {
        if (!is_soup(it)) throw ConfigError("--init-state: " + where + ": only soups lie in pots");
        const int k = p.pot_of[cell];
        const int t = o.contains("cooking_tick") ? init_state::integer(o["cooking_tick"], where + ".cooking_tick") : -1;
        if (t < -1 || t > p.cook_time)
          throw ConfigError("--init-state: " + where + ".cooking_tick must be -1 (idle) to " + std::to_string(p.cook_time));
        onions(s, k) = it - 2;
        tick(s, k) = t;
      } else if (p.terrain[cell] == Counter) {
        const bool cooking = o.contains("cooking_tick") && init_state::integer(o["cooking_tick"], where + ".cooking_tick") < p.cook_time;
        if (is_soup(it) && cooking)
          throw ConfigError("--init-state: " + where + ": a soup out of a pot is ready (cooking_tick " +
                            std::to_string(p.cook_time) + ")");
        item(p, s, cell) = it;
      } else {
        throw ConfigError("--init-state: " + where + " lies on neither a counter nor a pot");
      }
    }
  }
  if (j.contains("timestep")) s[kStepVar] = init_state::integer(j["timestep"], "timestep");
}

}  // namespace overcooked

void register_overcooked_envs() {
  using namespace overcooked;
  for (const LayoutInfo& info : kLayouts) {
    const std::string id = std::string("overcooked/") + info.name, summary = info.summary;
    const LayoutInfo* layout = &info;
    register_multi_agent_env(spec_of(id, summary, build(layout, EnvOptions{}, nullptr)),
                             [layout, id, summary](const EnvOptions& options, const core::ConfigView* v) {
                               return make(layout, id, summary, options, v);
                             });
  }
  // A user's kitchen: the spec listed is cramped room's; the env's own follows its grid.
  const std::string custom = "overcooked/custom", summary = "your own kitchen from params.grid or params.layout_file";
  register_multi_agent_env(spec_of(custom, summary, build(&kLayouts[0], EnvOptions{}, nullptr)),
                           [custom, summary](const EnvOptions& options, const core::ConfigView* v) {
                             return make(nullptr, custom, summary, options, v);
                           });
#if FLOTILLA_WITH_CUDA
  install_overcooked_cuda();
#endif
}

}  // namespace flotilla::envs
