// Test helper: encodes strings with tq::Tokenizer so tokenizer_vs_hf.py can compare against Hugging Face.
//
// Usage: test_tokenizer TOKENIZER_JSON STRINGS_FILE
//   STRINGS_FILE holds one JSON string literal per line. For each line prints
//   "<id> <id> ...\t<JSON-quoted decode(ids)>", or "ERROR\t<message>" when encoding fails.
#include <fstream>
#include <iostream>
#include <string>

#include "json.h"
#include "tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: test_tokenizer TOKENIZER_JSON STRINGS_FILE\n";
    return 2;
  }
  try {
    tq::Tokenizer tok = tq::Tokenizer::load(argv[1]);
    std::ifstream in(argv[2], std::ios::binary);
    if (!in) {
      std::cerr << "cannot open " << argv[2] << "\n";
      return 2;
    }
    std::string line;
    while (std::getline(in, line)) {
      std::string text = tq::Json::parse(line).str;
      try {
        std::vector<int64_t> ids = tok.encode(text);
        std::string out;
        for (size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
        std::cout << out << "\t" << tq::Json::quote(tok.decode(ids)) << "\n";
      } catch (const std::exception& e) {
        std::cout << "ERROR\t" << e.what() << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
