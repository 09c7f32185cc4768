"""Triton paths of the hybrid-layer ops (gated delta rule, causal conv1d, MoE experts) against the
pure-torch references in tq_kernels.hybrid_ops, on ugly shapes.

On CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py); with a GPU the same comparisons
run compiled (marked gpu). Every comparison prints the max abs error and the relative error (max abs
error / max |reference|); run with -s to see them.

Tolerances are bf16-level and say where they come from: the conv and the recurrent delta rule round
only their output (half a bf16 ulp, 2^-9 relative); the chunked delta rule and the MoE GEMMs use bf16
matmul operands and bf16 intermediates with fp32 accumulation, as their GPU versions do. Interpreted,
the kernels reproduce the GPU's rounding: operands are rounded to bf16 by hand and upcast (the
interpreter's bf16 dot is wrong), and so is every bf16 store (its fp32 -> bf16 cast truncates).
"""

import os

import pytest
import torch
import torch.nn.functional as F
import tq_kernels.hybrid_ops  # noqa: F401
from helpers import interpreted
from tq_kernels.causal_conv1d import causal_conv1d_triton
from tq_kernels.gated_delta import gated_delta_rule_chunked, gated_delta_rule_recurrent, gated_delta_rule_triton
from tq_kernels.hybrid_ops import causal_conv1d_ref, gated_delta_rule_ref, moe_experts_ref
from tq_kernels.moe import moe_experts_triton



def errors(name, out, ref):
    """Print and return (max abs error, max abs error / max |ref|, rms error / rms ref)."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
    out, ref = out.float(), ref.float()
    assert torch.isfinite(out).all(), f"{name}: non-finite output"
    err = (out - ref).abs().max().item()
    rel = err / max(ref.abs().max().item(), 1e-30)
    rms = ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()
    print(f"{name}: max abs err {err:.3e}, rel {rel:.3e}, rms rel {rms:.3e}")
    return err, rel, rms


# --------------------------------------------------------------------------------------------
# Gated delta rule
# --------------------------------------------------------------------------------------------


def gdn_args(B, T, H_k, H_v, D_k, D_v, device="cpu", seed=0, keys="random", decay="model"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H_k, D_k, generator=g)
    k = torch.randn(B, T, H_k, D_k, generator=g)
    if keys == "correlated":  # near-parallel keys: A is far from diagonal, the triangular solve is tested
        k = k[:, :1] + 0.05 * k
    v = torch.randn(B, T, H_v, D_v, generator=g)
    # As in the model: g = -exp(A_log) * softplus(a + dt_bias) <= 0 (fp32), beta = sigmoid(b) (bf16)
    g_ = -torch.rand(H_v, generator=g).mul(4).exp() * F.softplus(torch.randn(B, T, H_v, generator=g) - 2)
    if decay == "none":
        g_ = torch.zeros_like(g_)
    elif decay == "strong":  # exp(G) underflows inside a chunk
        g_ = g_ - 30.0 * (torch.rand(B, T, H_v, generator=g) < 0.1)
    beta = torch.randn(B, T, H_v, generator=g).sigmoid()
    if keys == "correlated":
        beta = torch.ones_like(beta) * 0.99
    state = 0.1 * torch.randn(B, H_v, D_k, D_v, generator=g)
    args = (q.bfloat16(), k.bfloat16(), v.bfloat16(), g_, beta.bfloat16(), state)
    return tuple(a.to(device) for a in args)


def check_gdn(fn, args, scale=None, out_tol=(2e-2, 1e-2), state_tol=(2e-2, 1e-2), name="gdn"):
    out, state = fn(*args, scale)
    ref_out, ref_state = gated_delta_rule_ref(*args, scale)
    _, rel, rms = errors(f"{name} out", out, ref_out)
    assert rel <= out_tol[0] and rms <= out_tol[1]
    _, rel, rms = errors(f"{name} state", state, ref_state)
    assert rel <= state_tol[0] and rms <= state_tol[1]


# (B, T, H_k, H_v, D_k, D_v): T in {1, 7, 64, 130}, GQA 1 and 3, head dims 16 / 32.
GDN_CASES = [
    (2, 1, 1, 3, 32, 32),
    (1, 7, 3, 3, 16, 32),
    (1, 64, 1, 3, 32, 16),
    (2, 130, 1, 1, 16, 16),
    (1, 130, 1, 3, 32, 32),
]


@interpreted
@pytest.mark.parametrize("B,T,H_k,H_v,D_k,D_v", GDN_CASES)
def test_gated_delta_rule_matches_reference(B, T, H_k, H_v, D_k, D_v):
    tol = (4e-3, 2e-3) if T == 1 else (2e-2, 1e-2)  # T = 1 takes the fp32 recurrent kernel
    check_gdn(gated_delta_rule_triton, gdn_args(B, T, H_k, H_v, D_k, D_v), out_tol=tol, state_tol=tol,
              name=f"gdn T={T} H={H_k}/{H_v} D={D_k}/{D_v}")


@interpreted
def test_gated_delta_recurrent_kernel_over_several_steps():
    # The decode kernel loops over T; all in fp32, so it matches to the output's rounding.
    args = gdn_args(2, 7, 1, 3, 16, 32, seed=1)
    check_gdn(gated_delta_rule_recurrent, args, scale=0.3, out_tol=(4e-3, 2e-3), state_tol=(1e-5, 1e-5),
              name="gdn recurrent T=7")


@interpreted
def test_gated_delta_chunked_kernel_on_one_step():
    # A chunk with one real row and 63 padded ones.
    check_gdn(gated_delta_rule_chunked, gdn_args(2, 1, 1, 3, 16, 16, seed=2), name="gdn chunked T=1")


@interpreted
@pytest.mark.parametrize("T,keys,decay", [(1, "random", "model"), (7, "random", "model"), (130, "random", "model"),
                                          (70, "correlated", "none"), (70, "random", "strong")])
def test_gated_delta_chunked_algebra_is_exact_in_fp32(T, keys, decay, monkeypatch):
    # With every intermediate kept in fp32 the chunked (WY) form equals the recurrence to fp32 rounding,
    # whatever the keys: what the bf16 tests see beyond this is operand rounding, not the algorithm.
    import tq_kernels.gated_delta as gd

    monkeypatch.setattr(gd, "EXACT_FP32", True)
    check_gdn(gated_delta_rule_chunked, gdn_args(1, T, 1, 2, 32, 16, seed=3, keys=keys, decay=decay),
              out_tol=(1e-2, 2e-3), state_tol=(1e-5, 1e-5), name=f"gdn chunked fp32 T={T} {keys}/{decay}")


@interpreted
@pytest.mark.parametrize("keys,decay", [("correlated", "none"), ("random", "strong")])
def test_gated_delta_chunked_hard_cases(keys, decay):
    # Decays that underflow inside a chunk; and near-parallel keys (cosine ~0.999) with no decay and
    # beta ~ 1, where I + A is ill-conditioned and amplifies the bf16 operand rounding about 4x (the
    # fp32 test above shows the algebra itself is exact there): a bf16 tolerance, scaled by that.
    tol = (5e-2, 3e-2) if keys == "correlated" else (2e-2, 1e-2)
    check_gdn(gated_delta_rule_chunked, gdn_args(1, 70, 1, 2, 32, 16, seed=3, keys=keys, decay=decay),
              out_tol=tol, state_tol=tol, name=f"gdn chunked {keys} keys, {decay} decay")


@interpreted
def test_gated_delta_accepts_strided_views():
    # As in the model: q, k, v are split views of one projection, not contiguous tensors.
    B, T, H_k, H_v, D = 1, 9, 1, 2, 16
    q, k, v, g, beta, state = gdn_args(B, T, H_k, H_v, D, D, seed=4)
    qkv = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], dim=-1)
    q2, k2, v2 = qkv.split([H_k * D, H_k * D, H_v * D], dim=-1)
    args = (q2.view(B, T, H_k, D), k2.view(B, T, H_k, D), v2.view(B, T, H_v, D), g, beta, state)
    assert not args[0].is_contiguous()
    check_gdn(gated_delta_rule_chunked, args, name="gdn strided")


# --------------------------------------------------------------------------------------------
# Causal conv1d
# --------------------------------------------------------------------------------------------


def conv_args(B, T, C, K, state_dtype=torch.bfloat16, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g).bfloat16()
    w = (torch.randn(C, K, generator=g) / K ** 0.5).bfloat16()
    state = torch.randn(B, K - 1, C, generator=g).to(state_dtype)
    return x.to(device), w.to(device), state.to(device)


# T in {1, 2 (< K-1), 7, 64, 130}, channels not a multiple of the tile, K in {2, 3, 4}.
CONV_CASES = [(2, 1, 48, 4), (1, 2, 40, 4), (2, 7, 33, 4), (1, 64, 64, 4), (2, 130, 40, 4), (1, 5, 20, 2),
              (1, 3, 24, 3)]


@interpreted
@pytest.mark.parametrize("B,T,C,K", CONV_CASES)
@pytest.mark.parametrize("silu", [True, False])
def test_causal_conv1d_matches_reference(B, T, C, K, silu):
    args = conv_args(B, T, C, K)
    out, state = causal_conv1d_triton(*args, silu)
    ref_out, ref_state = causal_conv1d_ref(*args, silu)
    _, rel, _ = errors(f"conv T={T} C={C} K={K} silu={silu}", out, ref_out)
    assert rel <= 4e-3  # one bf16 rounding of the output
    assert torch.equal(state, ref_state)  # a copy of inputs: exact


@interpreted
def test_causal_conv1d_fp32_state_and_chained_calls():
    # Prefill 11 tokens, then 3 single-token steps, against one reference call over all 14.
    x, w, state = conv_args(1, 14, 36, 4, state_dtype=torch.float32, seed=5)
    outs, s = [], state
    for lo, hi in ((0, 11), (11, 12), (12, 13), (13, 14)):
        o, s = causal_conv1d_triton(x[:, lo:hi], w, s, True)
        outs.append(o)
    ref_out, ref_state = causal_conv1d_ref(x, w, state, True)
    _, rel, _ = errors("conv chained", torch.cat(outs, 1), ref_out)
    assert rel <= 4e-3 and torch.equal(s, ref_state)


# --------------------------------------------------------------------------------------------
# MoE experts
# --------------------------------------------------------------------------------------------


def moe_args(N, H, I, E, top_k, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=g).bfloat16()
    logits = torch.randn(N, E, generator=g)
    logits[:, : E // 3] -= 100.0  # a third of the experts get no token
    w, ids = torch.topk(logits.softmax(-1), top_k, dim=-1)
    w = (w / w.sum(-1, keepdim=True)).bfloat16()
    gate_up = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).bfloat16()
    down = (torch.randn(E, H, I, generator=g) / I ** 0.5).bfloat16()
    return tuple(a.to(device) for a in (x, ids, w, gate_up, down))


# (N, H, I, E, top_k): N in {1, 7, 64, 130}, top-k 1/2/8, E not a power of two, I not a tile multiple.
MOE_CASES = [
    (1, 64, 32, 256, 8),  # decode: 8 experts out of 256
    (7, 32, 48, 6, 2),
    (64, 64, 16, 16, 1),
    (130, 32, 32, 12, 8),
    (5, 32, 16, 300, 8),
]


@interpreted
@pytest.mark.parametrize("N,H,I,E,top_k", MOE_CASES)
def test_moe_experts_matches_reference(N, H, I, E, top_k):
    args = moe_args(N, H, I, E, top_k)
    out = moe_experts_triton(*args)
    _, rel, rms = errors(f"moe N={N} E={E} k={top_k}", out, moe_experts_ref(*args))
    # h (the GEMM operand between the two GEMMs) is bf16, and so is each weighted term.
    assert rel <= 1.5e-2 and rms <= 5e-3


def check_moe_rows_independent_of_call_size(device, H, I, E):
    """A token's output must not depend on how many tokens share the call: 4 tokens x top-8 take the
    small (decode) path, the same 4 among 40 the prefill path; bit for bit the same rows. (A prefill
    graph compiled for a dynamic length takes the prefill path where eager, on a short chunk, took
    the decode path.)"""
    x, ids, w, gate_up, down = moe_args(40, H, I, E, 8, device=device, seed=3)
    small = moe_experts_triton(x[:4], ids[:4], w[:4], gate_up, down)
    large = moe_experts_triton(x, ids, w, gate_up, down)
    assert torch.equal(small, large[:4]), f"{int((small != large[:4]).sum())} of {small.numel()} values differ"


@interpreted
def test_moe_rows_independent_of_call_size():
    check_moe_rows_independent_of_call_size("cpu", 64, 32, 16)


@interpreted
def test_moe_int32_ids_and_all_tokens_on_one_expert():
    x, ids, w, gate_up, down = moe_args(33, 32, 16, 4, 2, seed=6)
    ids = torch.stack([torch.zeros_like(ids[:, 0]), torch.full_like(ids[:, 0], 3)], 1)  # experts 1, 2 idle
    out = moe_experts_triton(x, ids.int(), w, gate_up, down)
    _, rel, rms = errors("moe skewed", out, moe_experts_ref(x, ids, w, gate_up, down))
    assert rel <= 1.5e-2 and rms <= 5e-3


# --------------------------------------------------------------------------------------------
# Export: launchers must trace with a symbolic T / N (no host sync, no data-dependent branch, no guard)
# --------------------------------------------------------------------------------------------

EXPORT_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from torch.export import Dim, export
from test_hybrid_kernels import conv_args, gdn_args, moe_args
from tq_kernels.causal_conv1d import causal_conv1d_triton
from tq_kernels.gated_delta import gated_delta_rule_triton
from tq_kernels.moe import moe_experts_triton


class Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


T = Dim("T", min=1, max=8192)
cases = {
    "gdn": (lambda *a: gated_delta_rule_triton(*a, 0.25), gdn_args(1, 70, 1, 2, 16, 16), [{1: T}] * 5 + [None]),
    "conv": (lambda *a: causal_conv1d_triton(*a, True), conv_args(1, 70, 24, 4), [{1: T}, None, None]),
    "moe": (moe_experts_triton, moe_args(70, 32, 16, 8, 2), [{0: T}] * 3 + [None, None]),
}
for name, (fn, args, dims) in cases.items():
    ep = export(Call(fn), args, dynamic_shapes=(tuple(dims),), strict=False)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    n_kernels = sum("triton_kernel_wrapper" in t for t in targets)
    ops = sorted({t for t in targets if t.startswith("aten.") and not t.startswith("aten.sym_")})
    print(name, n_kernels, ",".join(ops), list(ep.range_constraints.values()))
"""


def test_launchers_export_with_dynamic_length(tmp_path):
    # Traced for real (not interpreted; no GPU needed): every launch must become a kernel node, T must
    # stay symbolic over [1, 8192] (export raises on any guard that narrows it), and the only aten ops
    # are allocations, so AOTInductor needs no fallback kernel.
    import subprocess
    import sys

    script = tmp_path / "export_launchers.py"
    script.write_text(EXPORT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout)
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines() if line.strip()}
    assert {name: int(r[0]) for name, r in rows.items()} == {"gdn": 3, "conv": 1, "moe": 5}
    allowed = {"aten.empty.memory_format", "aten.empty_like.default", "aten.zeros.default", "aten.reshape.default",
               "aten.view.default"}
    for name, r in rows.items():
        assert set(r[1].split(",")) <= allowed, (name, r[1])
        assert "VR[1, 8192]" in " ".join(r[2:]), (name, r[2:])


# --------------------------------------------------------------------------------------------
# Compile for Hopper without a GPU: every launch of the model's shapes, through ptxas
# --------------------------------------------------------------------------------------------

COMPILE_SCRIPT = """
import os, subprocess, sys, tempfile
sys.path.insert(0, sys.argv[1])
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import tq_kernels.causal_conv1d as cc, tq_kernels.gated_delta as gd, tq_kernels.moe as moe

DT = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int64: "*i64", torch.int32: "*i32"}
launches = []


class Capture:  # stands in for wrap_triton: record the launch instead of running it
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return lambda *args, **kw: launches.append((self.fn, args, kw))


for m in (gd, cc, moe):
    m.wrap_triton = Capture
bf = torch.bfloat16
for T in (4096, 1):  # Qwen3.5-35B-A3B: prefill and decode
    q, k = torch.randn(1, T, 16, 128, dtype=bf), torch.randn(1, T, 16, 128, dtype=bf)
    v, g, beta = torch.randn(1, T, 32, 128, dtype=bf), -torch.rand(1, T, 32), torch.rand(1, T, 32, dtype=bf)
    gd.gated_delta_rule_triton(q, k, v, g, beta, torch.zeros(1, 32, 128, 128), 128 ** -0.5)
    cc.causal_conv1d_triton(torch.randn(1, T, 8192, dtype=bf), torch.randn(8192, 4, dtype=bf),
                            torch.zeros(1, 3, 8192, dtype=bf), True)
    moe.moe_experts_triton(torch.randn(T, 2048, dtype=bf), torch.randint(0, 256, (T, 8)), torch.rand(T, 8, dtype=bf),
                           torch.empty(256, 1024, 2048, dtype=bf), torch.empty(256, 2048, 512, dtype=bf))
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
for fn, args, kw in launches:
    opts = {key: kw.pop(key) for key in ("num_warps", "num_stages") if key in kw}
    sig, consts, attrs = {}, dict(kw), {}
    # What the JIT specializes on: 16-byte aligned pointers and ints divisible by 16 (vector loads,
    # cp.async pipelining), ints equal to 1 folded in.
    for i, (name, a) in enumerate(zip(fn.arg_names, args)):
        if isinstance(a, torch.Tensor):
            sig[name] = DT[a.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, int) and a == 1:
            sig[name], consts[name] = "constexpr", 1
        elif isinstance(a, int):
            sig[name] = "i32"
            if a % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32"
    sig.update({name: "constexpr" for name in kw})
    c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=opts)
    usage = ""
    if os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(c.asm["cubin"])
            f.flush()
            out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
            usage = " ".join(w for w in out.split() if w.startswith(("REG:", "STACK:")))
    print(fn.__name__, kw, f"smem={c.metadata.shared}", usage)
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90(tmp_path):
    # CI has no GPU: compile every launch at the model's shapes to sm_90 cubins (Triton's own ptxas),
    # which catches what the interpreter accepts and the compiler does not. Prints registers / spills.
    pytest.importorskip("triton.backends.nvidia.compiler")
    import subprocess
    import sys

    script = tmp_path / "compile_kernels.py"
    script.write_text(COMPILE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)], env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout)
    assert len(run.stdout.splitlines()) == 15, run.stdout  # 3 + 1 + 5 prefill launches, 1 + 1 + 4 decode


# --------------------------------------------------------------------------------------------
# GPU: the same comparisons compiled, plus the model's shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,H_k,H_v,D_k,D_v", GDN_CASES + [(1, 1, 16, 32, 128, 128), (1, 1000, 4, 8, 128, 128)])
def test_gpu_gated_delta_rule_matches_reference(B, T, H_k, H_v, D_k, D_v):
    tol = (8e-3, 4e-3) if T == 1 else (2e-2, 1e-2)
    check_gdn(gated_delta_rule_triton, gdn_args(B, T, H_k, H_v, D_k, D_v, device="cuda"), out_tol=tol,
              state_tol=tol, name=f"gpu gdn T={T}")
    check_gdn(gated_delta_rule_recurrent, gdn_args(B, min(T, 64), H_k, H_v, D_k, D_v, device="cuda"),
              out_tol=(8e-3, 4e-3), state_tol=(1e-4, 1e-4), name=f"gpu gdn recurrent T={min(T, 64)}")


@pytest.mark.gpu
@pytest.mark.parametrize("keys,decay", [("correlated", "none"), ("random", "strong")])
def test_gpu_gated_delta_chunked_hard_cases(keys, decay):
    # Near-parallel keys at head dims 128 amplify the bf16 rounding more than the CPU case's 32 x 16:
    # the final state's rms error is 3.23e-2 on the H200 and 3.22e-2 under the interpreter,
    # which rounds the operands as the GPU does, so it is the bf16 design's, not a GPU fault.
    tol = (5e-2, 4e-2) if keys == "correlated" else (2e-2, 1e-2)
    check_gdn(gated_delta_rule_chunked, gdn_args(1, 300, 2, 4, 128, 128, device="cuda", keys=keys, decay=decay),
              out_tol=tol, state_tol=tol, name=f"gpu gdn {keys}/{decay}")


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,C,K", CONV_CASES + [(1, 1, 8192, 4), (1, 4096, 8192, 4)])
def test_gpu_causal_conv1d_matches_reference(B, T, C, K):
    args = conv_args(B, T, C, K, device="cuda")
    out, state = causal_conv1d_triton(*args, True)
    ref_out, ref_state = causal_conv1d_ref(*args, True)
    _, rel, _ = errors(f"gpu conv T={T} C={C}", out, ref_out)
    assert rel <= 8e-3 and torch.equal(state, ref_state)  # fast exp in SiLU may flip a rounding


@pytest.mark.gpu
@pytest.mark.parametrize("H,I,E", [(64, 32, 8), (2048, 512, 256)])  # the tiny model's, the real one's
def test_gpu_moe_rows_independent_of_call_size(H, I, E):
    check_moe_rows_independent_of_call_size("cuda", H, I, E)


@pytest.mark.gpu
@pytest.mark.parametrize("N,H,I,E,top_k", MOE_CASES + [(1, 2048, 512, 256, 8), (1000, 2048, 512, 256, 8)])
def test_gpu_moe_experts_matches_reference(N, H, I, E, top_k):
    args = moe_args(N, H, I, E, top_k, device="cuda")
    _, rel, rms = errors(f"gpu moe N={N}", moe_experts_triton(*args), moe_experts_ref(*args))
    assert rel <= 1.5e-2 and rms <= 5e-3
