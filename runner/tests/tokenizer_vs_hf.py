"""Checks tq-runner's tokenizer against Hugging Face `tokenizers` on the same tokenizer.json files.

For each pre-tokenizer layout in use (Qwen2/3's Split regex, Llama 3's, GPT-4o's, plain GPT-2 ByteLevel)
this trains a small byte-level BPE with `tokenizers`, adds special and non-special tokens, saves
tokenizer.json, then encodes a corpus with Unicode, whitespace runs, contractions, digits, emoji and
special tokens (plus seeded random strings) both ways and requires identical ids and an exact decode
round trip.

Usage: python tokenizer_vs_hf.py --bin build/test_tokenizer --workdir DIR
Exit 77 (ctest SKIP) when `tokenizers` is not installed.
"""
import argparse
import json
import os
import random
import subprocess
import sys

try:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError:
    print("SKIP: the `tokenizers` package is not installed (pip install tokenizers)")
    sys.exit(77)

PATTERNS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "gpt4o": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "gpt2": None,  # ByteLevel(use_regex=True)
}

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>"]

CORPUS = [
    "Hello world! It's a test. They'll say we've done what I'd do, and you're right.",
    "HELLO WORLD. IT'S LOUD. WE'VE GOT CAPS'LL",
    "def main(argv):\n    return 42  # answer\n\n\nif __name__ == '__main__':\n\tmain(sys.argv)\n",
    "Numbers: 1234567890 3.14159 -2e10 1,000,000 ٣٤٥ ⅫⅯ ½ ²",
    "中文文本，包含标点符号。日本語のテキスト、カタカナ。한국어 텍스트입니다.",
    "Emoji 😀🎉👍🏽 and ZWJ 👨‍👩‍👧 sequences, flags 🇫🇷🇯🇵.",
    "Whitespace   runs\t\ttabs \n\n newlines\r\n crlf    \n   trailing   ",
    "Ünïcödé àccents, Ελληνικά, русский текст, עברית, العربية, हिन्दी, ไทย",
    "Special <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nok\n</think>\n<|endoftext|>",
    "URLs https://example.com/path?q=1&x=y and emails a.b@c.de, paths /usr/local/bin.",
    "Symbols: ©®™ €£¥ ±×÷ ≤≥≠ ∑∫√ → ← ↑ ↓ ★☆ ♥ §¶ †‡ «» „“ ‹› ‰ ′″",
    "Combining: e\u0301 a\u0308 n\u0303 and\u00a0nbsp\u3000ideographic\u2003em\u2009thin space",
    "Mixed123abc ABC123 a1b2c3 x_y_z CamelCaseWord lowerUPPER UPPERlower 'quoted' \"double\"",
]

EXTRA = [
    "", " ", "  ", "\n", "\n\n", " \n", "\n ", "a", " a", "a ", "  a", "a  ", "\t\ta", "a\n\n  b",
    "it's", "IT'S", "It'S", "'s", "'", "''", "'re'", "don't'll", "x'LL'd", "y'all",
    "   hello", "hello   ", "hello   world", "hello \n world", "a \r\n b", " \r\n\r\n ",
    "!!!", " !!!", "!!! ", "...\n", " ...\n\n", "a.b.c", "1 2 3", "12345", " 12345", "١٢٣",
    "<|im_end|>", "<|im_end|><|im_end|>", "a<|im_end|>b", " <|im_end|> ", "<|im_end", "<think>x</think>",
    "\u00a0", "a\u00a0b", "\u3000x", "x\u2028y", "\x0b\x0c", "\x1c\x1d", "\x85", "tab\there",
    "😀", " 😀", "😀😀", "é", "e\u0301", "ﬁ", "Ⅻ", "ǅungla", "ʰʲ", "ſ's", "'S", "'ſ",
    "CamelCase", "HTTPServer", "iPhone", "ABCdef GHIjkl", "ÀÉÎõü", "ΑΒΓαβγ",
]


def random_strings(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    alphabet = list("aAzZ09 '\t\n\r.,!?-_/<>|") + [
        "é", "ß", "中", "文", "😀", "\u00a0", "\u3000", "\u0301", "٣", "Ⅻ", "'s", "'LL", "<|im_end|>", "<think>",
        "  ", "\n\n", " \n", "ſ",
    ]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def build(kind: str, path: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if PATTERNS[kind] is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PATTERNS[kind]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    tok.add_tokens(ADDED)
    tok.save(path)
    return tok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to the test_tokenizer binary")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)

    texts = CORPUS + EXTRA + random_strings(400)
    strings_path = os.path.join(args.workdir, "strings.jsonl")
    with open(strings_path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")

    failures = 0
    for kind in PATTERNS:
        path = os.path.join(args.workdir, f"tokenizer_{kind}.json")
        hf = build(kind, path)
        out = subprocess.run([args.bin, path, strings_path], capture_output=True, check=False)
        if out.returncode != 0:
            print(f"[{kind}] test_tokenizer failed (rc={out.returncode}): {out.stderr.decode(errors='replace')}")
            return 1
        lines = out.stdout.decode("utf-8").split("\n")[: len(texts)]
        bad = 0
        for text, line in zip(texts, lines):
            ids_field, _, decoded = line.partition("\t")
            want = hf.encode(text, add_special_tokens=False).ids
            got = None if ids_field == "ERROR" else [int(x) for x in ids_field.split()]
            if got != want or json.loads(decoded or "null") != text:
                bad += 1
                if bad <= 5:
                    print(f"[{kind}] MISMATCH for {text!r}\n  hf : {want}\n  ours: {line!r}")
        print(f"[{kind}] {len(texts) - bad}/{len(texts)} strings identical")
        failures += bad
    if failures:
        print(f"FAIL: {failures} mismatches")
        return 1
    print("OK: tokenizer matches Hugging Face tokenizers on all strings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
