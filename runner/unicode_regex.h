// A small backtracking regex engine over Unicode code points, for tokenizer pre-tokenizer patterns.
//
// Why: Hugging Face tokenizer.json files split text with Oniguruma patterns such as Qwen2/3's
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// std::regex knows no \p{..} classes and we link no regex library, so this engine implements exactly the
// subset such patterns use: literals, classes with \p{Cat}/\P{Cat}/\s/\d/\w, '.', groups (?:..) and
// (?i:..), alternation, greedy and lazy quantifiers (? * + {n,m}), and lookahead (?=..) (?!..).
// Alternatives are tried in order and the first one that lets the rest match wins, as in Oniguruma.
// Anything else (anchors, lookbehind, backreferences, possessive quantifiers) is rejected at parse time,
// so an unsupported tokenizer fails loudly instead of tokenizing differently.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tq {

class UnicodeRegex {
 public:
  // Throws std::runtime_error naming the unsupported construct.
  explicit UnicodeRegex(std::string_view pattern_utf8);
  ~UnicodeRegex();
  UnicodeRegex(UnicodeRegex&&) noexcept;
  UnicodeRegex& operator=(UnicodeRegex&&) noexcept;

  // Length in code points of the match that starts exactly at `pos`, or -1 if none.
  long match_at(const std::u32string& text, size_t pos) const;

  // Hugging Face Split(behavior="Isolated"): every match and every gap between matches becomes its own
  // piece, in order. Returns [begin, end) code point ranges covering the whole text.
  std::vector<std::pair<size_t, size_t>> split_isolated(const std::u32string& text) const;

  struct Node;

 private:
  std::unique_ptr<Node> root_;
};

namespace unicode {
// General category index of a code point (see unicode_tables.h), and the White_Space property that
// Oniguruma's \s uses.
int category(char32_t c);
bool is_white_space(char32_t c);
bool is_letter(char32_t c);
bool is_number(char32_t c);

// UTF-8 <-> UTF-32. decode returns false on malformed input.
bool decode_utf8(std::string_view s, std::u32string* out);
void append_utf8(std::string* out, char32_t c);
}  // namespace unicode

}  // namespace tq
