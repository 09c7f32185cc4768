"""Benchmark tq4_sdpa against bf16 SDPA on a CUDA GPU (decode 4K/32K/128K, causal prefill 4096,
and decode with 4K cached in a 128K cache, as an exported long-context program runs until its
cache fills).

    python scripts/bench_attention.py [--out results/attention.md] [--json FILE]

Times are medians of CUDA-graph replays (triton.testing.do_bench_cudagraph), so Python launch
overhead does not hide the kernels. tq4_sdpa is timed twice: as an eager or CUDA-graph call
launches it (decode's kernels with programmatic dependent launch) and as an exported program does
(the same kernels launched plainly: AOTInductor's launches take no PDL attribute). GB/s counts the
bytes each kernel must read: the compressed cache (packed indices + bf16 norms) for ours (timed as
an eager call), the bf16 cache for SDPA. Cosine is ours against the
fp32 reference on the same compressed cache. ExecuTorch's own tq4_sdpa is timed when the
installed executorch has it (>= 1.3). Where the cache's capacity exceeds the cached keys, SDPA
reads only the cached keys (a copy of them): the best a bf16 cache could do.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime

import torch
import torch.nn.functional as F
import triton.testing

import tq_kernels  # noqa: F401  (registers torch.ops.tq.tq4_sdpa)
from tq_kernels import tq4_sdpa as tq4_module
from tq_kernels.tq4_sdpa import tq4_sdpa_reference
from tq_export.turboquant import TurboQuantizer
from _results import commit_id, publish  # scripts/_results.py (scripts/ is on sys.path)

SHAPES = {"qwen3.5-moe": (16, 2, 256), "llama": (32, 8, 128)}  # (H_q, H_kv, D)
# (kind, cached keys, cache capacity): tq4_sdpa's launch config follows the capacity.
CASES = [("decode", 4096, 4096), ("decode", 32768, 32768), ("decode", 131072, 131072), ("prefill", 4096, 4096),
         ("decode", 4096, 131072)]


def executorch_tq4_sdpa():
    try:
        from executorch.backends.cuda.triton.kernels.tq4_sdpa import tq4_sdpa  # type: ignore

        return tq4_sdpa
    except Exception:  # not shipped before executorch 1.3
        return None


def make_inputs(h_q, h_kv, d, lq, ctx, capacity, seed=0):
    """bf16 q and the first ctx cached K / V rows for SDPA; tq4_sdpa's arguments over a cache of
    `capacity` rows with kv_len = ctx."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    qz = TurboQuantizer(d, 4, seed=0).cuda()
    k = torch.randn(1, h_kv, capacity, d, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(1, h_kv, capacity, d, device="cuda", generator=g, dtype=torch.bfloat16)
    q = torch.randn(1, h_q, lq, d, device="cuda", generator=g, dtype=torch.bfloat16)
    kp, kn = qz.quantize(k)
    vp, vn = qz.quantize(v)
    kv_len = torch.tensor([ctx], device="cuda")
    k, v = k[:, :, :ctx].contiguous(), v[:, :, :ctx].contiguous()
    return q, k, v, (q, kp, kn, vp, vn, qz.centroids, qz.rotation, kv_len)


def bench(fn):
    return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")


@contextlib.contextmanager
def launch_override(**cfg):
    """tq4_sdpa's launches with cfg over the launcher's choices (`CONFIG_OVERRIDE`), restored after."""
    saved = tq4_module.CONFIG_OVERRIDE
    tq4_module.CONFIG_OVERRIDE = {**(saved or {}), **cfg}
    try:
        yield
    finally:
        tq4_module.CONFIG_OVERRIDE = saved


def case_label(kind, ctx, capacity):
    label = f"{kind} {ctx // 1024}K"
    return label if capacity == ctx else f"{label} of {capacity // 1024}K"


def run_case(name, kind, ctx, capacity):
    h_q, h_kv, d = SHAPES[name]
    lq = 1 if kind == "decode" else ctx
    q, k, v, args = make_inputs(h_q, h_kv, d, lq, ctx, capacity)
    causal = kind == "prefill"
    ours = lambda: torch.ops.tq.tq4_sdpa(*args)  # noqa: E731
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)  # noqa: E731
    out = ours()
    ref = tq4_sdpa_reference(*args)
    cos = F.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0).item()
    t_ours, t_sdpa = bench(ours), bench(sdpa)
    with launch_override(pdl=False):  # as an exported program launches the kernels
        t_plain = bench(ours)
    et = executorch_tq4_sdpa()
    t_et = None
    if et is not None:
        try:
            t_et = bench(lambda: et(*args))
        except Exception as e:  # different signature in that release: report, don't fail
            print(f"executorch tq4_sdpa not timed: {e}")
    tq_bytes = 2 * h_kv * ctx * (d // 2 + 2)
    bf16_bytes = 2 * h_kv * ctx * d * 2
    return {
        "model": name, "case": case_label(kind, ctx, capacity), "ms_ours": t_ours, "ms_bf16": t_sdpa,
        "ms_executorch": t_et, "ratio": t_ours / t_sdpa, "ms_exported": t_plain, "ratio_exported": t_plain / t_sdpa,
        "gbs_ours": tq_bytes / t_ours / 1e6, "gbs_bf16": bf16_bytes / t_sdpa / 1e6, "cosine": cos,
    }


def sweep(only: str | None = None):
    """Time launch configs per case and print the fastest (tuning aid; the op's defaults come from it)."""
    import itertools

    import triton as _triton

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name in SHAPES:
        h_q, h_kv, d = SHAPES[name]
        for kind, ctx, capacity in CASES:
            if only and kind != only:
                continue
            lq = 1 if kind == "decode" else ctx
            _, _, _, args = make_inputs(h_q, h_kv, d, lq, ctx, capacity)
            # Compiles dominate the sweep's time: the spaces hold what earlier sweeps left open.
            if kind == "decode":
                space = [dict(block_m=16, block_n=bn, warps=w, stages=st,
                              nsplit=min(_triton.cdiv(capacity, bn), _triton.cdiv(mult * sms, h_kv)))
                         for mult, bn, w, st in itertools.product((1, 2, 3, 4), (64, 128), (4, 8), (1, 2))]
            else:
                tiles = [(128, 64, 8, 2), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 3), (128, 32, 8, 3),
                         (128, 32, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3)]  # (rows, keys, warps, stages)
                space = [dict(block_m=bm, block_n=bn, warps=w, stages=st, nsplit=1) for bm, bn, w, st in tiles]
            results = []
            for cfg in space:
                try:
                    with launch_override(**cfg):
                        ms = triton.testing.do_bench_cudagraph(lambda: tq4_module.tq4_sdpa_triton(*args), rep=40,
                                                               return_mode="median")
                except Exception as e:  # out of resources etc.
                    ms = float("inf")
                    print(f"  {cfg}: {type(e).__name__}")
                results.append((ms, cfg))
            results.sort(key=lambda r: r[0])
            print(f"{name} {case_label(kind, ctx, capacity)}: best {results[0][0]:.4f} ms {results[0][1]}; "
                  f"2nd {results[1][0]:.4f} {results[1][1]}; worst {results[-1][0]:.4f}", flush=True)
            for ms, cfg in results:
                print(f"    {ms:.4f} {cfg}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/attention.md", help="markdown results file to append to")
    ap.add_argument("--json", help="also write the raw rows here")
    ap.add_argument("--sweep", action="store_true", help="time launch configs per case instead")
    ap.add_argument("--only", choices=("decode", "prefill"), help="with --sweep: only these cases")
    ap.add_argument("--commit", help="commit to record (default: git rev-parse in this tree)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: bench_attention.py needs a CUDA GPU")
    if args.sweep:
        return sweep(args.only)
    gpu = torch.cuda.get_device_name()
    commit = commit_id(args.commit)
    rows = [run_case(name, *case) for name in SHAPES for case in CASES]
    header = (f"\n### {gpu}, commit {commit}, {datetime.date.today()}, torch {torch.__version__}, "
              f"triton {triton.__version__}\n\n"
              "| shape | case | bf16 SDPA ms | tq4_sdpa ms | ratio | as exported ms | ratio | ExecuTorch tq4 ms "
              "| tq4 GB/s | bf16 GB/s | cosine |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['model']} | {r['case']} | {r['ms_bf16']:.4f} | {r['ms_ours']:.4f} | {r['ratio']:.2f}x | "
        f"{r['ms_exported']:.4f} | {r['ratio_exported']:.2f}x | "
        + (f"{r['ms_executorch']:.4f}" if r["ms_executorch"] else "n/a")
        + f" | {r['gbs_ours']:.0f} | {r['gbs_bf16']:.0f} | {r['cosine']:.5f} |"
        for r in rows
    ]
    table = header + "\n".join(lines) + "\n"
    publish(table, args.out, args.json, {"gpu": gpu, "commit": commit, "rows": rows})


if __name__ == "__main__":
    main()
