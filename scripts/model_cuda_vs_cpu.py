"""The whole tiny model on CUDA (Triton kernels behind every tq:: op) against its CPU reference.

    python scripts/model_cuda_vs_cpu.py [--json FILE] [--prompt 64] [--steps 16]

On the CPU every tq:: op runs its pure-torch reference; on CUDA the same model code runs the Triton
kernels (gated delta rule, causal conv, MoE experts; tq4_sdpa with the TurboQuant cache). Both run
the same token sequence (a prompt prefilled in one call, then teacher-forced single-token decode
steps) in bf16. Gate, with the bf16 KV cache: the cosine of every position's logits, CUDA vs the CPU
model in the same dtype, is >= 0.999. The TurboQuant cache is reported, not gated: quantizing is
discontinuous, so a key that CUDA and CPU compute a bf16 ulp apart can land on different codebook
entries, a real but legitimate difference that has nothing to do with the kernels' arithmetic.
Also reported: greedy agreement and the cosine against an fp32 CPU model (how far bf16 itself moves
the logits).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import tq_kernels  # noqa: F401  (registers the tq:: ops)
from tq_export import models
from tq_export.rewrite import apply_turboquant
from tq_export.tiny import make_tiny_checkpoint

GATE = 0.999


@torch.no_grad()
def logits_along(model, tokens: torch.Tensor, prompt: int, device: str) -> torch.Tensor:
    """Logits [positions, vocab] (fp32, CPU) for the prefill's last position and each decode step."""
    model.reset()
    tokens = tokens.to(device)
    rows = [model(tokens[:, :prompt], torch.arange(prompt, device=device))[0, -1]]
    for pos in range(prompt, tokens.shape[1]):
        rows.append(model(tokens[:, pos:pos + 1], torch.tensor([pos], device=device))[0, -1])
    return torch.stack(rows).float().cpu()


def build(ckpt: str, dtype: torch.dtype, device: str, turboquant: bool):
    model = models.load(ckpt, max_seq_len=512, dtype=dtype, device=device)
    if turboquant:
        apply_turboquant(model)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens, prefilled in one call")
    ap.add_argument("--steps", type=int, default=16, help="teacher-forced decode steps")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: needs a CUDA GPU", file=sys.stderr)
        return 3
    tokens = torch.randint(0, 512, (1, args.prompt + args.steps), generator=torch.Generator().manual_seed(0))
    results, ok = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_checkpoint(tmp)
        for name, tq, gated in (("bf16 cache", False, True), ("TurboQuant cache", True, False)):
            gpu = logits_along(build(tmp, torch.bfloat16, "cuda", tq), tokens, args.prompt, "cuda")
            cpu = logits_along(build(tmp, torch.bfloat16, "cpu", tq), tokens, args.prompt, "cpu")
            fp32 = logits_along(build(tmp, torch.float32, "cpu", tq), tokens, args.prompt, "cpu")
            cos = F.cosine_similarity(gpu, cpu, dim=-1)
            cos32 = F.cosine_similarity(gpu, fp32, dim=-1)
            agree = (gpu.argmax(-1) == cpu.argmax(-1)).float().mean().item()
            results[name] = {"min_cosine_vs_cpu": cos.min().item(), "mean_cosine_vs_cpu": cos.mean().item(),
                             "min_cosine_vs_cpu_fp32": cos32.min().item(), "greedy_agreement": agree,
                             "positions": gpu.shape[0], "gated": gated}
            if gated:
                results[name]["pass"] = cos.min().item() >= GATE
                ok &= results[name]["pass"]
    print(f"{'cache':<18} {'min cos (CPU bf16)':>18} {'mean':>8} {'min cos (CPU fp32)':>18} {'argmax agree':>12}")
    for name, r in results.items():
        print(f"{name:<18} {r['min_cosine_vs_cpu']:>18.6f} {r['mean_cosine_vs_cpu']:>8.6f} "
              f"{r['min_cosine_vs_cpu_fp32']:>18.6f} {r['greedy_agreement']:>12.3f}  "
              f"{('pass' if r['pass'] else 'FAIL') if r['gated'] else '(not gated)'}")
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "gate": GATE,
                                         "prompt": args.prompt, "steps": args.steps, "results": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
