"""End-to-end benchmark through tq-runner: bf16 KV cache vs TurboQuant cache on a "bench" model.

    python scripts/bench_e2e.py --work build/bench [--layers 4] [--runs 3] [--stage all]
                                [--contexts 1024,8192,32768,131072] [--prompts 512,4096]
                                [--decode-tokens 64] [--runner build/runner/tq-runner] [--commit SHA]

The bench model has Qwen3.5-35B-A3B's layer shapes with fewer layers, random weights (BENCH_CONFIG):
hidden 2048; full attention 16 query / 2 KV heads x 256; gated delta net 16 key / 32 value heads x
128, conv kernel 4; 256 routed experts of width 512, top-8, plus a shared expert of 512; vocab
248320 (embedding and untied lm_head). `--layers` (a multiple of 4) keeps the real model's pattern of
three gated-delta layers then one full-attention layer: the default 4 layers are layers 0-3 of the
real 40, with 1 of its 10 KV caches. Per decoded token the bench model reads ~1 GB of lm_head and
~0.2 GB of experts against the real model's ~6 GB of weights, so the KV cache (and TurboQuant's
saving on it) weighs about as much relative to the weights as in the real model with 4x fewer layers.

Stages (each skips what its outputs show is done, so they can run as separate
invocations, each under a time limit; --force redoes):
  checkpoint  WORK/ckpt: the random checkpoint, bf16, written by transformers (tq_export.tiny)
  export      WORK/bf16 and WORK/tq: `tq-export --checkpoint WORK/ckpt [--turboquant]`, with
              max_seq_len = the largest context + decode tokens and max_prefill 4096
  run         tq-runner on each program: prompt eval at each --prompts length; decode at each
              --contexts length (a prompt of that many tokens, then --decode-tokens tokens with
              --ignore-eos); --warmup 1 --iters RUNS, so every number is a median of RUNS
              generations; peak GPU memory. Results in WORK/results.json.
  report      a markdown table appended to results/e2e.md and a PNG (decode tok/s vs context for both
              caches; KV cache memory vs context) at results/e2e.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from _results import commit_id, publish  # noqa: E402

BENCH_CONFIG = {
    "vocab_size": 248320, "hidden_size": 2048,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
    "num_experts": 256, "num_experts_per_tok": 8,
    "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25},
    "max_position_embeddings": 262144, "initializer_range": 0.02, "tie_word_embeddings": False,
}
VARIANTS = {"bf16": [], "tq": ["--turboquant"]}
MAX_PREFILL = 4096


def bench_overrides(layers: int) -> dict:
    if layers < 4 or layers % 4:
        raise ValueError(f"--layers must be a positive multiple of 4 (3 gated-delta + 1 full attention), got {layers}")
    pattern = ["linear_attention"] * 3 + ["full_attention"]
    return {**BENCH_CONFIG, "num_hidden_layers": layers, "layer_types": pattern * (layers // 4)}


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def stage_checkpoint(work: Path, layers: int, force: bool) -> Path:
    ckpt = work / "ckpt"
    done = ckpt / "config.json"
    if done.is_file() and not force:
        log(f"checkpoint: {ckpt} exists")
        return ckpt
    import torch

    from tq_export.tiny import make_tiny_checkpoint

    log(f"checkpoint: writing a random {layers}-layer bench checkpoint to {ckpt} (bf16)")
    make_tiny_checkpoint(ckpt, dtype=torch.bfloat16, max_shard_size="4GB", embed_shared=0.0,
                         **bench_overrides(layers))
    return ckpt


def max_seq_len(contexts: list[int], decode_tokens: int) -> int:
    return max(contexts) + decode_tokens + 1


def stage_export(work: Path, seq_len: int, force: bool, gemm_configs: int | None) -> None:
    """Export both variants at once (they share the GPU; lowering is mostly CPU-bound compiling)."""
    procs = {}
    for variant, flags in VARIANTS.items():
        out = work / variant
        if (out / "model.pte").is_file() and not force:
            log(f"export {variant}: {out} exists")
            continue
        cmd = [sys.executable, "-m", "tq_export", "--model", "qwen3.5-moe", "--checkpoint", str(work / "ckpt"),
               *flags, "--max-seq-len", str(seq_len), "--max-prefill", str(MAX_PREFILL), "-o", str(out)]
        if gemm_configs is not None:
            cmd += ["--gemm-configs", str(gemm_configs)]
        log(f"export {variant}: {' '.join(cmd[1:])} (log: {work / f'export_{variant}.log'})")
        procs[variant] = subprocess.Popen(cmd, stdout=open(work / f"export_{variant}.log", "w"),
                                          stderr=subprocess.STDOUT)
    failed = [v for v, p in procs.items() if p.wait() != 0]
    if failed:
        raise SystemExit(f"error: export failed for {', '.join(failed)} (see {work}/export_<variant>.log)")


STAT_PATTERNS = {
    "prompt_ms": r"^prompt eval\s+([\d.]+) ms",
    "prompt_tok_s": r"^prompt eval\s+.*?([\d.]+) tok/s",
    "decode_ms_per_token": r"^eval\s+([\d.]+) ms/token",
    "decode_tok_s": r"^eval\s+.*?([\d.]+) tok/s",
    "decode_steps": r"^eval\s+[\d.]+ ms/token\s+(\d+) tokens",
    "peak_gpu_mib": r"^gpu memory\s+([\d.]+) MiB peak",
}


def parse_stats(stderr: str) -> dict:
    """The numbers of tq-runner's fixed-width stats lines (medians over its timed iterations)."""
    stats = {}
    for key, pattern in STAT_PATTERNS.items():
        m = re.search(pattern, stderr, re.M)
        if m:
            stats[key] = float(m.group(1))
    return stats


def run_runner(runner: Path, program: Path, prompt_file: Path, new_tokens: int, runs: int) -> dict:
    cmd = [str(runner), "--model", str(program / "model.pte"), "--data", str(program / "aoti_cuda_blob.ptd"),
           "--prompt-tokens", f"@{prompt_file}", "--max-new-tokens", str(new_tokens), "--ignore-eos",
           "--temperature", "0", "--warmup", "1", "--iters", str(runs)]
    proc = subprocess.run(cmd, capture_output=True)
    stderr = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"tq-runner exit {proc.returncode}: {stderr.strip().splitlines()[-1:]}")
    return parse_stats(stderr)


def prompt_file(work: Path, length: int, vocab: int) -> Path:
    """A fixed random prompt of `length` token ids (seeded by its length)."""
    path = work / "prompts" / f"{length}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(length)
        path.write_text("\n".join(str(rng.randrange(vocab)) for _ in range(length)) + "\n")
    return path


def stage_run(work: Path, runner: Path, prompts: list[int], contexts: list[int], decode_tokens: int,
              runs: int) -> dict:
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    vocab = BENCH_CONFIG["vocab_size"]
    for variant in VARIANTS:
        program = work / variant
        report = json.loads((program / "export_report.json").read_text())
        entry = results.setdefault(variant, {"prompt": {}, "decode": {}})
        entry["kv_cache"] = report["kv_cache"]
        for length in prompts:
            log(f"run {variant}: prompt eval, {length} tokens")
            entry["prompt"][str(length)] = run_runner(runner, program, prompt_file(work, length, vocab), 1, runs)
        for context in contexts:
            log(f"run {variant}: decode at {context} tokens of context")
            stats = run_runner(runner, program, prompt_file(work, context, vocab), decode_tokens + 1, runs)
            entry["decode"][str(context)] = stats
            log(f"  {stats.get('decode_tok_s', float('nan')):.1f} tok/s, peak {stats.get('peak_gpu_mib', 0):.0f} MiB")
        results_path.write_text(json.dumps(results, indent=1))
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def kv_bytes(entry: dict, context: int) -> tuple[int, int]:
    """(bf16, TurboQuant) KV-cache bytes at `context` tokens, from tq-export's per-token counts."""
    per_token = entry["kv_cache"]["bytes_per_token"]
    return per_token["bf16"] * context, per_token["turboquant"] * context


def table(results: dict, meta: dict) -> str:
    bf, tq = results["bf16"], results["tq"]
    lines = [f"\n## {meta['date']}: {meta['gpu']}, commit {meta['commit']}, {meta['layers']}-layer bench model, "
             f"median of {meta['runs']} runs, {meta.get('decode_tokens', '?')} decode steps per run, "
             f"GEMM configs tried per GEMM at export: {meta.get('gemm_configs', 'default')}\n",
             "| case | bf16 cache tok/s | TQ4 cache tok/s | TQ4 / bf16 | peak GPU MiB (bf16 / TQ4) | "
             "KV cache MiB (bf16 / TQ4) | KV ratio |",
             "|---|---|---|---|---|---|---|"]
    for length in sorted(bf["prompt"], key=int):
        a, b = bf["prompt"][length], tq["prompt"].get(length, {})
        lines.append(_row(f"prompt eval {int(length)}", a.get("prompt_tok_s"), b.get("prompt_tok_s"), a, b,
                          kv_bytes(tq, int(length))))
    for context in sorted(bf["decode"], key=int):
        a, b = bf["decode"][context], tq["decode"].get(context, {})
        lines.append(_row(f"decode at {int(context)}", a.get("decode_tok_s"), b.get("decode_tok_s"), a, b,
                          kv_bytes(tq, int(context))))
    return "\n".join(lines) + "\n"


def _row(name, bf_rate, tq_rate, a, b, kv) -> str:
    ratio = f"{tq_rate / bf_rate:.2f}x" if bf_rate and tq_rate else "-"
    mib = 2 ** 20
    return (f"| {name} | {bf_rate or float('nan'):.1f} | {tq_rate or float('nan'):.1f} | {ratio} | "
            f"{a.get('peak_gpu_mib', float('nan')):.0f} / {b.get('peak_gpu_mib', float('nan')):.0f} | "
            f"{kv[0] / mib:.1f} / {kv[1] / mib:.1f} | {kv[0] / kv[1]:.2f}x |")


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, label in (("bf16", "bf16 KV cache"), ("tq", "TurboQuant 4-bit KV cache")):
        ctx = sorted(int(c) for c in results[variant]["decode"])
        rate = [results[variant]["decode"][str(c)].get("decode_tok_s") for c in ctx]
        ax1.plot(ctx, rate, marker="o", label=label)
        kv = [kv_bytes(results[variant], c)[0 if variant == "bf16" else 1] / 2 ** 20 for c in ctx]
        ax2.plot(ctx, kv, marker="o", label=label)
    for ax, ylabel in ((ax1, "decode tokens/s"), (ax2, "KV cache MiB (batch 1)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax2.set_yscale("log", base=2)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def stage_report(work: Path, out_md: Path, out_png: Path, meta: dict) -> None:
    results = json.loads((work / "results.json").read_text())
    publish(table(results, meta), out_md, work / "report.json", {"meta": meta, "results": results})
    plot(results, out_png, f"{meta['layers']}-layer Qwen3.5-35B-A3B-shaped model, {meta['gpu']}")
    log(f"report: {out_md}, {out_png}")


# --------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench", help="checkpoint, programs, logs")
    ap.add_argument("--stage", choices=("all", "checkpoint", "export", "run", "report"), default="all")
    ap.add_argument("--layers", type=int, default=4, help="layers of the bench model, a multiple of 4")
    ap.add_argument("--prompts", type=int_list, default=[512, 4096], help="prompt-eval lengths")
    ap.add_argument("--contexts", type=int_list, default=[1024, 8192, 32768, 131072], help="decode contexts")
    ap.add_argument("--decode-tokens", type=int, default=64, help="decode steps timed per generation")
    ap.add_argument("--runs", type=int, default=3, help="timed generations per case (medians)")
    ap.add_argument("--runner", type=Path, default=ROOT / "build" / "runner" / "tq-runner")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "e2e.md")
    ap.add_argument("--png", type=Path, default=ROOT / "results" / "e2e.png")
    ap.add_argument("--commit", help="commit the results belong to (default: git HEAD)")
    ap.add_argument("--gemm-configs", type=int, help="passed to tq-export (default: tq-export's own)")
    ap.add_argument("--force", action="store_true", help="redo stages whose outputs exist")
    a = ap.parse_args()
    try:
        bench_overrides(a.layers)
    except ValueError as e:
        ap.error(str(e))
    a.work.mkdir(parents=True, exist_ok=True)
    stages = ("checkpoint", "export", "run", "report") if a.stage == "all" else (a.stage,)
    if "checkpoint" in stages:
        stage_checkpoint(a.work, a.layers, a.force)
    if "export" in stages:
        stage_export(a.work, max_seq_len(a.contexts, a.decode_tokens), a.force, a.gemm_configs)
    if "run" in stages:
        if not a.runner.is_file():
            ap.error(f"no tq-runner at {a.runner} (build it: cmake -S . -B build/runner && cmake --build build/runner)")
        stage_run(a.work, a.runner, a.prompts, a.contexts, a.decode_tokens, a.runs)
    if "report" in stages:
        import torch

        meta = {"date": datetime.date.today().isoformat(), "commit": commit_id(a.commit),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown GPU",
                "layers": a.layers, "runs": a.runs, "decode_tokens": a.decode_tokens}
        report = json.loads((a.work / "tq" / "export_report.json").read_text())
        meta["gemm_configs"] = report.get("gemm_configs")
        stage_report(a.work, a.out, a.png, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
