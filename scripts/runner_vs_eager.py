"""Check tq-runner's greedy tokens against Python eager for a `tq-export --tiny` program (GPU host).

    python scripts/runner_vs_eager.py --runner build/runner/tq-runner --artifacts out/ [--turboquant]

Rebuilds the same tiny checkpoint the CLI builds (it is seeded), runs the eager model on CUDA in
bf16, and runs the runner with the same prompt tokens at temperature 0. Exits 0 when the 32 tokens
are identical; where they differ, reports whether eager's top-2 logits were a near-tie there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import tq_kernels  # noqa: F401
from tq_export import models
from tq_export.rewrite import apply_turboquant
from tq_export.tiny import make_tiny_checkpoint


@torch.no_grad()
def eager_greedy(model, prompt: list[int], steps: int):
    model.reset()
    ids = torch.tensor([prompt], device="cuda")
    logits = model(ids, torch.arange(len(prompt), device="cuda"))[0, -1]
    out, margins, pos = [], [], len(prompt)
    for _ in range(steps):
        top2 = logits.float().topk(2).values
        margins.append(float(top2[0] - top2[1]))
        tok = int(logits.argmax())
        out.append(tok)
        logits = model(torch.tensor([[tok]], device="cuda"), torch.tensor([pos], device="cuda"))[0, -1]
        pos += 1
    return out, margins


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner", required=True, help="tq-runner executable")
    ap.add_argument("--artifacts", required=True, help="tq-export output dir (model.pte, aoti_cuda_blob.ptd)")
    ap.add_argument("--turboquant", action="store_true", help="the program was exported with --turboquant")
    ap.add_argument("--max-seq-len", type=int, default=4096, help="as given to tq-export")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    prompt = [1, 2, 3, 4, 5, 6, 7]
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_checkpoint(tmp)
        model = models.load(tmp, max_seq_len=args.max_seq_len, dtype=torch.bfloat16, device="cuda")
    if args.turboquant:
        apply_turboquant(model)
    want, margins = eager_greedy(model, prompt, args.steps)
    art = Path(args.artifacts)
    cmd = [args.runner, "--model", str(art / "model.pte"), "--data", str(art / "aoti_cuda_blob.ptd"),
           "--prompt-tokens", ",".join(map(str, prompt)), "--max-new-tokens", str(args.steps),
           "--temperature", "0", "--print-token-ids"]
    # The runner streams the decoded text of random-weight tokens: not valid UTF-8, so decode leniently.
    run = subprocess.run(cmd, capture_output=True)
    stdout, stderr = (b.decode("utf-8", errors="replace") for b in (run.stdout, run.stderr))
    lines = [ln for ln in stdout.splitlines() if ln.startswith("token ids:")]
    got = [int(t) for t in lines[-1].split(":", 1)[1].split()] if lines else []
    first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), None)
    result = {"turboquant": args.turboquant, "eager": want, "runner": got, "runner_rc": run.returncode,
              "identical": got == want, "first_mismatch": first,
              "margin_at_mismatch": margins[first] if first is not None and first < len(margins) else None,
              "runner_stderr_tail": stderr[-1500:]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"eager : {want}\nrunner: {got}\nidentical: {got == want}  (runner exit {run.returncode})")
    print(stderr[-1500:], file=sys.stderr)
    return 0 if got == want else 1


if __name__ == "__main__":
    raise SystemExit(main())
