"""The decode kernel's codebook lookup is inline PTX, which the Triton interpreter does not run.
Here a small emulator of the few PTX instructions it uses executes it on every pair of bytes and
checks it against the codebook, so a change to the asm is checked on the CPU too."""

import torch
import triton
import triton.language as tl

from tq_export.turboquant import codebook, codebook_in_label_order
from tq_kernels.tq4_sdpa import _codebook_tables, _prmt_asm

MASK32 = 0xFFFFFFFF


def prmt(a, b, sel):
    """prmt.b32 (default mode): byte k of the result is byte sel[k] & 7 of {b, a}; with bit 3 of
    the selector nibble set, that byte's bit 7 replicated (sign mode)."""
    out = torch.zeros_like(a)
    for k in range(4):
        s = (sel >> (4 * k)) & 0xF
        idx = s & 7
        from_a = (a >> (8 * (idx & 3))) & 0xFF
        from_b = (b >> (8 * (idx & 3))) & 0xFF
        byte = torch.where(idx < 4, from_a, from_b)
        byte = torch.where((s & 8) != 0, torch.where((byte & 0x80) != 0, 0xFF, 0), byte)
        out |= byte << (8 * k)
    return out


def lop3(a, b, c, lut):
    """lop3.b32: bit i of the result is bit (a_i << 2 | b_i << 1 | c_i) of lut."""
    out = torch.zeros_like(a)
    for minterm in range(8):
        if lut >> minterm & 1:
            term = torch.full_like(a, MASK32)
            for bit, x in zip((4, 2, 1), (a, b, c)):
                term &= x if minterm & bit else ~x & MASK32
            out |= term
    return out


def run_ptx(asm: str, regs: dict) -> dict:
    """Execute the one-line asm block on int64 tensors holding 32-bit values."""
    value = lambda t: regs[t] if t in regs else torch.full_like(regs["$4"], int(t, 0))
    for ins in (i.strip() for i in asm.strip().strip("{}").split(";")):
        if not ins or ins.startswith(".reg"):
            continue
        op, rest = ins.split(None, 1)
        a = [t.strip() for t in rest.split(",")]
        if op == "mov.b32":
            regs[a[0]] = value(a[1])
        elif op == "shr.u32":
            regs[a[0]] = value(a[1]) >> int(a[2])
        elif op == "shl.b32":
            regs[a[0]] = (value(a[1]) << int(a[2])) & MASK32
        elif op == "mul.lo.u32":
            regs[a[0]] = (value(a[1]) * value(a[2])) & MASK32
        elif op == "and.b32":
            regs[a[0]] = value(a[1]) & value(a[2])
        elif op == "prmt.b32":
            regs[a[0]] = prmt(value(a[1]), value(a[2]), value(a[3]))
        elif op == "lop3.b32":
            regs[a[0]] = lop3(value(a[1]), value(a[2]), value(a[3]), int(a[4], 0))
        else:
            raise AssertionError(f"the emulator does not know {op}")
    return regs


@triton.jit
def _tables_kernel(cent_ptr, out_ptr):
    t0, t1, t2, t3 = _codebook_tables(cent_ptr)
    tl.store(out_ptr, t0)
    tl.store(out_ptr + 1, t1)
    tl.store(out_ptr + 2, t2)
    tl.store(out_ptr + 3, t3)


def tables(centroids: torch.Tensor) -> list[int]:
    """The 4 table words the kernels build from a codebook (under the interpreter on CPU)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.zeros(4, dtype=torch.int32, device=dev)
    _tables_kernel[(1,)](centroids.to(dev), out)
    return [int(w) & MASK32 for w in out.cpu()]


def test_tables_hold_the_magnitudes_and_turn_nan_for_an_asymmetric_codebook():
    c = codebook_in_label_order(codebook(256, 4)[0])  # as TurboQuantizer stores it
    bits = [int(v) & 0xFFFF for v in c.bfloat16().view(torch.int16)]
    low = [sum((bits[4 * w + j] & 0xFF) << (8 * j) for j in range(4)) for w in range(2)]
    high = [sum((bits[4 * w + j] >> 8) << (8 * j) for j in range(4)) for w in range(2)]
    assert tables(c) == low + high
    skewed = c.clone()
    skewed[3] *= 1.01
    assert tables(skewed) == [0xC0C0C0C0, 0xC0C0C0C0, 0x7F7F7F7F, 0x7F7F7F7F]  # bf16 0x7FC0: NaN


def halves(r):
    return [r & 0xFFFF, r >> 16]


def test_prmt_lookup_matches_the_codebook_on_every_byte_pair():
    for d in (64, 128, 256):
        c = codebook_in_label_order(codebook(d, 4)[0])
        cb = torch.tensor([int(v) & 0xFFFF for v in c.bfloat16().view(torch.int16)])
        n = torch.arange(65536, dtype=torch.int64)
        # Bytes 0-1 take every pair; bytes 2-3 every pair too, in another order.
        b = [n & 0xFF, n >> 8, (n * 7919 >> 3) & 0xFF, (n * 7919 >> 11) & 0xFF]
        word = b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24
        regs = {"$4": word, **{f"${5 + 4 * i}": torch.full_like(word, t) for i, t in enumerate(tables(c))}}
        regs = run_ptx(_prmt_asm(), regs)
        even = halves(regs["$0"]) + halves(regs["$1"])  # high nibbles
        odd = halves(regs["$2"]) + halves(regs["$3"])  # low nibbles
        for k in range(4):
            assert torch.equal(even[k], cb[b[k] >> 4]), f"D={d}: byte {k}, high nibble"
            assert torch.equal(odd[k], cb[b[k] & 15]), f"D={d}: byte {k}, low nibble"
