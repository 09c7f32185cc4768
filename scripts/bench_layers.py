"""Benchmark the Triton paths of the hybrid layers at Qwen3.5-35B-A3B shapes on a CUDA GPU.

    python scripts/bench_layers.py [--prefill 4096] [--out results/layers.md] [--json FILE] [--no-check]
                                   [--commit SHA]

Layers (batch 1): the gated delta rule (16 key / 32 value heads x 128), the causal depthwise conv
(conv dim 8192 = 2 x 16 x 128 + 32 x 128, kernel 4) and the routed MoE experts (256 experts, top-8,
hidden 2048, expert width 512), each at prefill (T tokens) and decode (1 token).

Times are medians of CUDA-graph replays (triton.testing.do_bench_cudagraph), so Python launch overhead
does not count. GB/s counts the bytes a case must move at minimum: for decode the recurrent state read
and written (gated delta), the 8 selected experts' weights (MoE), state + weights + activations (conv);
for MoE prefill the weights of every expert that got a token. The gated delta rule prefill is compared
with a bf16 FlashAttention layer of the same width (torch SDPA, causal, 16 heads x 128, same T), the
attention it replaces in the other layers. Each Triton path is also checked against its fp32 reference
(max abs error and max abs error / max |reference|).
"""

from __future__ import annotations

import argparse
import datetime

import torch
import torch.nn.functional as F
import triton
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
from tq_kernels.causal_conv1d import causal_conv1d_triton
from tq_kernels.gated_delta import gated_delta_rule_triton
from tq_kernels.hybrid_ops import causal_conv1d_ref, gated_delta_rule_ref, moe_experts_ref
from tq_kernels.moe import moe_experts_triton
from _results import commit_id, publish  # scripts/_results.py (scripts/ is on sys.path)

HIDDEN, H_K, H_V, HEAD_DIM, CONV_K = 2048, 16, 32, 128, 4
CONV_DIM = 2 * H_K * HEAD_DIM + H_V * HEAD_DIM
EXPERTS, TOP_K, INTER = 256, 8, 512
BF16 = torch.bfloat16


def bench(fn, rep):
    return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")


def error(out, ref):
    out, ref = out.float(), ref.float()
    err = (out - ref).abs().max().item()
    return err, err / max(ref.abs().max().item(), 1e-30)


def gdn_inputs(T, gen):
    q = torch.randn(1, T, H_K, HEAD_DIM, device="cuda", generator=gen, dtype=BF16)
    k = torch.randn(1, T, H_K, HEAD_DIM, device="cuda", generator=gen, dtype=BF16)
    v = torch.randn(1, T, H_V, HEAD_DIM, device="cuda", generator=gen, dtype=BF16)
    # As the model makes them: g = -exp(A_log) softplus(.) in fp32, beta = sigmoid(.) in bf16.
    g = -F.softplus(torch.randn(1, T, H_V, device="cuda", generator=gen) - 2) * 0.5
    beta = torch.randn(1, T, H_V, device="cuda", generator=gen).sigmoid().to(BF16)
    state = 0.1 * torch.randn(1, H_V, HEAD_DIM, HEAD_DIM, device="cuda", generator=gen)
    return q, k, v, g, beta, state


def run_gdn(T, rep, check, gen):
    args = gdn_inputs(T, gen)
    scale = HEAD_DIM ** -0.5
    ms = bench(lambda: gated_delta_rule_triton(*args, scale), rep)
    row = {"layer": "gated_delta_rule", "case": "decode" if T == 1 else f"prefill {T}",
           "shape": f"H {H_K}/{H_V} x {HEAD_DIM}", "ms": ms}
    state_bytes = H_V * HEAD_DIM * HEAD_DIM * 4
    io_bytes = T * (2 * H_K * HEAD_DIM + 2 * H_V * HEAD_DIM) * 2 + T * H_V * 6  # q, k, v, out; g, beta
    if T == 1:
        row["gbs"] = (2 * state_bytes + io_bytes) / ms / 1e6
        row["bytes"] = "state r+w + q/k/v/out"
    else:
        # The softmax attention this layer type replaces: bf16 FlashAttention, causal, same width.
        qa, ka, va = (torch.randn(1, 16, T, HEAD_DIM, device="cuda", generator=gen, dtype=BF16) for _ in range(3))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ms_fa = bench(lambda: F.scaled_dot_product_attention(qa, ka, va, is_causal=True), rep)
        row.update(baseline="FlashAttention bf16 (SDPA, causal, 16 x 128)", ms_base=ms_fa, ratio=ms / ms_fa)
    if check:
        out, state = gated_delta_rule_triton(*args, scale)
        ref_out, ref_state = gated_delta_rule_ref(*args, scale)
        row["err_out"], row["rel_out"] = error(out, ref_out)
        row["err_state"], row["rel_state"] = error(state, ref_state)
    return row


def run_conv(T, rep, check, gen):
    x = torch.randn(1, T, CONV_DIM, device="cuda", generator=gen, dtype=BF16)
    w = torch.randn(CONV_DIM, CONV_K, device="cuda", generator=gen, dtype=BF16) * 0.5
    state = torch.randn(1, CONV_K - 1, CONV_DIM, device="cuda", generator=gen, dtype=BF16)
    ms = bench(lambda: causal_conv1d_triton(x, w, state, True), rep)
    moved = (2 * T * CONV_DIM + 2 * (CONV_K - 1) * CONV_DIM + CONV_K * CONV_DIM) * 2  # x, out, state r+w, w
    row = {"layer": "causal_conv1d", "case": "decode" if T == 1 else f"prefill {T}",
           "shape": f"C {CONV_DIM}, K {CONV_K}", "ms": ms, "gbs": moved / ms / 1e6,
           "bytes": "x + out + state r+w + weight"}
    if check:
        out, new_state = causal_conv1d_triton(x, w, state, True)
        ref_out, ref_state = causal_conv1d_ref(x, w, state, True)
        row["err_out"], row["rel_out"] = error(out, ref_out)
        row["err_state"], row["rel_state"] = error(new_state, ref_state)
    return row


def run_moe(N, rep, check, gen):
    x = torch.randn(N, HIDDEN, device="cuda", generator=gen, dtype=BF16)
    logits = torch.randn(N, EXPERTS, device="cuda", generator=gen)
    w, ids = torch.topk(logits.softmax(-1), TOP_K, dim=-1)
    w = (w / w.sum(-1, keepdim=True)).to(BF16)
    gate_up = torch.randn(EXPERTS, 2 * INTER, HIDDEN, device="cuda", generator=gen, dtype=BF16) * HIDDEN ** -0.5
    down = torch.randn(EXPERTS, HIDDEN, INTER, device="cuda", generator=gen, dtype=BF16) * INTER ** -0.5
    ms = bench(lambda: moe_experts_triton(x, ids, w, gate_up, down), rep)
    per_expert = 3 * INTER * HIDDEN * 2
    touched = ids.unique().numel()  # host sync here is fine: outside the timed region
    flops = 2 * N * TOP_K * 3 * INTER * HIDDEN
    row = {"layer": "moe_experts", "case": "decode" if N == 1 else f"prefill {N}",
           "shape": f"E {EXPERTS} top-{TOP_K}, {HIDDEN} -> {INTER}", "ms": ms,
           "gbs": (touched * per_expert + 2 * N * HIDDEN * 2) / ms / 1e6,
           "bytes": f"weights of the {touched} experts used", "tflops": flops / ms / 1e9}
    if check:
        row["err_out"], row["rel_out"] = error(moe_experts_triton(x, ids, w, gate_up, down),
                                               moe_experts_ref(x, ids, w, gate_up, down))
    return row


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=4096, help="prefill length in tokens (default 4096)")
    ap.add_argument("--rep", type=int, default=200, help="ms of CUDA-graph replays per measurement (default 200)")
    ap.add_argument("--no-check", action="store_true", help="skip the comparison against the fp32 references")
    ap.add_argument("--out", default="results/layers.md", help="markdown results file to append to")
    ap.add_argument("--json", help="also write the raw rows here")
    ap.add_argument("--commit", help="commit to record (default: git rev-parse in this tree)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: bench_layers.py needs a CUDA GPU")
    if args.prefill < 1:
        raise SystemExit(f"error: --prefill must be >= 1, got {args.prefill}")
    gpu = torch.cuda.get_device_name()
    commit = commit_id(args.commit)
    gen = torch.Generator(device="cuda").manual_seed(0)
    check = not args.no_check
    rows = []
    for run in (run_gdn, run_conv, run_moe):
        for T in (args.prefill, 1):
            rows.append(run(T, args.rep, check, gen))
            r = rows[-1]
            print(f"{r['layer']:17s} {r['case']:13s} {r['ms']:.4f} ms", flush=True)

    header = (f"\n### {gpu}, commit {commit}, {datetime.date.today()}, torch {torch.__version__}, "
              f"triton {triton.__version__}\n\n"
              "| layer | case | shape | Triton ms | GB/s | TFLOP/s | baseline ms | Triton / baseline | "
              "max abs err (out / state) | rel err (out / state) |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        base = f"{r['ms_base']:.4f} ({r['baseline']})" if "ms_base" in r else "n/a"
        gbs = f"{r['gbs']:.0f} ({r['bytes']})" if "gbs" in r else "n/a"
        errs = (f"{fmt(r.get('err_out'), '.2e')} / {fmt(r.get('err_state'), '.2e')}",
                f"{fmt(r.get('rel_out'), '.2e')} / {fmt(r.get('rel_state'), '.2e')}") if check else ("n/a", "n/a")
        lines.append(f"| {r['layer']} | {r['case']} | {r['shape']} | {r['ms']:.4f} | {gbs} | "
                     f"{fmt(r.get('tflops'), '.1f')} | {base} | "
                     + (f"{r['ratio']:.2f}x" if "ratio" in r else "n/a") + f" | {errs[0]} | {errs[1]} |")
    table = header + "\n".join(lines) + "\n"
    publish(table, args.out, args.json, {"gpu": gpu, "commit": commit, "rows": rows})


if __name__ == "__main__":
    main()
