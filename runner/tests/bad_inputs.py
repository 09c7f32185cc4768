"""tq-runner on bad files, bad prompts and bad flags: one "error: <what> (<file>)" line on stderr, the
documented exit code, never a signal. Uses the CPU fixtures from make_fixtures.py when present (the
cases needing a real program are skipped otherwise).

Usage: python bad_inputs.py --runner build/tq-runner --fixtures DIR --workdir DIR
"""
import argparse
import os
import subprocess
import sys

FAILURES = []


def run(runner, args, expect_rc, expect_file=None, must_contain=None):
    proc = subprocess.run([runner, *args], capture_output=True, timeout=120, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    name = " ".join(args)[:110]
    problems = []
    if proc.returncode < 0:
        problems.append(f"killed by signal {-proc.returncode}")
    if proc.returncode != expect_rc:
        problems.append(f"exit {proc.returncode}, expected {expect_rc}")
    if expect_rc != 0:
        if len(lines) != 1:
            problems.append(f"stderr has {len(lines)} lines, expected 1")
        elif not lines[0].startswith("error: "):
            problems.append("stderr line does not start with 'error: '")
        elif expect_file is not None and not lines[0].endswith(f"({expect_file})"):
            problems.append(f"stderr line does not end with '({expect_file})'")
        if must_contain and must_contain not in err:
            problems.append(f"stderr lacks {must_contain!r}")
    if problems:
        FAILURES.append(name)
        print(f"FAIL  {name}\n      " + "; ".join(problems) + f"\n      stderr: {err.strip()[:400]!r}")
    else:
        print(f"ok    {name}\n      {lines[0] if lines else proc.stdout.decode(errors='replace').strip()[:120]}")
    return proc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runner", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    r, fx, wd = a.runner, a.fixtures, a.workdir
    os.makedirs(wd, exist_ok=True)

    def write(name, data: bytes) -> str:
        path = os.path.join(wd, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    empty = write("empty.pte", b"")
    garbage = write("garbage.pte", os.urandom(4096))
    text = write("text.pte", b"this is not a program\n" * 10)
    ptd_garbage = write("garbage.ptd", os.urandom(1000))
    tok_garbage = write("bad_tokenizer.json", b"{ not json")
    missing = os.path.join(wd, "does-not-exist.pte")

    # ---- needs no fixtures
    run(r, ["--model", missing, "--prompt-tokens", "1"], 2, missing, "not found")
    run(r, ["--model", empty, "--prompt-tokens", "1"], 2, empty)
    run(r, ["--model", garbage, "--prompt-tokens", "1"], 2, garbage)
    run(r, ["--model", text, "--prompt-tokens", "1"], 2, text)
    run(r, ["--model", wd, "--prompt-tokens", "1"], 2, wd)
    run(r, ["--bogus-flag"], 2, "command line")
    run(r, ["--model", missing, "--max-new-tokens", "ten"], 2, "command line")
    run(r, ["--model", missing, "--prompt", "a", "--prompt-tokens", "1"], 2, "command line")
    run(r, ["--extract-so", wd, "--model", garbage], 2, garbage)

    model = os.path.join(fx, "model.pte")
    if not os.path.exists(model):
        print("SKIP fixture cases: no fixtures (make_fixtures.py needs torch and executorch)")
    else:
        ptd = os.path.join(fx, "aoti_cuda_blob.ptd")
        with open(ptd, "rb") as f:
            ptd_bytes = f.read()
        ptd_trunc = write("truncated.ptd", ptd_bytes[: len(ptd_bytes) // 2])
        run(r, ["--model", os.path.join(fx, "truncated.pte"), "--data", ptd, "--prompt-tokens", "1"], 2,
            os.path.join(fx, "truncated.pte"))
        missing_ptd = os.path.join(wd, "missing.ptd")
        run(r, ["--model", model, "--data", missing_ptd, "--prompt-tokens", "1"], 2, missing_ptd, "not found")
        run(r, ["--model", model, "--data", ptd_garbage, "--prompt-tokens", "1"], 2, ptd_garbage)
        run(r, ["--model", model, "--data", ptd_trunc, "--prompt-tokens", "1"], 2, ptd_trunc)
        run(r, ["--model", model, "--data", model, "--prompt-tokens", "1"], 2, model)
        run(r, ["--model", os.path.join(fx, "foreign.pte"), "--data", ptd, "--prompt-tokens", "1"], 2,
            os.path.join(fx, "foreign.pte"), "not a tq-export program")
        too_long = ",".join(["5"] * 65)  # fixture max_seq_len is 64
        run(r, ["--model", model, "--prompt-tokens", too_long], 2, model, "max_seq_len")
        run(r, ["--model", model, "--prompt-tokens", "5,300"], 2, model, "out of range")
        run(r, ["--model", model, "--prompt-tokens", "-1"], 2, model, "out of range")
        run(r, ["--model", model, "--prompt-tokens", "1,x"], 2, "command line")
        no_file = os.path.join(wd, "no-prompt.txt")
        run(r, ["--model", model, "--prompt-tokens", "@" + no_file], 2, no_file, "cannot read")
        bad_file = write("bad-prompt.txt", b"1, 2\n3 y\n")
        run(r, ["--model", model, "--prompt-tokens", "@" + bad_file], 2, bad_file, "bad token id 'y'")
        long_file = write("long-prompt.txt", b"5\n" * 65)  # whitespace-separated, one past max_seq_len
        run(r, ["--model", model, "--prompt-tokens", "@" + long_file], 2, model, "max_seq_len")
        run(r, ["--model", model, "--tokenizer", tok_garbage, "--prompt", "hi"], 2, tok_garbage)
        run(r, ["--model", model, "--tokenizer", os.path.join(wd, "none.json"), "--prompt", "hi"], 2,
            os.path.join(wd, "none.json"))
        info = run(r, ["--model", model, "--info"], 0)
        for want in (b"max_seq_len        64", b"shared buffers     layers.0.attn.cache.k,layers.0.attn.cache.v"):
            if want not in info.stdout:
                FAILURES.append("--info")
                print(f"FAIL  --info lacks {want!r}:\n" + info.stdout.decode())
        run(r, ["--extract-so", wd, "--model", model], 2, model, "no AOTI .so")
        if os.path.exists(os.path.join(fx, "tokenizer.json")):
            run(r, ["--model", model, "--tokenize-only", "--prompt", "hello world"], 0)
        # Everything valid: without a GPU the runner must stop cleanly with exit 3.
        if not os.path.exists("/dev/nvidiactl"):
            run(r, ["--model", model, "--prompt-tokens", "1,2,3"], 3)
        else:
            print("SKIP no-GPU exit code case: this machine has a GPU")

    if FAILURES:
        print(f"{len(FAILURES)} case(s) failed")
        return 1
    print("all bad-input cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
