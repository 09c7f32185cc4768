"""The kernels' codebook lookups are inline PTX, which the Triton interpreter does not run. Here
a small emulator of the few PTX instructions they use executes them on every pair of bytes and
checks them against the codebook, and the decode lookup against the interpreter's emulation of
it, so a change to the asm is checked on the CPU too."""

import numpy as np
import torch
import triton
import triton.language as tl

from tq_export.turboquant import _coordinate_law, codebook, codebook_in_label_order
from tq_kernels.tq4_sdpa import _code_tables, _codebook_tables, _codes_asm, _codes_emulated, _prmt_asm

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
    like = next(iter(regs.values()))
    value = lambda t: regs[t] if t in regs else torch.full_like(like, int(t, 0))
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
        elif op == "xor.b32":
            regs[a[0]] = value(a[1]) ^ value(a[2])
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


@triton.jit
def _code_tables_kernel(cent_ptr, out_ptr):
    t0, t1, cq = _code_tables(cent_ptr)
    tl.store(out_ptr, t0)
    tl.store(out_ptr + 1, t1)
    tl.store(out_ptr + 2, cq.to(tl.int32, bitcast=True))


def code_tables(centroids: torch.Tensor) -> tuple[int, int, float]:
    """The decode lookup's two code words and cq, as the kernels build them."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.zeros(3, dtype=torch.int32, device=dev)
    _code_tables_kernel[(1,)](centroids.to(dev), out)
    out = out.cpu()
    return int(out[0]) & MASK32, int(out[1]) & MASK32, float(out[2:].view(torch.float32))


def every_byte_pair():
    """Words whose bytes 0-1 take every pair of values, and bytes 2-3 too, in another order."""
    n = torch.arange(65536, dtype=torch.int64)
    b = [n & 0xFF, n >> 8, (n * 7919 >> 3) & 0xFF, (n * 7919 >> 11) & 0xFF]
    return b, b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24


def signed_bytes(r):
    return [((r >> (8 * k)) & 0xFF) - 256 * (((r >> (8 * k)) & 0x80) != 0) for k in range(4)]


def test_code_tables_keep_the_codebook_near_its_optimum_and_turn_cq_nan_for_an_asymmetric_one():
    """Code t stands for (t + 0.5) / cq. The scale is the best of 128 below 127.5 / max|c|: each
    entry within half a step, and the distortion with the codes' values in place of the entries
    (the cells unchanged) at most 0.2% above the optimum (it is 0.11-0.15%; 127.5 / max|c| itself
    gave 0.30-0.62%)."""
    for d in (64, 128, 256):
        centroids, boundaries, mse = codebook(d, 4)
        c = codebook_in_label_order(centroids)
        t0, t1, cq = code_tables(c)
        cq_max = 127.5 / c.abs().max().item()
        assert 0.75 * cq_max <= cq <= cq_max * (1 + 1e-6)
        codes = torch.tensor(signed_bytes(torch.tensor(t0)) + signed_bytes(torch.tensor(t1)))
        values = (codes.double() + 0.5) / cq
        assert (values - c[:8]).abs().max() <= 0.5 / cq + 1e-6
        # Each cell's conditional mean is its entry, so a value v in its place adds mass (v - c)^2;
        # d times the sum over cells is the added per-vector distortion (labels 0-7 hold the
        # positive half of the sorted entries, the negative half mirrors it).
        cdf, _ = _coordinate_law(d)
        mass = torch.from_numpy(np.diff(cdf(np.concatenate([[-1.0], boundaries.double().numpy(), [1.0]]))))
        added = 2 * d * (mass[8:] * (values - c[:8].double()) ** 2).sum().item()
        assert added <= 0.002 * mse, f"D={d}: {added / mse:.2%} above the optimal distortion"
    skewed = c.clone()
    skewed[3] *= 1.01
    assert code_tables(skewed)[2] != code_tables(skewed)[2]  # NaN


def test_code_lookups_match_the_codebook_on_every_byte_pair():
    """_dequant_k's int8 codes and _dequant_v's fp16 values, in the nibble order lo, hi of each
    byte: register 1 holds bytes 0-1, register 2 bytes 2-3."""
    for d in (64, 128, 256):
        c = codebook_in_label_order(codebook(d, 4)[0])
        t0, t1, cq = code_tables(c)
        code = torch.tensor(signed_bytes(torch.tensor(t0)) + signed_bytes(torch.tensor(t1)))
        code = torch.cat([code, -code - 1])  # entry j + 8 is ~t_j
        b, word = every_byte_pair()
        nibbles = [[b[k] & 15, b[k] >> 4] for k in range(4)]
        expect = [code[n] for k in range(4) for n in nibbles[k]]  # lo, hi of byte 0, 1, 2, 3
        regs = run_ptx(_codes_asm(False), {"$2": word, "$3": torch.full_like(word, t0), "$7": torch.full_like(word, t1)})
        got = signed_bytes(regs["$0"]) + signed_bytes(regs["$1"])
        for k in range(8):
            assert torch.equal(got[k], expect[k]), f"D={d}: K code {k}"
        for flip, high in ((0, 0x64646464), (MASK32, 0xE4E4E4E4)):
            regs = {"$4": word, "$5": torch.full_like(word, t0 ^ 0x80808080),
                    "$9": torch.full_like(word, t1 ^ 0x80808080), "$13": torch.full_like(word, flip),
                    "$17": torch.full_like(word, high)}
            regs = run_ptx(_codes_asm(True), regs)
            # fp16 pairs: $0 codes 0-1, $1 codes 2-3 (bytes 0-1); $2, $3 bytes 2-3.
            for k, h in enumerate(h for r in ("$0", "$1", "$2", "$3") for h in halves(regs[r])):
                got = h.to(torch.int32).to(torch.int16).view(torch.float16).float()
                u = expect[k] + 128  # the offset-binary code
                want = 1024 + u if flip == 0 else u - 1279  # -(1024 + ~u)
                assert torch.equal(got, want.float()), f"D={d}: V value {k}, flip {flip:#x}"


@triton.jit
def _codes_emulated_kernel(b_ptr, e_ptr, o_ptr, t0, t1, BLOCK_N: tl.constexpr, HALF: tl.constexpr):
    o = tl.arange(0, BLOCK_N)[:, None] * HALF + tl.arange(0, HALF)[None, :]
    c_e, c_o = _codes_emulated(tl.load(b_ptr + o), t0, t1, BLOCK_N, HALF)
    tl.store(e_ptr + o, c_e)
    tl.store(o_ptr + o, c_o)


def test_the_interpreters_lookup_puts_codes_where_the_asm_does(monkeypatch):
    """Under TRITON_INTERPRET=1 the decode kernel runs _codes_emulated instead of the asm; both
    must put each nibble's code at the same column, or the interpreter tests would pass a
    kernel whose GPU lookup mismatches the query's coordinate order."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    c = codebook_in_label_order(codebook(128, 4)[0])
    t0, t1, _ = code_tables(c)
    bn, half = 4, 64
    b = torch.randint(0, 256, (bn, half), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    e, o = torch.zeros(bn, half, dtype=torch.int32), torch.zeros(bn, half, dtype=torch.int32)
    to_i32 = lambda w: w - (1 << 32) if w >= 1 << 31 else w  # noqa: E731
    _codes_emulated_kernel[(1,)](b, e, o, to_i32(t0), to_i32(t1), BLOCK_N=bn, HALF=half)
    # The asm with pack=4: each thread's 4 consecutive bytes of a row make one word.
    words = b.view(torch.int32).to(torch.int64) & MASK32  # [bn, half / 4], little-endian
    regs = run_ptx(_codes_asm(False), {"$2": words, "$3": torch.full_like(words, t0), "$7": torch.full_like(words, t1)})
    asm_e = torch.stack(signed_bytes(regs["$0"]), -1).reshape(bn, half)
    asm_o = torch.stack(signed_bytes(regs["$1"]), -1).reshape(bn, half)
    assert torch.equal(e.long(), asm_e) and torch.equal(o.long(), asm_o)
