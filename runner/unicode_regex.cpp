// Backtracking regex over code points for tokenizer pre-tokenizers; see unicode_regex.h for the why.
#include "unicode_regex.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <stdexcept>

#include "unicode_tables.h"

namespace tq {

// ============================================================================================
// Unicode helpers
// ============================================================================================
namespace unicode {

int category(char32_t c) {
  const auto* lo = std::begin(kCategoryRanges);
  const auto* hi = std::end(kCategoryRanges);
  const auto* it = std::upper_bound(lo, hi, static_cast<uint32_t>(c),
                                    [](uint32_t v, const CategoryRange& r) { return v < r.first; });
  if (it == lo) return kCn;
  --it;
  return static_cast<uint32_t>(c) <= it->last ? it->cat : kCn;
}

bool is_white_space(char32_t c) {
  // Unicode White_Space property: what Oniguruma's \s matches for UTF-8 text.
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_letter(char32_t c) {
  int k = category(c);
  return k >= kLu && k <= kLo;
}

bool is_number(char32_t c) {
  int k = category(c);
  return k >= kNd && k <= kNo;
}

bool decode_utf8(std::string_view s, std::u32string* out) {
  out->clear();
  out->reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char b = s[i];
    int n;
    char32_t cp;
    if (b < 0x80) { cp = b; n = 0; }
    else if ((b & 0xE0) == 0xC0) { cp = b & 0x1F; n = 1; }
    else if ((b & 0xF0) == 0xE0) { cp = b & 0x0F; n = 2; }
    else if ((b & 0xF8) == 0xF0) { cp = b & 0x07; n = 3; }
    else return false;
    if (n > 0 && i + n >= s.size()) return false;
    for (int k = 1; k <= n; ++k) {
      unsigned char cb = s[i + k];
      if ((cb & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cb & 0x3F);
    }
    // Reject overlong forms, surrogates and out-of-range values: Python str never holds them.
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    out->push_back(cp);
    i += n + 1;
  }
  return true;
}

void append_utf8(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace unicode

// ============================================================================================
// Pattern tree
// ============================================================================================
namespace {

using unicode::category;

// One item of a character class.
struct ClassItem {
  enum Kind { kRange, kCategories, kSpace, kWord } kind;
  char32_t lo = 0, hi = 0;  // kRange
  uint32_t cat_mask = 0;     // kCategories: bit per unicode::Category
  bool negated = false;      // \P{..}, \S, \W, \D

  bool matches(char32_t c) const {
    bool r = false;
    switch (kind) {
      case kRange: return c >= lo && c <= hi;
      case kCategories: r = (cat_mask >> category(c)) & 1u; break;
      case kSpace: r = unicode::is_white_space(c); break;
      case kWord: {
        int k = category(c);
        r = (k >= unicode::kLu && k <= unicode::kNd) || k == unicode::kPc;  // L, M, Nd, Pc
        break;
      }
    }
    return r != negated;
  }
};

constexpr uint32_t bit(int c) { return 1u << c; }

// Maps \p{Name} to a category mask; 0 if unknown.
uint32_t category_mask(const std::string& name) {
  using namespace unicode;
  static const char* kNames[] = {"Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd",
                                 "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm",
                                 "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};
  for (int i = 0; i < 30; ++i)
    if (name == kNames[i]) return bit(i);
  uint32_t m = 0;
  std::string n = name;
  if (n == "Letter") n = "L";
  else if (n == "Mark") n = "M";
  else if (n == "Number") n = "N";
  else if (n == "Punctuation") n = "P";
  else if (n == "Symbol") n = "S";
  else if (n == "Separator") n = "Z";
  else if (n == "Other") n = "C";
  if (n.size() != 1) return 0;
  for (int i = 0; i < 30; ++i)
    if (kNames[i][0] == n[0]) m |= bit(i);
  return m;
}

}  // namespace

struct UnicodeRegex::Node {
  enum Kind { kSet, kAny, kSeq, kAlt, kRepeat, kLook, kEmpty } kind;
  std::vector<ClassItem> items;  // kSet
  bool set_negated = false;      // kSet
  std::vector<std::unique_ptr<Node>> kids;  // kSeq, kAlt, kRepeat (1), kLook (1)
  int min = 0, max = -1;         // kRepeat; max -1 = unbounded
  bool greedy = true;            // kRepeat
  bool negative = false;         // kLook

  explicit Node(Kind k) : kind(k) {}

  bool single_char() const { return kind == kSet || kind == kAny; }
  bool matches_char(char32_t c) const {
    if (kind == kAny) return c != U'\n';
    bool any = false;
    for (const auto& it : items)
      if (it.matches(c)) {
        any = true;
        break;
      }
    return any != set_negated;
  }
};

using Node = UnicodeRegex::Node;

// ============================================================================================
// Parser
// ============================================================================================
namespace {

class Parser {
 public:
  explicit Parser(std::u32string p) : p_(std::move(p)) {}

  std::unique_ptr<Node> parse() {
    auto n = alt(false);
    if (i_ != p_.size()) fail("unbalanced ')'");
    return n;
  }

 private:
  std::u32string p_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("unsupported pre-tokenizer regex (" + what + " at position " +
                             std::to_string(i_) + ")");
  }
  bool more() const { return i_ < p_.size(); }
  char32_t peek() const { return p_[i_]; }
  bool eat(char32_t c) {
    if (more() && p_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }

  std::unique_ptr<Node> alt(bool icase) {
    auto a = std::make_unique<Node>(Node::kAlt);
    a->kids.push_back(seq(icase));
    while (eat(U'|')) a->kids.push_back(seq(icase));
    if (a->kids.size() == 1) return std::move(a->kids[0]);
    return a;
  }

  std::unique_ptr<Node> seq(bool icase) {
    auto s = std::make_unique<Node>(Node::kSeq);
    while (more() && peek() != U'|' && peek() != U')') {
      // "(?i)" switches case folding on for the rest of the enclosing group.
      if (p_.compare(i_, 4, U"(?i)") == 0) {
        i_ += 4;
        icase = true;
        continue;
      }
      auto atom_node = atom(icase);
      s->kids.push_back(quantified(std::move(atom_node)));
    }
    if (s->kids.empty()) return std::make_unique<Node>(Node::kEmpty);
    if (s->kids.size() == 1) return std::move(s->kids[0]);
    return s;
  }

  std::unique_ptr<Node> quantified(std::unique_ptr<Node> a) {
    int lo, hi;
    if (eat(U'?')) { lo = 0; hi = 1; }
    else if (eat(U'*')) { lo = 0; hi = -1; }
    else if (eat(U'+')) { lo = 1; hi = -1; }
    else if (more() && peek() == U'{' && counted(&lo, &hi)) {}
    else return a;
    auto r = std::make_unique<Node>(Node::kRepeat);
    r->min = lo;
    r->max = hi;
    if (eat(U'?')) r->greedy = false;
    else if (more() && peek() == U'+') fail("possessive quantifier");
    r->kids.push_back(std::move(a));
    return r;
  }

  // {n}, {n,}, {n,m}; leaves i_ untouched and returns false when '{' is a literal.
  bool counted(int* lo, int* hi) {
    size_t save = i_;
    ++i_;
    auto num = [&](int* out) {
      size_t st = i_;
      long v = 0;
      while (more() && peek() >= U'0' && peek() <= U'9') v = v * 10 + (p_[i_++] - U'0');
      *out = static_cast<int>(v);
      return i_ > st;
    };
    if (!num(lo)) { i_ = save; return false; }
    *hi = *lo;
    if (eat(U',')) {
      if (!num(hi)) *hi = -1;
    }
    if (!eat(U'}')) { i_ = save; return false; }
    return true;
  }

  std::unique_ptr<Node> literal(char32_t c, bool icase) {
    auto n = std::make_unique<Node>(Node::kSet);
    ClassItem it{ClassItem::kRange};
    it.lo = it.hi = c;
    n->items.push_back(it);
    if (icase) add_other_case(n->items, c, c);
    return n;
  }

  // Case folding for (?i:...). The patterns in the wild only fold ASCII contractions ('s, 'T, ...).
  static void add_other_case(std::vector<ClassItem>& items, char32_t lo, char32_t hi) {
    for (char32_t c = lo; c <= hi && c < 0x80; ++c) {
      char32_t o = 0;
      if (c >= U'a' && c <= U'z') o = c - 32;
      else if (c >= U'A' && c <= U'Z') o = c + 32;
      if (o) {
        ClassItem it{ClassItem::kRange};
        it.lo = it.hi = o;
        items.push_back(it);
      }
    }
  }

  std::unique_ptr<Node> atom(bool icase) {
    char32_t c = p_[i_++];
    switch (c) {
      case U'(': return group(icase);
      case U'[': return char_class(icase);
      case U'.': return std::make_unique<Node>(Node::kAny);
      case U'^': case U'$': fail("anchor");
      case U'*': case U'+': case U'?': fail("quantifier without operand");
      case U'\\': {
        std::vector<ClassItem> items;
        char32_t lit;
        if (escape(&items, &lit)) {
          auto n = std::make_unique<Node>(Node::kSet);
          n->items = std::move(items);
          return n;
        }
        return literal(lit, icase);
      }
      default: return literal(c, icase);
    }
  }

  std::unique_ptr<Node> group(bool icase) {
    if (eat(U'?')) {
      if (eat(U':')) return close(alt(icase));
      if (eat(U'=') || (more() && peek() == U'!')) {
        bool neg = eat(U'!');
        auto look = std::make_unique<Node>(Node::kLook);
        look->negative = neg;
        look->kids.push_back(alt(icase));
        return close(std::move(look));
      }
      if (p_.compare(i_, 2, U"i:") == 0) {
        i_ += 2;
        return close(alt(true));
      }
      if (eat(U'<')) {
        if (more() && (peek() == U'=' || peek() == U'!')) fail("lookbehind");
        while (more() && peek() != U'>') ++i_;  // named group: the name does not matter here
        if (!eat(U'>')) fail("bad group name");
        return close(alt(icase));
      }
      fail("group flag");
    }
    return close(alt(icase));
  }

  std::unique_ptr<Node> close(std::unique_ptr<Node> n) {
    if (!eat(U')')) fail("missing ')'");
    return n;
  }

  // Parses the escape after '\'. Returns true and fills `items` for a class escape; otherwise stores
  // the literal code point in `lit`.
  bool escape(std::vector<ClassItem>* items, char32_t* lit) {
    if (!more()) fail("trailing backslash");
    char32_t e = p_[i_++];
    ClassItem it{ClassItem::kCategories};
    switch (e) {
      case U'p': case U'P': {
        std::string name;
        if (eat(U'{')) {
          bool neg = eat(U'^');
          while (more() && peek() != U'}') name.push_back(static_cast<char>(p_[i_++]));
          if (!eat(U'}')) fail("bad \\p{...}");
          it.negated = neg;
        } else if (more()) {
          name.push_back(static_cast<char>(p_[i_++]));
        }
        it.cat_mask = category_mask(name);
        if (!it.cat_mask) fail("unknown category \\p{" + name + "}");
        if (e == U'P') it.negated = !it.negated;
        items->push_back(it);
        return true;
      }
      case U's': case U'S':
        it.kind = ClassItem::kSpace;
        it.negated = e == U'S';
        items->push_back(it);
        return true;
      case U'd': case U'D':
        it.cat_mask = bit(unicode::kNd);
        it.negated = e == U'D';
        items->push_back(it);
        return true;
      case U'w': case U'W':
        it.kind = ClassItem::kWord;
        it.negated = e == U'W';
        items->push_back(it);
        return true;
      case U'n': *lit = U'\n'; return false;
      case U'r': *lit = U'\r'; return false;
      case U't': *lit = U'\t'; return false;
      case U'f': *lit = U'\f'; return false;
      case U'v': *lit = U'\v'; return false;
      case U'0': *lit = 0; return false;
      case U'x': case U'u': {
        char32_t v = 0;
        bool brace = eat(U'{');
        int max_digits = brace ? 8 : (e == U'x' ? 2 : 4);
        int n = 0;
        while (more() && n < max_digits && isxdigit(static_cast<int>(peek()))) {
          char32_t h = p_[i_++];
          v = v * 16 + (h <= U'9' ? h - U'0' : (h | 0x20) - U'a' + 10);
          ++n;
        }
        if (!n || (brace && !eat(U'}'))) fail("bad hex escape");
        *lit = v;
        return false;
      }
      default:
        if ((e >= U'a' && e <= U'z') || (e >= U'A' && e <= U'Z') || (e >= U'0' && e <= U'9'))
          fail(std::string("escape \\") + static_cast<char>(e));
        *lit = e;  // escaped punctuation
        return false;
    }
  }

  std::unique_ptr<Node> char_class(bool icase) {
    auto n = std::make_unique<Node>(Node::kSet);
    n->set_negated = eat(U'^');
    bool first = true;
    for (;;) {
      if (!more()) fail("unterminated class");
      char32_t c = p_[i_++];
      if (c == U']' && !first) break;
      first = false;
      if (c == U'[') fail("nested class");
      char32_t lo;
      if (c == U'\\') {
        if (escape(&n->items, &lo)) continue;
      } else {
        lo = c;
      }
      char32_t hi = lo;
      if (more() && peek() == U'-' && i_ + 1 < p_.size() && p_[i_ + 1] != U']') {
        ++i_;
        char32_t d = p_[i_++];
        if (d == U'\\') {
          std::vector<ClassItem> dummy;
          if (escape(&dummy, &d)) fail("class escape as range end");
        }
        hi = d;
        if (hi < lo) fail("reversed range");
      }
      ClassItem it{ClassItem::kRange};
      it.lo = lo;
      it.hi = hi;
      n->items.push_back(it);
      if (icase) add_other_case(n->items, lo, hi);
    }
    return n;
  }
};

// ============================================================================================
// Matcher: continuation-passing backtracking. A Cont says what must match after the current node.
// ============================================================================================
struct Cont {
  enum Kind { kSeqRest, kRepeatMore } kind;
  const Node* node;
  size_t idx;    // kSeqRest: next child; kRepeatMore: iterations done
  size_t start;  // kRepeatMore: where this iteration started (stops empty loops)
  const Cont* next;
};

class Matcher {
 public:
  explicit Matcher(const std::u32string& t) : t_(t) {}
  size_t end = 0;

  bool node(const Node* n, size_t i, const Cont* k) {
    switch (n->kind) {
      case Node::kSet:
      case Node::kAny:
        return i < t_.size() && n->matches_char(t_[i]) && cont(k, i + 1);
      case Node::kEmpty:
        return cont(k, i);
      case Node::kSeq:
        return seq(n, 0, i, k);
      case Node::kAlt:
        for (const auto& a : n->kids)
          if (node(a.get(), i, k)) return true;
        return false;
      case Node::kLook: {
        size_t saved = end;
        bool hit = node(n->kids[0].get(), i, nullptr);
        end = saved;
        return hit != n->negative && cont(k, i);
      }
      case Node::kRepeat: {
        const Node* kid = n->kids[0].get();
        if (kid->single_char()) {  // fast path: count the run once, then back off
          size_t run = 0;
          size_t cap = n->max < 0 ? t_.size() - i : static_cast<size_t>(n->max);
          while (run < cap && i + run < t_.size() && kid->matches_char(t_[i + run])) ++run;
          if (run < static_cast<size_t>(n->min)) return false;
          if (n->greedy) {
            for (size_t r = run + 1; r-- > static_cast<size_t>(n->min);)
              if (cont(k, i + r)) return true;
          } else {
            for (size_t r = n->min; r <= run; ++r)
              if (cont(k, i + r)) return true;
          }
          return false;
        }
        return repeat(n, 0, i, k);
      }
    }
    return false;
  }

 private:
  const std::u32string& t_;

  bool cont(const Cont* k, size_t i) {
    if (!k) {
      end = i;
      return true;
    }
    if (k->kind == Cont::kSeqRest) return seq(k->node, k->idx, i, k->next);
    if (i == k->start) return k->idx >= static_cast<size_t>(k->node->min) && cont(k->next, i);
    return repeat(k->node, k->idx, i, k->next);
  }

  bool seq(const Node* s, size_t idx, size_t i, const Cont* k) {
    if (idx == s->kids.size()) return cont(k, i);
    Cont c{Cont::kSeqRest, s, idx + 1, 0, k};
    return node(s->kids[idx].get(), i, &c);
  }

  bool repeat(const Node* n, size_t count, size_t i, const Cont* k) {
    bool can_more = n->max < 0 || count < static_cast<size_t>(n->max);
    bool can_stop = count >= static_cast<size_t>(n->min);
    Cont c{Cont::kRepeatMore, n, count + 1, i, k};
    if (n->greedy) {
      if (can_more && node(n->kids[0].get(), i, &c)) return true;
      return can_stop && cont(k, i);
    }
    if (can_stop && cont(k, i)) return true;
    return can_more && node(n->kids[0].get(), i, &c);
  }
};

}  // namespace

// ============================================================================================
// Public API
// ============================================================================================
UnicodeRegex::UnicodeRegex(std::string_view pattern_utf8) {
  std::u32string p;
  if (!unicode::decode_utf8(pattern_utf8, &p)) throw std::runtime_error("regex is not valid UTF-8");
  root_ = Parser(std::move(p)).parse();
}
UnicodeRegex::~UnicodeRegex() = default;
UnicodeRegex::UnicodeRegex(UnicodeRegex&&) noexcept = default;
UnicodeRegex& UnicodeRegex::operator=(UnicodeRegex&&) noexcept = default;

long UnicodeRegex::match_at(const std::u32string& text, size_t pos) const {
  Matcher m(text);
  if (!m.node(root_.get(), pos, nullptr)) return -1;
  return static_cast<long>(m.end - pos);
}

std::vector<std::pair<size_t, size_t>> UnicodeRegex::split_isolated(const std::u32string& text) const {
  std::vector<std::pair<size_t, size_t>> out;
  size_t gap = 0, pos = 0;
  while (pos < text.size()) {
    long len = match_at(text, pos);
    if (len <= 0) {  // no match here (an empty match counts as none, as in HF's find_iter use)
      ++pos;
      continue;
    }
    if (gap < pos) out.emplace_back(gap, pos);
    out.emplace_back(pos, pos + len);
    pos += len;
    gap = pos;
  }
  if (gap < text.size()) out.emplace_back(gap, text.size());
  return out;
}

}  // namespace tq
