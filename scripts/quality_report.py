"""TurboQuant quality report: distortion, attention fidelity and tiny-model agreement per bit width.

    python scripts/quality_report.py [--out results/quality] [--small]

Writes `quality.md` and `quality.png` into --out. Three sections:
  1. D_mse per bit width (4/3/2) at head_dim 64/128/256, measured over random unit vectors, beside
     the exact optimum of our codebooks, the paper's Gaussian-limit values and the lower bound 4^-b.
  2. Attention-output cosine against fp32 attention on the unquantized cache, for K4V4, K4V2 and
     K3V3, on Gaussian keys and on heavy-tailed keys (a few outlier channels 10x larger, as real
     LLM keys have). The random rotation spreads outliers over every coordinate.
  3. The tiny Qwen 3.5 MoE (random weights): logits cosine against the bf16-cache model over a
     prefill and 16 decode steps, and teacher-forced top-1 agreement over 64 tokens.
`--small` runs every section at reduced size (CI uses it); the committed report is full size.
Runs on CPU (or CUDA if present, for section 2).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from tq_export import models, turboquant
from tq_export.rewrite import apply_turboquant
from tq_export.tiny import make_tiny_checkpoint

PAPER = {4: 0.00950, 3: 0.03455, 2: 0.1175}
SETTINGS = [(4, 4), (4, 2), (3, 3)]


def distortion(n: int) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for d in turboquant.SHIPPED_DIMS:
        x = torch.randn(n, d, generator=g)
        x = x / x.norm(dim=-1, keepdim=True)
        for bits in (4, 3, 2):
            q = turboquant.TurboQuantizer(d, bits)
            mse = (x - q.dequantize(*q.quantize(x))).pow(2).sum(-1).mean().item()
            rows.append(dict(d=d, bits=bits, measured=mse, optimum=q.expected_mse, paper=PAPER[bits],
                             lower_bound=4.0**-bits))
    return rows


def keys(kind: str, shape, g) -> torch.Tensor:
    x = torch.randn(shape, generator=g)
    if kind == "heavy-tailed":
        outliers = torch.randperm(shape[-1], generator=g)[: max(1, shape[-1] // 32)]
        x[..., outliers] *= 10.0
    return x


def attention_fidelity(seq: int, device: str) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(1)
    d, h_q, h_kv = 256, 16, 2
    for kind in ("gaussian", "heavy-tailed"):
        k = keys(kind, (1, h_kv, seq, d), g).to(device)
        v = torch.randn(1, h_kv, seq, d, generator=g).to(device)
        q = keys(kind, (1, h_q, 8, d), g).to(device)
        ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        for kb, vb in SETTINGS:
            qk, qv = turboquant.TurboQuantizer(d, kb).to(device), turboquant.TurboQuantizer(d, vb).to(device)
            k_hat = qk.dequantize(*qk.quantize(k.bfloat16()))
            v_hat = qv.dequantize(*qv.quantize(v.bfloat16()))
            out = F.scaled_dot_product_attention(q, k_hat, v_hat, enable_gqa=True)
            cos = F.cosine_similarity(out.flatten(1), ref.flatten(1), dim=-1).min().item()
            per_row = F.cosine_similarity(out, ref, dim=-1).min().item()
            rows.append(dict(keys=kind, setting=f"K{kb}V{vb}", cosine=cos, worst_row=per_row))
    return rows


def tiny_agreement(steps: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_checkpoint(tmp)
        g = torch.Generator().manual_seed(2)
        tokens = torch.randint(0, 512, (1, 16 + steps), generator=g)
        base = models.load(tmp, max_seq_len=128, dtype=torch.float32)
        want = run_teacher_forced(base, tokens)
        for kb, vb in SETTINGS:
            model = models.load(tmp, max_seq_len=128, dtype=torch.float32)
            apply_turboquant(model, k_bits=kb, v_bits=vb)
            got = run_teacher_forced(model, tokens)
            cos = F.cosine_similarity(got, want, dim=-1).min().item()
            agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
            rows.append(dict(setting=f"K{kb}V{vb}", logits_cosine_min=cos, top1_agreement=agree,
                             tokens=int(want.shape[0])))
    return rows


@torch.no_grad()
def run_teacher_forced(model, tokens: torch.Tensor) -> torch.Tensor:
    """Prefill 16 tokens, then decode the rest one at a time; logits of every position [N, vocab]."""
    model.reset()
    out = [model(tokens[:, :16], torch.arange(16))[0]]
    for t in range(16, tokens.shape[1]):
        out.append(model(tokens[:, t : t + 1], torch.tensor([t]))[0])
    return torch.cat(out).float()


def plot(dist, attn, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for d in sorted({r["d"] for r in dist}):
        pts = [r for r in dist if r["d"] == d]
        a.semilogy([r["bits"] for r in pts], [r["measured"] for r in pts], "o-", label=f"measured d={d}")
    a.semilogy([4, 3, 2], [PAPER[b] for b in (4, 3, 2)], "k--", label="paper (Gaussian limit)")
    a.semilogy([4, 3, 2], [4.0**-b for b in (4, 3, 2)], "k:", label="lower bound 4^-b")
    a.set_xlabel("bits per coordinate")
    a.set_ylabel("D_mse")
    a.set_title("Distortion per bit width")
    a.legend(fontsize=8)
    labels = [s for s in dict.fromkeys(r["setting"] for r in attn)]
    for i, kind in enumerate(("gaussian", "heavy-tailed")):
        vals = [next(r["cosine"] for r in attn if r["keys"] == kind and r["setting"] == s) for s in labels]
        b.bar([x + 0.38 * i for x in range(len(labels))], vals, width=0.38, label=kind)
    b.set_xticks([x + 0.19 for x in range(len(labels))], labels)
    b.set_ylim(max(0.0, min(r["cosine"] for r in attn) - 0.05), 1.0)
    b.set_ylabel("attention output cosine vs fp32")
    b.set_title("Attention fidelity (D=256, GQA 8)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(dist, attn, tiny) -> str:
    lines = ["# TurboQuant quality report", "",
             "Generated by `scripts/quality_report.py`. Random data; see the script's docstring.", "",
             "## Distortion D_mse = E||u - u_hat||^2 over random unit vectors", "",
             "| d | bits | measured | exact optimum | paper (Gaussian limit) | lower bound 4^-b |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['d']} | {r['bits']} | {r['measured']:.6f} | {r['optimum']:.6f} | {r['paper']:.5f} | "
              f"{r['lower_bound']:.6f} |" for r in dist]
    lines += ["", "## Attention output vs fp32 on the unquantized cache (D=256, 16 query / 2 KV heads)", "",
              "| keys | setting | cosine (whole output) | worst row |", "|---|---|---|---|"]
    lines += [f"| {r['keys']} | {r['setting']} | {r['cosine']:.5f} | {r['worst_row']:.5f} |" for r in attn]
    lines += ["", "## Tiny Qwen 3.5 MoE vs the bf16-cache model (teacher-forced, prefill 16 + decode)", "",
              "| setting | logits cosine (min over steps) | top-1 agreement | tokens |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['logits_cosine_min']:.5f} | {r['top1_agreement']:.3f} | {r['tokens']} |"
              for r in tiny]
    lines += ["", "![quality](quality.png)", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/quality", help="output folder (default: results/quality)")
    ap.add_argument("--small", action="store_true", help="reduced sizes (for CI)")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dist = distortion(4_000 if args.small else 100_000)
    attn = attention_fidelity(256 if args.small else 8192, device)
    tiny = tiny_agreement(16 if args.small else 64)
    (out / "quality.md").write_text(render(dist, attn, tiny))
    plot(dist, attn, out / "quality.png")
    print(render(dist, attn, tiny))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
