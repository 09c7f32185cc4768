// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (the Qwen2/Qwen3 family and other
// GPT-2 style byte-level BPE files).
//
// Pipeline, matching Hugging Face `tokenizers` for these files:
//   added/special tokens split out first (leftmost-longest) -> each remaining segment is split by the
//   pre-tokenizer regex(es) (Split behavior=Isolated, and/or ByteLevel use_regex) -> every piece's bytes
//   are mapped through GPT-2's bytes_to_unicode table -> BPE merges by rank, lowest first, leftmost on
//   ties -> vocab ids.
// Not applied: the NFC normalizer (input is assumed to be NFC already, which typed text almost always
// is). Other normalizers, non-byte-level models and unknown pre-tokenizers are rejected at load time
// so a tokenizer we cannot reproduce fails loudly instead of producing different ids.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "unicode_regex.h"

namespace tq {

struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Tokenizer {
 public:
  // Throws TokenizerError (unreadable file, bad JSON, unsupported configuration).
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json_text(std::string_view json_text);

  // Throws TokenizerError if `text` is not valid UTF-8.
  std::vector<int64_t> encode(std::string_view text) const;
  // Raw bytes of the tokens (may end inside a UTF-8 sequence; see Utf8Stream).
  std::string decode(const std::vector<int64_t>& ids) const;
  const std::string& token_bytes(int64_t id) const;
  // One past the largest id (vocab and added tokens).
  int64_t vocab_size() const { return static_cast<int64_t>(id_to_bytes_.size()); }
  // Id of an exact token string (added token content or vocab entry), or -1.
  int64_t token_id(std::string_view content) const;

 private:
  struct Added {
    std::string content;
    int64_t id;
    bool lstrip, rstrip, single_word;
  };

  std::unordered_map<std::string, int64_t> vocab_;   // byte-level unicode string -> id
  std::unordered_map<std::string, int> merge_rank_;  // "left right" -> rank
  std::vector<std::string> id_to_bytes_;             // id -> raw bytes
  std::vector<Added> added_;                         // sorted longest first
  std::vector<UnicodeRegex> splits_;                 // applied in order
  bool byte_level_regex_ = false;                    // ByteLevel(use_regex=true) adds GPT-2's regex
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  int64_t unk_id_ = -1;
  std::string byte_to_char_[256];  // bytes_to_unicode, as UTF-8

  void pre_tokenize(std::string_view segment, std::vector<std::string>* pieces) const;
  void bpe(const std::string& piece, std::vector<int64_t>* out) const;
};

// Streams decoded token bytes to complete UTF-8 characters, holding back a partial sequence until the
// next token completes it.
class Utf8Stream {
 public:
  std::string push(std::string_view bytes);
  std::string flush();

 private:
  std::string pending_;
};

}  // namespace tq
