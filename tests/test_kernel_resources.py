"""scripts/kernel_resources.py: the SASS parsing, and one real compile for sm_90 on the CPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

# A prologue, a loop from 0x0040 back-branching at 0x0080, a shorter inner loop, and the exit.
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/              @P0 BRA 0x00c0 ;
        /*0040*/                   PRMT R4, R2, 0x7351, R3 ;
        /*0050*/                   LOP3.LUT R5, R4, 0x80808080, R6, 0xf4, !PT ;
        /*0060*/                   HGMMA.64x16x16.F32.BF16 R24, R76, gdesc[UR56], RZ, !UPT ;
        /*0070*/              @!P1 BRA 0x0060 ;
        /*0080*/              @!UP1 BRA 0x0040 ;
        /*00c0*/                   EXIT ;
        /*00d0*/                   BRA 0x00d0;
"""


def test_largest_loop_is_the_longest_backward_branch_body():
    import kernel_resources as kr

    loop = kr.largest_loop(SASS)
    assert [kr.opcode(i) for i in loop] == ["PRMT", "LOP3", "HGMMA", "BRA", "BRA"]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--plain"]], ids=["pdl", "plain"])
def test_compiles_the_decode_kernel_for_sm90_and_finds_the_lookup_loop(flags):
    """ptxas and cuobjdump come with Triton's wheel: this runs on a CPU-only machine. Both
    launches: with PDL (eager GPU calls) and plain (exported programs)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), *flags], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["qwen3.5-moe", "llama"], out.stdout + out.stderr
    for line in lines:
        m = re.search(r"(\d+) registers, (\d+) B stack, (\d+) KB shared, (\d+) programs/SM; loop (\d+) instructions",
                      line)
        assert m, line
        regs, _, shared_kb, per_sm, n_loop = map(int, m.groups())
        assert 0 < regs <= 255 and 0 < shared_kb < 228 and n_loop > 100, line
        # The launcher runs 4 programs per SM on long caches: registers and shared memory must let
        # them all be resident. (With V looked up before K's tiles are read, both sit in shared
        # memory at once, 68 KB: 3 fit.)
        assert per_sm >= 4, line
        assert "PRMT" in line, line  # the loop found is the one that looks the codebook up
        # The looked-up K / V tiles and the query reach the MMAs by ldmatrix; plain shared loads
        # are only the softmax reductions' few. (With the lookup asm declared pure, Triton lays
        # the operands out for 8-bit data: 48 LDS.64 and ~180 register moves per step.)
        ldsm, lds = map(int, re.search(r"shared loads: (\d+) ldmatrix, (\d+) plain", line).groups())
        assert ldsm >= 24 and lds <= 8, line
        # At head_dim 256 each thread loads 8 bytes of a packed row, so that the looked-up V tiles'
        # stores to shared memory are free of bank conflicts (a 16-byte load made them 2-way
        # conflicted); llama's rows stay 16-byte loads.
        assert f"packed rows by {8 if line.startswith('qwen') else 16}-byte loads" in line, line
        # Every load of the loop reads the cache, marked evict-first: the cache streams past L2
        # without pushing out R and the split partials, which the same call reads again.
        assert "loads (evict-first);" in line, line
        # A PDL launch waits (griddepcontrol.wait) for the query rotation; a plain one needs not.
        assert line.endswith("waits for the kernel before: " + ("no" if flags else "yes")), line
