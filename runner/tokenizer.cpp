// Byte-level BPE from tokenizer.json; see tokenizer.h for the pipeline and what is (not) supported.
#include "tokenizer.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>

#include "json.h"

namespace tq {

namespace {

// The regex that ByteLevel(use_regex=true) applies (GPT-2's).
constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

[[noreturn]] void fail(const std::string& what) { throw TokenizerError(what); }

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 + n, so every byte
// sequence becomes a printable string that BPE merges can work on.
void build_byte_table(std::string (&byte_to_char)[256], std::unordered_map<char32_t, uint8_t>* back) {
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
    byte_to_char[b].clear();
    unicode::append_utf8(&byte_to_char[b], cp);
    (*back)[cp] = static_cast<uint8_t>(b);
  }
}

// Splits a UTF-8 string into its characters (each a UTF-8 substring).
std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char b = s[i];
    size_t n = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : 4;
    n = std::min(n, s.size() - i);
    out.emplace_back(s, i, n);
    i += n;
  }
  return out;
}

std::string join_merge(const std::string& a, const std::string& b) { return a + " " + b; }

}  // namespace

// ============================================================================================
// Loading
// ============================================================================================
Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open tokenizer file");
  std::stringstream ss;
  ss << f.rdbuf();
  if (!f.good() && !f.eof()) fail("cannot read tokenizer file");
  return from_json_text(ss.str());
}

Tokenizer Tokenizer::from_json_text(std::string_view text) {
  Json root;
  try {
    root = Json::parse(text);
  } catch (const JsonError& e) {
    fail(std::string("tokenizer.json is not valid JSON: ") + e.what());
  }
  if (!root.is_object()) fail("tokenizer.json: top level is not an object");

  Tokenizer t;
  std::unordered_map<char32_t, uint8_t> char_to_byte;
  build_byte_table(t.byte_to_char_, &char_to_byte);

  // ---- normalizer: only NFC (assumed satisfied by the input) or none.
  if (const Json* norm = root.get("normalizer"); norm && !norm->is_null()) {
    std::string type = norm->get_string("type");
    bool ok = type == "NFC";
    if (type == "Sequence") {
      const Json* list = norm->get("normalizers");
      ok = list && list->is_array();
      for (size_t i = 0; ok && i < list->arr.size(); ++i) ok = list->arr[i].get_string("type") == "NFC";
    }
    if (!ok) fail("unsupported tokenizer.json: normalizer " + type);
  }

  // ---- pre-tokenizer
  const Json* pre = root.get("pre_tokenizer");
  if (!pre || pre->is_null()) fail("unsupported tokenizer.json: no pre_tokenizer (not byte-level BPE)");
  std::vector<const Json*> steps;
  if (pre->get_string("type") == "Sequence") {
    const Json* list = pre->get("pretokenizers");
    if (!list || !list->is_array()) fail("tokenizer.json: bad pre_tokenizer Sequence");
    for (const auto& s : list->arr) steps.push_back(&s);
  } else {
    steps.push_back(pre);
  }
  bool saw_byte_level = false;
  for (const Json* s : steps) {
    std::string type = s->get_string("type");
    if (saw_byte_level) fail("unsupported tokenizer.json: pre_tokenizer step after ByteLevel");
    if (type == "Split") {
      if (s->get_string("behavior") != "Isolated" || s->get_bool("invert"))
        fail("unsupported tokenizer.json: Split behavior " + s->get_string("behavior"));
      const Json* pat = s->get("pattern");
      std::string regex;
      if (pat && pat->get("Regex")) {
        regex = pat->get_string("Regex");
      } else if (pat && pat->get("String")) {
        for (char c : pat->get_string("String")) {  // literal split: escape it into a regex
          if (strchr("\\^$.|?*+()[]{}", c)) regex += '\\';
          regex += c;
        }
      } else {
        fail("tokenizer.json: Split without pattern");
      }
      try {
        t.splits_.emplace_back(regex);
      } catch (const std::exception& e) {
        fail(std::string("tokenizer.json: ") + e.what());
      }
    } else if (type == "ByteLevel") {
      saw_byte_level = true;
      t.add_prefix_space_ = s->get_bool("add_prefix_space");
      const Json* ur = s->get("use_regex");
      t.byte_level_regex_ = !ur || !ur->is_bool() || ur->b;  // HF default: true
      if (t.byte_level_regex_) t.splits_.emplace_back(kGpt2Pattern);
    } else {
      fail("unsupported tokenizer.json: pre_tokenizer " + type);
    }
  }
  if (!saw_byte_level) fail("unsupported tokenizer.json: pre_tokenizer has no ByteLevel step");

  // ---- model
  const Json* model = root.get("model");
  if (!model || !model->is_object()) fail("tokenizer.json: no model");
  std::string mtype = model->get_string("type", "BPE");
  if (mtype != "BPE") fail("unsupported tokenizer.json: model " + mtype);
  if (model->get_bool("byte_fallback")) fail("unsupported tokenizer.json: BPE byte_fallback");
  if (!model->get_string("continuing_subword_prefix").empty() || !model->get_string("end_of_word_suffix").empty())
    fail("unsupported tokenizer.json: BPE subword prefix/suffix");
  t.ignore_merges_ = model->get_bool("ignore_merges");

  const Json* vocab = model->get("vocab");
  if (!vocab || !vocab->is_object()) fail("tokenizer.json: model.vocab missing");
  int64_t max_id = -1;
  t.vocab_.reserve(vocab->obj.size() * 2);
  for (const auto& kv : vocab->obj) {
    if (!kv.second.is_number() || kv.second.i64 < 0) fail("tokenizer.json: bad vocab id for " + kv.first);
    t.vocab_[kv.first] = kv.second.i64;
    max_id = std::max(max_id, kv.second.i64);
  }

  const Json* merges = model->get("merges");
  if (!merges || !merges->is_array()) fail("tokenizer.json: model.merges missing");
  t.merge_rank_.reserve(merges->arr.size() * 2);
  for (size_t r = 0; r < merges->arr.size(); ++r) {
    const Json& m = merges->arr[r];
    std::string key;
    if (m.is_string()) {
      key = m.str;  // "left right"
    } else if (m.is_array() && m.arr.size() == 2 && m.arr[0].is_string() && m.arr[1].is_string()) {
      key = join_merge(m.arr[0].str, m.arr[1].str);
    } else {
      fail("tokenizer.json: bad merge entry " + std::to_string(r));
    }
    t.merge_rank_.emplace(std::move(key), static_cast<int>(r));  // first occurrence wins
  }

  // ---- added tokens (special or not): matched on the raw text before anything else
  if (const Json* added = root.get("added_tokens"); added && added->is_array()) {
    for (const auto& a : added->arr) {
      const Json* id = a.get("id");
      std::string content = a.get_string("content");
      if (!id || !id->is_number() || content.empty()) continue;
      t.added_.push_back({content, id->i64, a.get_bool("lstrip"), a.get_bool("rstrip"), a.get_bool("single_word")});
      max_id = std::max(max_id, id->i64);
    }
  }
  std::stable_sort(t.added_.begin(), t.added_.end(),
                   [](const Added& a, const Added& b) { return a.content.size() > b.content.size(); });

  // ---- id -> bytes for decoding
  t.id_to_bytes_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& kv : t.vocab_) {
    std::u32string cps;
    std::string bytes;
    if (unicode::decode_utf8(kv.first, &cps)) {
      for (char32_t c : cps) {
        auto it = char_to_byte.find(c);
        if (it != char_to_byte.end()) bytes.push_back(static_cast<char>(it->second));
        else unicode::append_utf8(&bytes, c);  // not a byte-level char: keep as text
      }
    } else {
      bytes = kv.first;
    }
    t.id_to_bytes_[kv.second] = std::move(bytes);
  }
  for (const auto& a : t.added_) t.id_to_bytes_[a.id] = a.content;

  std::string unk = model->get_string("unk_token");
  if (!unk.empty()) {
    auto it = t.vocab_.find(unk);
    if (it != t.vocab_.end()) t.unk_id_ = it->second;
  }
  return t;
}

// ============================================================================================
// Encoding
// ============================================================================================
void Tokenizer::pre_tokenize(std::string_view segment, std::vector<std::string>* pieces) const {
  std::vector<std::string> cur;
  std::string text(segment);
  if (add_prefix_space_ && !text.empty() && text[0] != ' ') text.insert(text.begin(), ' ');
  cur.push_back(std::move(text));
  for (const auto& re : splits_) {
    std::vector<std::string> next;
    for (const auto& piece : cur) {
      std::u32string cps;
      unicode::decode_utf8(piece, &cps);  // validated by encode()
      for (auto [b, e] : re.split_isolated(cps)) {
        std::string s;
        for (size_t i = b; i < e; ++i) unicode::append_utf8(&s, cps[i]);
        next.push_back(std::move(s));
      }
    }
    cur.swap(next);
  }
  for (const auto& piece : cur) {
    std::string mapped;
    for (unsigned char c : piece) mapped += byte_to_char_[c];
    pieces->push_back(std::move(mapped));
  }
}

void Tokenizer::bpe(const std::string& piece, std::vector<int64_t>* out) const {
  if (ignore_merges_) {
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  std::vector<std::string> sym = utf8_chars(piece);
  // Apply the lowest-rank merge, leftmost on ties, one at a time: the order HF's BPE uses.
  while (sym.size() > 1) {
    int best = INT_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = merge_rank_.find(join_merge(sym[i], sym[i + 1]));
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == INT_MAX) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + static_cast<long>(at) + 1);
  }
  for (const auto& s : sym) {
    auto it = vocab_.find(s);
    if (it != vocab_.end()) out->push_back(it->second);
    else if (unk_id_ >= 0) out->push_back(unk_id_);
    else fail("tokenizer: piece not in vocab and no unk_token");
  }
}

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
  std::u32string check;
  if (!unicode::decode_utf8(text, &check)) fail("prompt is not valid UTF-8");

  std::vector<int64_t> ids;
  std::vector<std::string> pieces;
  auto flush_segment = [&](std::string_view seg) {
    if (seg.empty()) return;
    pieces.clear();
    pre_tokenize(seg, &pieces);
    for (const auto& p : pieces) bpe(p, &ids);
  };
  auto is_word = [](char c) { return isalnum(static_cast<unsigned char>(c)) || c == '_'; };

  size_t seg_start = 0, i = 0;
  while (i < text.size()) {
    const Added* hit = nullptr;
    for (const auto& a : added_) {  // longest first: leftmost-longest like HF's added vocabulary
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word && ((i > 0 && is_word(text[i - 1])) ||
                            (i + a.content.size() < text.size() && is_word(text[i + a.content.size()]))))
        continue;
      hit = &a;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t seg_end = i;
    if (hit->lstrip)
      while (seg_end > seg_start && is_ascii_space(text[seg_end - 1])) --seg_end;
    flush_segment(text.substr(seg_start, seg_end - seg_start));
    ids.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip)
      while (i < text.size() && is_ascii_space(text[i])) ++i;
    seg_start = i;
  }
  flush_segment(text.substr(seg_start));
  return ids;
}

// ============================================================================================
// Decoding
// ============================================================================================
const std::string& Tokenizer::token_bytes(int64_t id) const {
  static const std::string kEmpty;
  if (id < 0 || id >= vocab_size()) return kEmpty;
  return id_to_bytes_[static_cast<size_t>(id)];
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) out += token_bytes(id);
  return out;
}

int64_t Tokenizer::token_id(std::string_view content) const {
  for (const auto& a : added_)
    if (a.content == content) return a.id;
  std::string mapped;
  for (unsigned char c : content) mapped += byte_to_char_[c];
  auto it = vocab_.find(mapped);
  return it == vocab_.end() ? -1 : it->second;
}

std::string Utf8Stream::push(std::string_view bytes) {
  pending_ += bytes;
  // Find the start of the last (possibly incomplete) UTF-8 sequence within the final 4 bytes.
  size_t n = pending_.size();
  size_t cut = n;
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    unsigned char b = pending_[n - back];
    if ((b & 0xC0) == 0x80) continue;  // continuation byte
    size_t need = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
    if (back < need) cut = n - back;
    break;
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace tq
