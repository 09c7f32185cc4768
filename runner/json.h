// Minimal JSON reader for tokenizer.json and test inputs.
//
// Why our own: the runner must build from the executorch wheel and the CUDA toolkit alone (the GPU host
// has no package registry), and a 10 MB tokenizer.json needs nothing beyond objects, arrays, strings and
// numbers. Errors throw tq::JsonError with the byte offset.
#pragma once

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tq {

struct JsonError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Type type = Type::Null;
  bool b = false;
  double num = 0;
  int64_t i64 = 0;  // exact value when the number is an integer literal
  std::string str;
  std::vector<Json> arr;
  std::vector<std::pair<std::string, Json>> obj;  // keeps file order

  bool is_null() const { return type == Type::Null; }
  bool is_string() const { return type == Type::String; }
  bool is_array() const { return type == Type::Array; }
  bool is_object() const { return type == Type::Object; }
  bool is_number() const { return type == Type::Number; }
  bool is_bool() const { return type == Type::Bool; }

  // Member lookup; nullptr when absent or when this is not an object.
  const Json* get(std::string_view key) const {
    if (type != Type::Object) return nullptr;
    for (const auto& kv : obj)
      if (kv.first == key) return &kv.second;
    return nullptr;
  }
  std::string get_string(std::string_view key, const std::string& dflt = "") const {
    const Json* v = get(key);
    return v && v->is_string() ? v->str : dflt;
  }
  bool get_bool(std::string_view key, bool dflt = false) const {
    const Json* v = get(key);
    return v && v->is_bool() ? v->b : dflt;
  }

  static Json parse(std::string_view text) {
    Parser p{text, 0};
    p.ws();
    Json v = p.value(0);
    p.ws();
    if (p.i != text.size()) p.fail("trailing characters");
    return v;
  }

  // Encodes a string as a JSON string literal (used by tests to print decoded text).
  static std::string quote(std::string_view s) {
    std::string out = "\"";
    for (unsigned char c : s) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20) {
            char buf[8];
            snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
    }
    return out + "\"";
  }

 private:
  struct Parser {
    std::string_view s;
    size_t i;

    [[noreturn]] void fail(const char* what) const {
      throw JsonError(std::string("JSON: ") + what + " at byte " + std::to_string(i));
    }
    void ws() {
      while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
    }
    bool eat(char c) {
      if (i < s.size() && s[i] == c) {
        ++i;
        return true;
      }
      return false;
    }
    void expect_word(const char* w) {
      for (const char* p = w; *p; ++p)
        if (!eat(*p)) fail("bad literal");
    }

    Json value(int depth) {
      if (depth > 256) fail("nesting too deep");
      if (i >= s.size()) fail("unexpected end");
      Json v;
      char c = s[i];
      if (c == '{') {
        ++i;
        v.type = Type::Object;
        ws();
        if (eat('}')) return v;
        for (;;) {
          ws();
          if (i >= s.size() || s[i] != '"') fail("expected key");
          std::string k = string();
          ws();
          if (!eat(':')) fail("expected ':'");
          ws();
          v.obj.emplace_back(std::move(k), value(depth + 1));
          ws();
          if (eat('}')) return v;
          if (!eat(',')) fail("expected ',' or '}'");
        }
      } else if (c == '[') {
        ++i;
        v.type = Type::Array;
        ws();
        if (eat(']')) return v;
        for (;;) {
          ws();
          v.arr.push_back(value(depth + 1));
          ws();
          if (eat(']')) return v;
          if (!eat(',')) fail("expected ',' or ']'");
        }
      } else if (c == '"') {
        v.type = Type::String;
        v.str = string();
      } else if (c == 't') {
        expect_word("true");
        v.type = Type::Bool;
        v.b = true;
      } else if (c == 'f') {
        expect_word("false");
        v.type = Type::Bool;
      } else if (c == 'n') {
        expect_word("null");
      } else {
        number(v);
      }
      return v;
    }

    void number(Json& v) {
      size_t start = i;
      bool integer = true;
      if (eat('-')) {}
      if (i >= s.size() || !isdigit(static_cast<unsigned char>(s[i]))) fail("bad number");
      while (i < s.size() && isdigit(static_cast<unsigned char>(s[i]))) ++i;
      if (eat('.')) {
        integer = false;
        while (i < s.size() && isdigit(static_cast<unsigned char>(s[i]))) ++i;
      }
      if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        integer = false;
        ++i;
        if (!eat('+')) eat('-');
        while (i < s.size() && isdigit(static_cast<unsigned char>(s[i]))) ++i;
      }
      std::string tok(s.substr(start, i - start));
      v.type = Type::Number;
      v.num = std::stod(tok);
      v.i64 = integer ? std::stoll(tok) : static_cast<int64_t>(v.num);
    }

    unsigned hex4() {
      if (i + 4 > s.size()) fail("bad \\u escape");
      unsigned v = 0;
      for (int k = 0; k < 4; ++k) {
        char c = s[i++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else fail("bad hex digit");
      }
      return v;
    }

    static void put_utf8(std::string& out, uint32_t cp) {
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }

    std::string string() {
      ++i;  // opening quote
      std::string out;
      for (;;) {
        if (i >= s.size()) fail("unterminated string");
        char c = s[i++];
        if (c == '"') return out;
        if (c != '\\') {
          out += c;
          continue;
        }
        if (i >= s.size()) fail("unterminated escape");
        char e = s[i++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            uint32_t cp = hex4();
            if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= s.size() && s[i] == '\\' && s[i + 1] == 'u') {
              size_t save = i;
              i += 2;
              uint32_t lo = hex4();
              if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
              else i = save;  // lone high surrogate: keep as is
            }
            put_utf8(out, cp);
            break;
          }
          default: fail("bad escape");
        }
      }
    }
  };
};

}  // namespace tq
