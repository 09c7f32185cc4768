"""Compile tq4_sdpa's decode kernel for sm_90 on any machine (no GPU needed) and report what
decides its speed: registers per thread, spill stack, shared memory, programs that fit on one SM
(by registers, threads and shared memory), and the instruction mix of its key loop in the SASS.

    python scripts/kernel_resources.py [--block-m 8] [--block-n 64] [--warps 4] [--maxnreg N] [--plain]

Decode is issue-bound (results/attention.md): a change that costs registers can cost a resident
program per SM, and one that saves instructions in the loop shows up directly. This compiles the
kernel as the launcher specializes it for the benchmark shapes (16-byte aligned pointers and
strides, L_q = 1, launched with PDL; --plain: without, as an exported program runs it), with
Triton's own ptxas and cuobjdump, in a few seconds per shape.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tq_kernels import tq4_sdpa as mod
from bench_attention import SHAPES  # scripts/ is on sys.path: the benchmark's head layouts

REGISTERS_PER_SM, MAX_THREADS_PER_SM = 65536, 2048
# sm_90: 228 KB of shared memory per SM, of which each resident program also reserves 1 KB.
SHARED_PER_SM, SHARED_RESERVED = 228 * 1024, 1024
# The launcher's register cap for decode (the same for every decode shape).
LAUNCH_MAXNREG = mod._config(8, 131072, 1, 1, 128, torch.device("cpu"))["maxnreg"]
INT_ARGS = ("stride_kb", "stride_kh", "stride_ks", "stride_nb", "stride_nh", "Lq", "M_total", "H_kv", "nsplit")
POINTERS = {"qr_ptr": "*bf16", "kp_ptr": "*u8", "kn_ptr": "*bf16", "vp_ptr": "*u8", "vn_ptr": "*bf16",
            "tab_ptr": "*i32", "kv_len_ptr": "*i64", "po_ptr": "*fp32", "plse_ptr": "*fp32"}


def compile_decode(G, D, block_m, block_n, warps, stages, maxnreg=None, pdl=True, kv_vec=None):
    """The decode kernel's CompiledKernel for sm_90, specialized as a decode launch would be
    (pdl: with programmatic dependent launch, as the op launches it on the GPU; kv_vec: bytes of a
    packed row per thread and load, default the launcher's for this head_dim)."""
    kernel = mod._tq4_decode_kernel
    # ints equal to 1 are constants
    launcher = mod._config(G, 131072, 1, 1, D, torch.device("cpu"))
    kv_vec = kv_vec or launcher["kv_vec"]
    consts = dict(G=G, D=D, BLOCK_M=block_m, BLOCK_N=block_n, INTERPRET=False, Lq=1, PDL=pdl, KV_VEC=kv_vec,
                  EARLY=launcher["early"],  # a 128K cache: ranges of many tiles
                  ONE_TILE=False, SHORT=mod._short_ranges(131072, launcher))
    signature = {name: ("constexpr" if name in consts else POINTERS.get(name, "i32")) for name in kernel.arg_names}
    aligned = [*POINTERS, "stride_kb", "stride_kh", "stride_ks", "stride_nb", "stride_nh"]
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs)
    options = dict(num_warps=warps, num_stages=stages, launch_pdl=pdl) | ({"maxnreg": maxnreg} if maxnreg else {})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def cuobjdump(cubin: bytes, flag: str) -> str:
    tool = os.path.join(os.path.dirname(triton.knobs.nvidia.ptxas.path), "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True, check=True).stdout


def loops(sass: str) -> list[list[str]]:
    """The instructions of each backward branch's body, in address order."""
    ins = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    bodies = []
    for addr, op in ins:
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", op)
        if target and int(target.group(1), 16) < addr:
            bodies.append((int(target.group(1), 16), [o for a, o in ins if int(target.group(1), 16) <= a <= addr]))
    return [body for _, body in sorted(bodies, key=lambda b: b[0])]


def largest_loop(sass: str) -> list[str]:
    """The instructions of the longest backward branch's body."""
    return max(loops(sass), key=len, default=[])


def key_loops(sass: str) -> list[list[str]]:
    """The decode kernel's key loops, in address order: the unmasked tiles' (the hot one), then
    the masked last tiles'. Inner loops of a few instructions are left out."""
    return [body for body in loops(sass) if len(body) > 100]


def opcode(instruction: str) -> str:
    """`@!P1 LOP3.LUT R1, ...` -> LOP3."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")[0]


def report(name, G, D, args) -> str:
    block_n = args.block_n or (64 if D >= 256 else 128)
    maxnreg = args.maxnreg if args.maxnreg is not None else LAUNCH_MAXNREG
    ck = compile_decode(G, D, args.block_m, block_n, args.warps, args.stages, maxnreg or None, not args.plain)
    usage = re.search(r"REG:(\d+) STACK:(\d+)", cuobjdump(ck.asm["cubin"], "--dump-resource-usage"))
    regs, stack = int(usage.group(1)), int(usage.group(2))
    threads = 32 * args.warps
    # Registers are allocated per warp in units of 256 (8 per thread, rounded up).
    shared = ck.metadata.shared
    per_sm = min(REGISTERS_PER_SM // (threads * (-(-regs // 8) * 8)), MAX_THREADS_PER_SM // threads,
                 SHARED_PER_SM // (shared + SHARED_RESERVED))
    sass = cuobjdump(ck.asm["cubin"], "--dump-sass")
    loop, *tail = key_loops(sass)
    counts = collections.Counter(opcode(i) for i in loop)
    mix = counts.most_common(8)
    # The loop's global loads all read the cache: the widest are the packed K / V rows (the norms
    # are 2-byte loads), and all should be marked evict-first (.EF).
    cache_loads = re.findall(r"\bLDG\.E\S*", " ".join(loop))
    row_bytes = max((int(ld.rsplit(".", 1)[1]) // 8 for ld in cache_loads if ld.endswith((".64", ".128"))), default=0)
    evict_first = bool(cache_loads) and all(".EF." in ld for ld in cache_loads)
    # How the MMA operands leave shared memory: ldmatrix (LDSM) hands each thread its fragment;
    # plain loads (LDS) of a layout that does not match need register moves to reassemble it.
    return (f"{name:12s} BLOCK_M {args.block_m:2d} BLOCK_N {block_n:3d} warps {args.warps}: {regs} registers, "
            f"{stack} B stack, {shared // 1024} KB shared, {per_sm} programs/SM; loop {len(loop)} instructions "
            f"(masked tail {len(tail[0]) if tail else 0}) "
            f"({', '.join(f'{k} {v}' for k, v in mix)}); shared loads: {counts['LDSM']} ldmatrix, {counts['LDS']} plain; "
            f"packed rows by {row_bytes}-byte loads{' (evict-first)' if evict_first else ''}; "
            # griddepcontrol.wait is ACQBULK in the SASS: where a PDL launch waits for the rotation
            f"waits for the kernel before: {'yes' if 'ACQBULK' in sass else 'no'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-m", type=int, default=8, help="query rows per tile (default 8)")
    ap.add_argument("--block-n", type=int, help="keys per step (default: the launcher's, by head_dim)")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=1)
    ap.add_argument("--maxnreg", type=int, help="cap registers per thread (spills show as stack); default the "
                    f"launcher's ({LAUNCH_MAXNREG}), 0 for none")
    ap.add_argument("--plain", action="store_true", help="without programmatic dependent launch, as an "
                    "exported program launches it (default: with, as the op does on the GPU)")
    args = ap.parse_args()
    for name, (h_q, h_kv, D) in SHAPES.items():
        G = h_q // h_kv
        try:
            print(report(name, G, D, args), flush=True)
        except Exception as e:  # a config Triton rejects: say which and why, go on
            print(f"{name}: does not compile: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
