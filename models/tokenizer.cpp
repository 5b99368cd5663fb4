#include "models/tokenizer.hpp"

#include <nlohmann/json.hpp>
#include <oniguruma.h>
#include <utf8proc.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace flotilla::models {
namespace {

// Throws FormatError at the first byte that does not start a valid UTF-8 sequence.
void check_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    utf8proc_int32_t cp;
    const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(text.data() + i),
                                    static_cast<utf8proc_ssize_t>(text.size() - i), &cp);
    if (n < 0) throw FormatError("invalid UTF-8 at byte " + std::to_string(i) + " of the input text");
    i += static_cast<size_t>(n);
  }
}

std::string nfc(std::string_view text) {
  utf8proc_uint8_t* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(std::string(text).c_str()));
  if (!out) throw FormatError("the NFC normalizer failed on the input text");
  std::string s(reinterpret_cast<char*>(out));
  std::free(out);
  return s;
}

std::string utf8_of(uint32_t cp) {
  utf8proc_uint8_t buf[4];
  const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), buf);
  return std::string(reinterpret_cast<char*>(buf), static_cast<size_t>(n));
}

// GPT-2's reversible map from bytes to printable characters: bytes that print stay, the others
// become the characters from U+0100 on, in byte order.
struct ByteMap {
  std::string to_char[256];                         // byte -> UTF-8 of its character
  std::unordered_map<uint32_t, uint8_t> to_byte;    // character -> byte
  ByteMap() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool prints = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = prints ? static_cast<uint32_t>(b) : 256u + static_cast<uint32_t>(extra++);
      to_char[b] = utf8_of(cp);
      to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// The pre-tokenizer patterns' \s and \S with ECMAScript's whitespace, as the reference encoders
// (Hugging Face's JavaScript tokenizers and gpt-3-encoder) read them: Unicode White_Space without
// U+0085 and with U+FEFF. Oniguruma's own \s differs on exactly those two characters.
std::string ecmascript_whitespace(const std::string& pattern) {
  const std::string space = R"(\t\n\x0B\f\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF})";
  std::string out;
  int depth = 0;  // inside a character class
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char n = pattern[++i];
      if (n == 's') out += depth > 0 ? space : "[" + space + "]";
      else if (n == 'S') out += "[^" + space + "]";  // a nested class inside a class is fine in Oniguruma
      else out += std::string{c, n};
      continue;
    }
    if (c == '[') ++depth;
    else if (c == ']' && depth > 0) --depth;
    out += c;
  }
  return out;
}

// A compiled Oniguruma regex (UTF-8, Oniguruma syntax: what Hugging Face's tokenizers compile with).
class Regex {
 public:
  explicit Regex(const std::string& source) {
    const std::string pattern = ecmascript_whitespace(source);
    static std::once_flag once;
    std::call_once(once, [] {
      OnigEncoding enc[] = {ONIG_ENCODING_UTF8};
      onig_initialize(enc, 1);
    });
    OnigErrorInfo info;
    const auto* p = reinterpret_cast<const OnigUChar*>(pattern.data());
    const int r = onig_new(&re_, p, p + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_ONIGURUMA, &info);
    if (r != ONIG_NORMAL) {
      OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
      onig_error_code_to_str(msg, r, &info);
      throw FormatError("tokenizer regex '" + source + "' does not compile: " + reinterpret_cast<char*>(msg));
    }
  }
  ~Regex() {
    if (re_) onig_free(re_);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Splits `s` into matches and the gaps between them, in order ("Isolated").
  void split(std::string_view s, std::vector<std::string_view>& out) const {
    OnigRegion* region = onig_region_new();
    const auto* begin = reinterpret_cast<const OnigUChar*>(s.data());
    const auto* end = begin + s.size();
    size_t pos = 0, gap = 0;
    while (pos < s.size()) {
      const int r = onig_search(re_, begin, end, begin + pos, end, region, ONIG_OPTION_NONE);
      if (r < 0) break;
      const size_t mb = static_cast<size_t>(region->beg[0]), me = static_cast<size_t>(region->end[0]);
      if (me == mb) {  // an empty match: step one character on
        pos = mb + 1;
        while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
        continue;
      }
      if (mb > gap) out.push_back(s.substr(gap, mb - gap));
      out.push_back(s.substr(mb, me - mb));
      pos = gap = me;
    }
    if (gap < s.size()) out.push_back(s.substr(gap));
    onig_region_free(region, 1);
  }

 private:
  regex_t* re_ = nullptr;
};

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct AddedToken {
  std::string content;
  int32_t id;
};

// Byte-level BPE with added tokens, a pre-tokenizer pipeline and an optional NFC normalizer.
class BpeTokenizer final : public Tokenizer {
 public:
  struct PreStep {
    std::unique_ptr<Regex> regex;  // Split, or ByteLevel with use_regex
    bool prefix_space = false;     // ByteLevel add_prefix_space
  };

  BpeTokenizer(std::unordered_map<std::string, int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
               std::vector<AddedToken> added, std::vector<PreStep> steps, bool nfc)
      : vocab_(std::move(vocab)), added_(std::move(added)), steps_(std::move(steps)), nfc_(nfc) {
    int32_t max_id = -1;
    for (const auto& [tok, id] : vocab_) max_id = std::max(max_id, id);
    for (const auto& a : added_) max_id = std::max(max_id, a.id);
    id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
    has_id_.assign(static_cast<size_t>(max_id + 1), false);
    for (const auto& [tok, id] : vocab_) id_to_token_[id] = tok, has_id_[id] = true;
    for (const auto& a : added_) {
      id_to_token_[a.id] = a.content;
      has_id_[a.id] = true;
      added_ids_.push_back(a.id);
    }
    std::sort(added_ids_.begin(), added_ids_.end());
    // Longest first, so the longest added token wins at a position.
    std::sort(added_.begin(), added_.end(), [](const AddedToken& x, const AddedToken& y) {
      return x.content.size() > y.content.size();
    });
    const ByteMap& bm = byte_map();
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(bm.to_char[b]);
      if (it == vocab_.end())
        throw FormatError("byte-level BPE: the vocabulary has no token for byte " + std::to_string(b) + " ('" +
                          bm.to_char[b] + "')");
      byte_id_[b] = it->second;
    }
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      auto ia = vocab_.find(a), ib = vocab_.find(b), im = vocab_.find(a + b);
      if (ia == vocab_.end() || ib == vocab_.end() || im == vocab_.end())
        throw FormatError("BPE merge " + std::to_string(rank) + " ('" + a + "' '" + b + "') names a token missing from the vocabulary");
      merges_.emplace(key(ia->second, ib->second), Merge{static_cast<int32_t>(rank), im->second});
    }
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    check_utf8(text);
    std::vector<int32_t> out;
    size_t start = 0;
    // Added tokens are found in the raw text first and never split or normalized. next[k] is
    // the next occurrence of added token k at or after `start` (searched again only when passed).
    std::vector<size_t> next(added_.size(), 0);
    for (size_t k = 0; k < added_.size(); ++k) next[k] = text.find(added_[k].content);
    while (start <= text.size()) {
      size_t found = std::string_view::npos;
      const AddedToken* which = nullptr;
      for (size_t k = 0; k < added_.size(); ++k) {
        if (next[k] != std::string_view::npos && next[k] < start) next[k] = text.find(added_[k].content, start);
        if (next[k] < found) found = next[k], which = &added_[k];  // earliest; the longest among ties (sorted)
      }
      encode_plain(text.substr(start, found == std::string_view::npos ? std::string_view::npos : found - start), out);
      if (!which) break;
      out.push_back(which->id);
      start = found + which->content.size();
    }
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    const ByteMap& bm = byte_map();
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= static_cast<int32_t>(id_to_token_.size()) || !has_id_[id])
        throw Error("token id " + std::to_string(id) + " is outside the vocabulary (" + std::to_string(vocab_size()) + " ids)");
      const std::string& tok = id_to_token_[id];
      if (std::binary_search(added_ids_.begin(), added_ids_.end(), id)) {
        out += tok;
        continue;
      }
      // Every character of a byte-level token stands for one byte.
      size_t i = 0;
      while (i < tok.size()) {
        utf8proc_int32_t cp;
        const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(tok.data() + i),
                                        static_cast<utf8proc_ssize_t>(tok.size() - i), &cp);
        auto it = n > 0 ? bm.to_byte.find(static_cast<uint32_t>(cp)) : bm.to_byte.end();
        if (it == bm.to_byte.end()) throw FormatError("token " + std::to_string(id) + " is not byte-level text");
        out.push_back(static_cast<char>(it->second));
        i += static_cast<size_t>(n);
      }
    }
    return out;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token_.size()); }

  std::optional<int32_t> token_id(std::string_view token) const override {
    for (const auto& a : added_)
      if (a.content == token) return a.id;
    auto it = vocab_.find(std::string(token));
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }

 private:
  struct Merge {
    int32_t rank, merged;
  };
  static uint64_t key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

  void encode_plain(std::string_view raw, std::vector<int32_t>& out) const {
    if (raw.empty()) return;
    std::string normalized = nfc_ ? nfc(raw) : std::string(raw);
    std::vector<std::string_view> pieces = {normalized};
    std::string prefixed;
    for (const PreStep& step : steps_) {
      if (step.prefix_space && !pieces.empty() && !pieces.front().empty() && pieces.front().front() != ' ') {
        prefixed = " " + std::string(pieces.front());
        pieces.front() = prefixed;
      }
      if (!step.regex) continue;
      std::vector<std::string_view> next;
      for (std::string_view p : pieces) step.regex->split(p, next);
      pieces.swap(next);
    }
    for (std::string_view p : pieces) bpe(p, out);
  }

  // BPE over the bytes of one piece: merge the lowest-ranked adjacent pair (leftmost on ties)
  // until no pair merges. Results are cached per piece.
  void bpe(std::string_view piece, std::vector<int32_t>& out) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(std::string(piece));
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> sym;
    sym.reserve(piece.size());
    for (unsigned char c : piece) sym.push_back(byte_id_[c]);
    while (sym.size() > 1) {
      int32_t best_rank = INT32_MAX, merged = -1;
      size_t at = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merges_.find(key(sym[i], sym[i + 1]));
        if (it != merges_.end() && it->second.rank < best_rank) best_rank = it->second.rank, merged = it->second.merged, at = i;
      }
      if (merged < 0) break;
      sym[at] = merged;
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    out.insert(out.end(), sym.begin(), sym.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() > 200'000) cache_.clear();
    cache_.emplace(std::string(piece), std::move(sym));
  }

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<AddedToken> added_;
  std::vector<int32_t> added_ids_;
  std::vector<PreStep> steps_;
  bool nfc_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  int32_t byte_id_[256] = {};
  std::unordered_map<uint64_t, Merge> merges_;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

class ByteTokenizer final : public Tokenizer {
 public:
  explicit ByteTokenizer(std::vector<std::string> specials) : specials_(std::move(specials)) {}

  std::vector<int32_t> encode(std::string_view text) const override {
    check_utf8(text);
    std::vector<int32_t> out;
    size_t i = 0;
    while (i < text.size()) {
      bool special = false;
      for (size_t k = 0; k < specials_.size(); ++k)
        if (!specials_[k].empty() && text.compare(i, specials_[k].size(), specials_[k]) == 0) {
          out.push_back(256 + static_cast<int32_t>(k));
          i += specials_[k].size();
          special = true;
          break;
        }
      if (!special) out.push_back(static_cast<unsigned char>(text[i++]));
    }
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size())
        throw Error("token id " + std::to_string(id) + " is outside the vocabulary (" + std::to_string(vocab_size()) + " ids)");
      if (id < 256) out.push_back(static_cast<char>(id));
      else out += specials_[static_cast<size_t>(id - 256)];
    }
    return out;
  }

  int32_t vocab_size() const override { return 256 + static_cast<int32_t>(specials_.size()); }

  std::optional<int32_t> token_id(std::string_view token) const override {
    for (size_t k = 0; k < specials_.size(); ++k)
      if (specials_[k] == token) return 256 + static_cast<int32_t>(k);
    if (token.size() == 1) return static_cast<unsigned char>(token[0]);
    return std::nullopt;
  }

 private:
  std::vector<std::string> specials_;
};

// A token id: a whole number that fits the vocabulary's int32 (nlohmann would convert 1e300 or
// -1.5 without a word).
int32_t token_id_of(const nlohmann::json& id, const std::string& where, const std::string& token) {
  if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
    throw FormatError(where + ": token '" + token + "' has id " + id.dump() + ", not a whole number from 0 to " + std::to_string(INT32_MAX));
  return static_cast<int32_t>(id.get<int64_t>());
}

nlohmann::json read_json(const std::filesystem::path& path) {
  try {
    return nlohmann::json::parse(core::read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path.string() + ": not valid JSON: " + e.what());
  }
}

void read_pre_tokenizer(const nlohmann::json& j, std::vector<BpeTokenizer::PreStep>& steps, const std::string& where) {
  if (j.is_null()) return;
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : j.at("pretokenizers")) read_pre_tokenizer(p, steps, where);
    return;
  }
  if (type == "Split") {
    if (j.value("behavior", "") != "Isolated" || j.value("invert", false))
      throw FormatError(where + ": pre_tokenizer Split with behavior '" + j.value("behavior", "") +
                        "' is not supported (only Isolated, not inverted)");
    if (!j.contains("pattern") || !j["pattern"].contains("Regex"))
      throw FormatError(where + ": pre_tokenizer Split needs a Regex pattern");
    BpeTokenizer::PreStep s;
    s.regex = std::make_unique<Regex>(j["pattern"]["Regex"].get<std::string>());
    steps.push_back(std::move(s));
    return;
  }
  if (type == "ByteLevel") {
    BpeTokenizer::PreStep s;
    s.prefix_space = j.value("add_prefix_space", false);
    if (j.value("use_regex", true)) s.regex = std::make_unique<Regex>(kGpt2Pattern);
    steps.push_back(std::move(s));
    return;
  }
  throw FormatError(where + ": pre_tokenizer '" + type + "' is not supported (supported: Split, ByteLevel, Sequence)");
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::filesystem::path& path) {
  const nlohmann::json j = read_json(path);
  const std::string where = path.string();
  try {
    const nlohmann::json& model = j.at("model");
    if (model.value("type", "") != "BPE")
      throw FormatError(where + ": model type '" + model.value("type", "") + "' is not supported (only BPE)");
    if (model.value("byte_fallback", false)) throw FormatError(where + ": BPE byte_fallback is not supported");
    if (!model.value("continuing_subword_prefix", std::string()).empty() || !model.value("end_of_word_suffix", std::string()).empty())
      throw FormatError(where + ": BPE continuing_subword_prefix / end_of_word_suffix are not supported");
    bool use_nfc = false;
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const std::string n = j["normalizer"].value("type", "");
      if (n != "NFC") throw FormatError(where + ": normalizer '" + n + "' is not supported (supported: none, NFC)");
      use_nfc = true;
    }
    if (j.contains("decoder") && !j["decoder"].is_null() && j["decoder"].value("type", "") != "ByteLevel")
      throw FormatError(where + ": decoder '" + j["decoder"].value("type", "") + "' is not supported (only ByteLevel)");
    std::vector<BpeTokenizer::PreStep> steps;
    if (j.contains("pre_tokenizer")) read_pre_tokenizer(j["pre_tokenizer"], steps, where);
    std::unordered_map<std::string, int32_t> vocab;
    for (const auto& [tok, id] : model.at("vocab").items()) vocab.emplace(tok, token_id_of(id, where, tok));
    std::vector<std::pair<std::string, std::string>> merges;
    for (const auto& m : model.at("merges")) {
      if (m.is_array() && m.size() == 2) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) throw FormatError(where + ": merge '" + s + "' is not 'a b'");
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {
        throw FormatError(where + ": a merge is neither 'a b' nor [a, b]: " + m.dump());
      }
    }
    std::vector<AddedToken> added;
    if (j.contains("added_tokens"))
      for (const auto& a : j["added_tokens"]) {
        for (const char* flag : {"single_word", "lstrip", "rstrip"})
          if (a.value(flag, false))
            throw FormatError(where + ": added token '" + a.value("content", "") + "' sets " + flag + ", which is not supported");
        added.push_back({a.at("content").get<std::string>(), token_id_of(a.at("id"), where, a.at("content").get<std::string>())});
      }
    return std::make_unique<BpeTokenizer>(std::move(vocab), merges, std::move(added), std::move(steps), use_nfc);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where + ": " + e.what());
  }
}

std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::filesystem::path& encoder_json, const std::filesystem::path& vocab_bpe) {
  const nlohmann::json enc = read_json(encoder_json);
  std::unordered_map<std::string, int32_t> vocab;
  for (const auto& [tok, id] : enc.items()) vocab.emplace(tok, token_id_of(id, encoder_json.string(), tok));
  std::vector<std::pair<std::string, std::string>> merges;
  const std::string text = core::read_file(vocab_bpe);
  size_t pos = 0;
  int line_no = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos)
      throw FormatError(vocab_bpe.string() + ":" + std::to_string(line_no) + ": expected a merge 'a b', found '" + line + "'");
    merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }
  std::vector<BpeTokenizer::PreStep> steps;
  BpeTokenizer::PreStep s;
  s.regex = std::make_unique<Regex>(kGpt2Pattern);
  steps.push_back(std::move(s));
  return std::make_unique<BpeTokenizer>(std::move(vocab), merges, std::vector<AddedToken>{}, std::move(steps), false);
}

std::unique_ptr<Tokenizer> byte_tokenizer(const std::vector<std::string>& specials) {
  return std::make_unique<ByteTokenizer>(specials);
}

std::string byte_level_tokenizer_json(const std::vector<std::string>& specials) {
  const ByteMap& bm = byte_map();
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[bm.to_char[b]] = b;
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (size_t k = 0; k < specials.size(); ++k)
    added.push_back({{"id", 256 + static_cast<int>(k)}, {"content", specials[k]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  const nlohmann::ordered_json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                                             {"use_regex", false}};
  nlohmann::ordered_json j = {{"version", "1.0"},
                              {"truncation", nullptr},
                              {"padding", nullptr},
                              {"added_tokens", added},
                              {"normalizer", nullptr},
                              {"pre_tokenizer", byte_level},
                              {"post_processor", byte_level},
                              {"decoder", byte_level},
                              {"model",
                               {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                                {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false},
                                {"ignore_merges", false}, {"vocab", vocab}, {"merges", nlohmann::ordered_json::array()}}}};
  return j.dump(2) + "\n";
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "bytes") return byte_tokenizer();
  std::filesystem::path p = spec;
  if (std::filesystem::is_directory(p)) p /= "tokenizer.json";
  if (!std::filesystem::exists(p)) throw ConfigError("tokenizer file '" + p.string() + "' does not exist");
  if (p.filename() == "encoder.json") {
    const auto bpe = p.parent_path() / "vocab.bpe";
    if (!std::filesystem::exists(bpe)) throw ConfigError(p.string() + ": GPT-2 tokenizers need vocab.bpe beside encoder.json");
    return load_gpt2_tokenizer(p, bpe);
  }
  return load_hf_tokenizer(p);
}

}  // namespace flotilla::models
