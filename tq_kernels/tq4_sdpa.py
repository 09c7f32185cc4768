"""Fused attention over a TurboQuant 4-bit KV cache: `torch.ops.tq.tq4_sdpa`.

TurboQuant (arXiv 2504.19874) stores each key/value as a norm and the 4-bit Lloyd-Max indices of
its rotated unit vector y = u @ R^T. Decode never decompresses the cache to memory:

    score(q, k_j)  = |k_j| * <q @ R^T, c[idx_j]>        (rotate the query once)
    out            = (sum_j p_j |v_j| c[idx_j]) @ R       (rotate the output back once)

so the inner loop reads 2 bytes per 4 coordinates (plus one norm per row), looks each nibble up in
the 16-entry codebook, and feeds tensor-core dots. The lookup is the cost that decides the speed:
on the GPU it runs in registers with byte permutes (no memory access; the codebook's symmetry
halves the table); a gather from a table in memory ran 3x slower. Decode looks nibbles up as int8
codes (`_codes_asm`, 1.1 instructions per value): keys meet an int8 copy of the query in exact
int8 MMAs, values go to fp16 MMAs by one more permute per two values. Prefill decompresses each
row once into bf16 (`_dequant_prmt`). Two more tricks:
  * no nibble interleaving: a packed byte's two coordinates go to different dot operands, so the
    query is loaded in the operands' coordinate order and every dot is split in two;
  * norms scale the [M, N] score / probability tiles, never the [N, D] K / V tiles.

Decode (one query row per head) splits the KV sequence over CTAs (flash-decoding) and a second
kernel merges the partial results and rotates them back. Its kernel computes the tiles transposed
(K q^T, V^T P^T: keys and coordinates as the MMA rows, the few query rows as N), so a tile holds
as few as 8 query rows: the accumulators stay small and 4 programs fit on an SM (the loop is
issue-bound; more resident warps hide its latencies).

Prefill is the other way round: every query tile reads every cache row, and for a whole prompt
the G x L_q query rows outnumber the cache rows G times. A first kernel decompresses each row
once, back out of the rotated basis (norm * c[idx] @ R, S x D x D work per KV head instead of
2 x G x L_q x D x D to rotate the queries and outputs), into a scratch buffer, and a plain bf16
flash attention of the queries as given reads it: GQA-packed tiles (one tile holds G query
heads x BLOCK_M/G positions that share one KV head), the tiles left of the diagonal without the
causal mask. A chunk whose query tiles would leave SMs idle (a short chunk over a long cache)
also splits the keys over programs and merges them, like decode. The scratch is bounded
(SCRATCH_BYTES): a longer cache is decompressed and attended one chunk of rows after another,
each launch folding its keys into running partial results.
kv_len is read on the device: no host sync, CUDA-graph safe, and the loops stop at kv_len and at
the causal bound, never visiting empty cache.

File order: kernels -> launcher (plain function, also runs under TRITON_INTERPRET=1) ->
pure-torch fp32 reference -> triton_op registration.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

LOG2E = 1.4426950408889634
HEAD_DIMS = (64, 128, 256)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _rotate_q_kernel(
    q_ptr, rot_ptr, qr_ptr, cent_ptr, tab_ptr,
    stride_qb, stride_qh, stride_ql,
    M_total, H_kv, qk_scale,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    INTERPRET: tl.constexpr, PDL: tl.constexpr = False,
):
    """q_rot[b, kvh, r, c-chunk] = q[b, kvh*G + r%G, r//G, :] @ R[c-chunk, :]^T * qk_scale  (bf16).

    Rows are GQA-packed (r = position * G + head). Each program reads its chunk of R's rows once
    and walks row tiles i_m, i_m + num_programs(0), ... (so many rows would not re-read R per
    tile); bf16 operands with fp32 accumulation (the result is stored bf16 anyway). One more
    program (chunk index D / BLOCK_C) writes the codebook as the decode loop reads it: two words
    of int8 codes and their scale (`_code_tables`). It is a program of its own so that no
    program's chain of dependent loads holds both jobs: at decode this kernel is a few
    microseconds of latency, not of work. With PDL the decode kernel launched after it may start
    at once (it waits for this one's results where it needs them: `_tq4_decode_kernel`).
    """
    i_m0, i_bh, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if PDL:
        gdc_launch_dependents()
    if i_c == D // BLOCK_C:
        if i_m0 == 0 and i_bh == 0:
            t0, t1, cq = _code_tables(cent_ptr)
            tl.store(tab_ptr, t0)
            tl.store(tab_ptr + 1, t1)
            tl.store(tab_ptr + 2, cq.to(tl.int32, bitcast=True))
    else:
        i_b, i_kvh = i_bh // H_kv, i_bh % H_kv
        o_d = tl.arange(0, D)
        o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
        b_r = tl.load(rot_ptr + o_c[:, None] * D + o_d[None, :])  # [BC, D] rows of R
        if not INTERPRET:  # (the interpreter's bf16 dot is wrong)
            b_r = b_r.to(tl.bfloat16)
        for i_m in range(i_m0, tl.cdiv(M_total, BLOCK_M), tl.num_programs(0)):
            o_r = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
            m_r = o_r < M_total
            p_q = _gqa_rows(q_ptr, i_b, i_kvh, o_r, stride_qb, stride_qh, stride_ql, G) + o_d[None, :]
            b_q = tl.load(p_q, mask=m_r[:, None], other=0.0)  # [BM, D]
            if INTERPRET:
                b_q = b_q.to(tl.float32)
            b_o = tl.dot(b_q, tl.trans(b_r)) * qk_scale  # [BM, BC]
            tl.store(qr_ptr + (i_bh * M_total + o_r)[:, None] * D + o_c[None, :], b_o.to(tl.bfloat16),
                     mask=m_r[:, None])


@triton.jit
def _unrotate(b_e, b_o, rot_ptr, c0, D: tl.constexpr, BLOCK_C: tl.constexpr, INTERPRET: tl.constexpr):
    """Columns [c0, c0 + BC) of ([b_e | b_o] interleaved: even, odd coordinates) @ R, fp32.
    bf16 operands, fp32 accumulation: the results are stored bf16, and tf32 made this epilogue
    ~25 us of prefill 4096 on H100 (qwen3.5-moe shape)."""
    HALF: tl.constexpr = D // 2
    o_h = tl.arange(0, HALF)
    o_c = c0 + tl.arange(0, BLOCK_C)
    b_re = tl.load(rot_ptr + (2 * o_h)[:, None] * D + o_c[None, :])  # [D/2, BC] even rows of R
    b_ro = tl.load(rot_ptr + (2 * o_h + 1)[:, None] * D + o_c[None, :])  # odd rows
    if not INTERPRET:  # (the interpreter's bf16 dot is wrong)
        b_re, b_ro = b_re.to(tl.bfloat16), b_ro.to(tl.bfloat16)
        b_e, b_o = b_e.to(tl.bfloat16), b_o.to(tl.bfloat16)
    return tl.dot(b_e, b_re) + tl.dot(b_o, b_ro)  # [BM, BC]


@triton.jit
def _gqa_rows(ptr, i_b, i_kvh, o_r, stride_b, stride_h, stride_l, G: tl.constexpr):
    """Addresses of packed rows o_r (r = position * G + head) of KV head i_kvh's query heads in a
    [B, H_q, L_q, D] tensor."""
    return ptr + i_b * stride_b + (i_kvh * G + o_r % G)[:, None] * stride_h + (o_r // G)[:, None] * stride_l


def _prmt_asm() -> str:
    """PTX for `_dequant_prmt` with pack=4: operands $0-$1 even pairs, $2-$3 odd pairs, $4 the
    four bytes, then each table word as 4 copies ($5, $9, $13, $17 are used)."""
    tl_lo, th_lo, tl_hi, th_hi = "$5", "$9", "$13", "$17"
    lines = [
        "{", ".reg .b32 s, y, m, lo, hi, sign;", "mov.b32 sign, 0x80808080;",
        # A label's magnitude index is its low 3 bits (prmt would read bit 3 as its sign mode).
        "and.b32 s, $4, 0x77777777;",
        "shl.b32 y, $4, 4;",  # low nibbles moved up, for the sign masks
    ]
    # Per half (bytes 0-1, then 2-3) the selector nibbles run: low nibble of byte 0, its high
    # nibble, low nibble of byte 1, its high nibble (prmt reads bits 0-15). The mask selectors
    # name, for each, the byte whose bit 7 is that nibble's bit 3 (of y for a low nibble, of $4
    # for a high one) with selector bit 3 set: prmt's sign mode then writes 0xFF or 0x00, the
    # whole mask in one instruction. Entries j and j + 8 differ only in the bf16 sign bit.
    for half, (e_out, o_out, mask_sel) in enumerate((("$0", "$2", "0x9D8C"), ("$1", "$3", "0xBFAE"))):
        if half:
            lines.append("shr.u32 s, s, 16;")
        lines += [
            f"prmt.b32 m, $4, y, {mask_sel};",  # 0xFF where the nibble's bit 3 is set
            f"prmt.b32 lo, {tl_lo}, {th_lo}, s;",  # low bytes of the magnitudes
            f"prmt.b32 hi, {tl_hi}, {th_hi}, s;",  # high bytes
            "lop3.b32 hi, hi, m, sign, 0x78;",  # hi ^ (m & 0x80): entries 8-15 flip the sign
            f"prmt.b32 {e_out}, lo, hi, 0x7351;",  # high nibbles (even coordinates) as bf16 pairs
            f"prmt.b32 {o_out}, lo, hi, 0x6240;",  # low nibbles (odd coordinates)
        ]
    # One line: Inductor copies this constant into generated Python source, where a newline in
    # the string literal breaks it.
    return " ".join(lines + ["}"])


_PRMT_ASM = tl.constexpr(_prmt_asm())


@triton.jit
def _dequant_prmt(b, t0, t1, t2, t3):
    """uint8 [..] -> (codebook value of the high nibble, of the low nibble), bf16, in registers.

    Each instance takes 4 packed bytes, i.e. 8 nibbles, and looks them up with byte permutes
    (`prmt`). TurboQuant indices are sign-magnitude labels (tq_export/turboquant.py): c[j + 8] =
    -c[j], so an 8-entry table of c[0..7] serves all 16: a nibble j selects entry j & 7, and bit 3
    flips the sign. Per two bytes, one permute gives the low bytes of the four bf16 entries, one
    the high bytes, one (in sign mode) the sign mask, and two more interleave them into bf16
    pairs: 15 instructions per 8 values, no memory access. (With the nibbles as ranks, c[15 - k]
    = -c[k], finding the mirror entry cost 3 more.) tests/test_tq4_lookup_ptx.py runs the PTX on
    every byte pair. t0, t1 hold the low bytes of c[0..3], c[4..7]; t2, t3 their high bytes.

    Declared impure although it is not: Triton sizes a dot operand's register fragments (kWidth)
    by the narrowest type it finds walking back through pure element-wise ops, so through a pure
    asm it sees the uint8 bytes and lays the bf16 tiles out for a lookup after the shared-memory
    hop (4 values per thread along K). The lookup happens before it, and with that layout the
    operands are read with 64-bit loads and reassembled by ~180 register moves per decode step;
    impure, the walk stops here and the operands are read by ldmatrix (loop 1125 -> 937
    instructions, decode 4-11% faster on H200, results/attention.md, when decode still used this
    lookup; the int8 code lookups below are impure for the same reason).
    """
    return tl.inline_asm_elementwise(
        asm=_PRMT_ASM, constraints="=r,=r,=r,=r,r" + ",r" * 16,
        args=[b, t0, t1, t2, t3],
        dtype=(tl.bfloat16, tl.bfloat16), is_pure=False, pack=4,
    )


@triton.jit
def _lookup(b, lut_ptr, t0, t1, t2, t3, INTERPRET: tl.constexpr):
    """Codebook values of the high (even coordinates) and low (odd) nibbles of packed bytes b:
    in registers by _dequant_prmt on the GPU; under the interpreter (no inline PTX there)
    gathered from the table at lut_ptr, in fp32."""
    if INTERPRET:
        b_e, b_o = tl.load(lut_ptr + (b >> 4)).to(tl.float32), tl.load(lut_ptr + (b & 15)).to(tl.float32)
    else:
        b_e, b_o = _dequant_prmt(b, t0, t1, t2, t3)
    return b_e, b_o


# Decode looks the codebook up as int8 codes instead (prefill decompresses rows once, above):
# code t stands for the value (t + 0.5) / cq, cq fitted to the codebook (`_code_tables`), so the 16
# entries of a symmetric codebook in sign-magnitude labels are t_j = floor(c_j * cq) and t_{j+8} = ~t_j
# (= -t_j - 1, value -(t_j + 0.5) / cq): a sign flip is an XOR with 0xFF. Keys feed int8 MMAs
# with an int8 query, exact in int32; values feed fp16 MMAs as 1024 + u, u = t + 128 the
# offset-binary code, fp16 bits 0x64uu: the byte is the low half of the number, so one permute
# per two values builds them. Either way a lookup is 9 instructions per 8 values plus, for
# values, 4 permutes (bf16 entries took 16), and an int8 tile is half the shared memory.
def _codes_asm(values: bool) -> str:
    """PTX of `_dequant_k` (values=False) and `_dequant_v` (True). Per 4 packed bytes x: the
    permute selector is each nibble's low 3 bits (the magnitude's entry among t_0..t_7); one
    permute in sign mode turns each nibble's bit 3 into a 0x00 / 0xFF byte mask, the XOR applies
    it. Output bytes come in nibble order: lo, hi nibble of byte 0, lo, hi of byte 1 (the first
    register), then bytes 2-3 (the second): the query and the output are read in that
    coordinate order (`_code_coords`), so the lookup needs no shuffles.

    K: $0, $1 the two registers of int8 codes; $2 x; $3, $7 the table words (t_0..t_3, t_4..t_7).
    V: $0-$3 fp16 pairs; $4 x; $5, $9 the table words in offset binary; $13 an XOR applied on
    top (0 or ~0: rows alternate between 1024 + u and -(1024 + ~u), see `_decode_step`); $17 the
    high bytes (0x64 or 0xE4 each)."""
    x, t0, t1 = ("$4", "$5", "$9") if values else ("$2", "$3", "$7")
    lines = ["{", ".reg .b32 s, y, m, v;", f"and.b32 s, {x}, 0x77777777;", f"shl.b32 y, {x}, 4;"]
    # Mask selectors: for each output byte, the byte whose bit 7 is that nibble's bit 3 (of
    # y = x << 4 for a low nibble, of x for a high one), with selector bit 3 set (sign mode).
    for half, mask_sel in enumerate(("0x9D8C", "0xBFAE")):
        if half:
            lines.append("shr.u32 s, s, 16;")  # prmt reads its selector from bits 0-15
        lines += [f"prmt.b32 m, {x}, y, {mask_sel};", f"prmt.b32 v, {t0}, {t1}, s;"]
        if values:
            lines += ["lop3.b32 v, v, m, $13, 0x96;",  # v ^ m ^ flip
                      f"prmt.b32 ${2 * half}, v, $17, 0x4140;", f"prmt.b32 ${2 * half + 1}, v, $17, 0x4342;"]
        else:
            lines.append(f"xor.b32 ${half}, v, m;")
    return " ".join(lines + ["}"])  # one line, like _prmt_asm


_K_CODES_ASM = tl.constexpr(_codes_asm(False))
_V_CODES_ASM = tl.constexpr(_codes_asm(True))


@triton.jit
def _dequant_k(b, t0, t1):
    """Packed bytes [BN, D/2] -> int8 codes of their nibbles, two tensors of the same shape, in
    `_code_coords` order (impure for the reason `_dequant_prmt` gives)."""
    return tl.inline_asm_elementwise(asm=_K_CODES_ASM, constraints="=r,=r,r" + ",r" * 8, args=[b, t0, t1],
                                     dtype=(tl.int8, tl.int8), is_pure=False, pack=4)


@triton.jit
def _dequant_v(b, t0, t1, flip, high):
    """Packed bytes [BN, D/2] -> fp16 1024 + u (or -(1024 + ~u) where flip is ~0, high 0xE4E4E4E4)."""
    return tl.inline_asm_elementwise(asm=_V_CODES_ASM, constraints="=r,=r,=r,=r,r" + ",r" * 16,
                                     args=[b, t0, t1, flip, high], dtype=(tl.float16, tl.float16),
                                     is_pure=False, pack=4)


@triton.jit
def _code_of(nib, t0, t1):
    """int32 code of nibbles nib (the interpreter's lookup): entry nib & 7 of the table words,
    sign-extended, complemented for nib >= 8."""
    m = nib & 7
    byte = (tl.where(m < 4, t0, t1) >> ((m & 3) * 8)) & 0xFF
    t = tl.where(byte >= 128, byte - 256, byte)
    return tl.where(nib >= 8, -t - 1, t)


@triton.jit
def _codes_emulated(b, t0, t1, BLOCK_N: tl.constexpr, HALF: tl.constexpr):
    """What `_dequant_k` computes, as int32, by tensor reshapes: the interpreter runs no PTX."""
    b = b.to(tl.int32)
    # [key, group of 4 bytes, byte in half, half]: half 0 (bytes 0-1) is the first register.
    b = tl.permute(tl.reshape(b, [BLOCK_N, HALF // 4, 2, 2]), (0, 1, 3, 2))
    b_e, b_o = tl.split(b)
    c_e = tl.join(_code_of(b_e & 15, t0, t1), _code_of(b_e >> 4, t0, t1))  # lo nibble first
    c_o = tl.join(_code_of(b_o & 15, t0, t1), _code_of(b_o >> 4, t0, t1))
    return tl.reshape(c_e, [BLOCK_N, HALF]), tl.reshape(c_o, [BLOCK_N, HALF])


@triton.jit
def _code_coords(o_h):
    """Coordinate of column i of the first code tensor: 8 (i // 4) + (i % 4 ^ 1); the second
    tensor's column i is that + 4."""
    return 8 * (o_h // 4) + ((o_h % 4) ^ 1)


@triton.jit
def _code_tables(cent_ptr):
    """The decode lookup's two words of int8 codes t_0..t_3, t_4..t_7 (byte j of word w = t_4w+j)
    and the scale cq. A codebook whose entries j + 8 are not the negated entries j in bf16 (not
    sign-magnitude labels of a symmetric codebook) gets cq = NaN, so the op's output is NaN rather
    than silently wrong (the GPU cannot raise without a host sync; the CPU paths raise).

    The codes put the entries on the grid (t + 0.5) / cq, so the scale decides how far the
    lookup's codebook strays from the true one. The largest scale that keeps the codes in int8,
    127.5 / max|c|, left the Lloyd-Max codebooks of head_dim 64-256 0.5-0.8% rms off their entries:
    0.3-0.6% more distortion than the optimum. Of the 128 scales cq_max (1 - k / 512), the one
    whose 8 magnitudes land closest to the grid (least squared error) leaves 0.3-0.4% rms, 0.11-0.15%
    above the optimum (tests/test_tq4_lookup_ptx.py)."""
    # Each thread takes one candidate scale and reads the entries as scalars, so the only step
    # across threads is the choice among the candidates (all loads come before it: a load is not
    # issued past a barrier). Each entry's repeated loads below compile to one (16 loads in all).
    symmetric = _symmetric(cent_ptr)
    c_max = 0.0
    for j in tl.static_range(8):
        c_max = tl.maximum(c_max, tl.abs(tl.load(cent_ptr + j)))
    cq_max = 127.5 / c_max
    k = tl.arange(0, 128)
    cand = cq_max * (1.0 - k.to(tl.float32) / 512.0)
    err = tl.zeros([128], tl.float32)
    for j in tl.static_range(8):
        x = tl.abs(tl.load(cent_ptr + j)) * cand  # entry j in code units
        miss = tl.minimum(tl.floor(x), 127.0) + 0.5 - x
        err += miss * miss
    err = err / (cand * cand)  # squared error in codebook units
    # The least error and its k in one reduction: a non-negative float's bits order as integers,
    # so its bits with the low 7 replaced by k do too (to within 2^-16 of the error).
    best = tl.min((err.to(tl.int32, bitcast=True) & -128) | k, 0)
    cq = cq_max * (1.0 - (best & 127).to(tl.float32) / 512.0)
    t0, t1 = 0, 0
    for j in tl.static_range(8):
        t = tl.minimum(tl.floor(tl.load(cent_ptr + j) * cq), 127.0).to(tl.int32) & 0xFF
        if j < 4:
            t0 = t0 | (t << (8 * j))
        else:
            t1 = t1 | (t << (8 * (j - 4)))
    return t0, t1, tl.where(symmetric, cq, float("nan"))


@triton.jit
def _prefetch_l2(ptr, nbytes):
    """Ask L2 for the nbytes at ptr (16-byte aligned, a multiple of 16): one bulk prefetch
    (sm_90), issued by thread 0 only; nothing waits for it."""
    return tl.inline_asm_elementwise(
        asm="{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
            "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        constraints="=r,l,r", args=[ptr, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _stream(ptrs, mask=None, other=None):
    """A load of the compressed cache, marked to leave L2 first: a 128K cache streams 68 MB
    (qwen3.5-moe heads) through the H200's 60 MB L2 each call, and at normal priority it pushed
    out what the same call reads again: R (read by the rotation and again by the merge) and the
    split partials (written by one kernel, read by the next). qwen3.5-moe 128K 38.2 -> 37.1 us;
    the other cases within 1% (results/attention.md)."""
    return tl.load(ptrs, mask=mask, other=other, eviction_policy="evict_first")


@triton.jit
def _head_ptrs(kp_ptr, vp_ptr, kn_ptr, vn_ptr, i_b, i_kvh, stride_kb, stride_kh, stride_nb, stride_nh):
    """One (batch, KV head)'s packed K / V rows and their norms."""
    return (kp_ptr + i_b * stride_kb + i_kvh * stride_kh, vp_ptr + i_b * stride_kb + i_kvh * stride_kh,
            kn_ptr + i_b * stride_nb + i_kvh * stride_nh, vn_ptr + i_b * stride_nb + i_kvh * stride_nh)


@triton.jit
def _split_ptrs(kp_ptr, vp_ptr, kn_ptr, vn_ptr, i_b, i_kvh, stride_kb, stride_kh, stride_ks, stride_nb, stride_nh,
                BLOCK_N: tl.constexpr, KN_BYTES: tl.constexpr, VN_BYTES: tl.constexpr):
    """_head_ptrs, and whether decode may prefetch their tiles: a bulk prefetch needs 16-byte
    aligned ranges (a cache view at an odd offset goes without)."""
    p_k, p_v, p_kn, p_vn = _head_ptrs(kp_ptr, vp_ptr, kn_ptr, vn_ptr, i_b, i_kvh,
                                      stride_kb, stride_kh, stride_nb, stride_nh)
    prefetch = ((p_k.to(tl.int64) | p_v.to(tl.int64) | p_kn.to(tl.int64) | p_vn.to(tl.int64)
                 | (stride_ks | BLOCK_N * KN_BYTES | BLOCK_N * VN_BYTES)) & 15) == 0
    return p_k, p_v, p_kn, p_vn, prefetch


@triton.jit
def _kv_vec_aligned(p_k, p_v, kv_len, KV_VEC: tl.constexpr):
    """p_k, p_v, known aligned to KV_VEC bytes only (below 16). Triton gives each thread of a
    packed tile as many contiguous bytes as the pointers' known alignment allows, up to 16. At 16,
    a thread's V lookup yields 32 contiguous bytes of fp16 per operand, stored to shared memory as
    two 16-byte halves 32 bytes apart: a 2-way bank conflict on every store (qwen3.5-moe 128K
    under ncu: 1.08 M of 5.18 M shared-memory wavefronts, the L1 pipe 80% busy). Offsetting K and
    V by a zero that the compiler cannot prove a multiple of 16 (kv_len is never negative) leaves
    them known 8-byte aligned: 8 bytes a thread, the V stores conflict-free (26 K conflicts)."""
    if KV_VEC < 16:
        zero = tl.where(kv_len < 0, KV_VEC, 0)
        p_k, p_v = p_k + zero, p_v + zero
    return p_k, p_v


@triton.jit
def _bf16_bits(x):
    """The 16 bits of finite fp32 x rounded to bf16 (to nearest even, as torch rounds), in an
    int32; integer arithmetic, because the interpreter's own conversion truncates."""
    b = x.to(tl.int32, bitcast=True)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


@triton.jit
def _symmetric(cent_ptr):
    """Whether entries j + 8 of the 16 centroids are the negated entries j, in bf16: sign-magnitude
    labels of a symmetric codebook, the only kind the GPU lookups serve. Entry by entry, as
    scalars: no step across threads."""
    mismatched = 0
    for j in tl.static_range(8):
        c, c_neg = tl.load(cent_ptr + j), tl.load(cent_ptr + j + 8)
        mismatched += tl.where(_bf16_bits(c) == (_bf16_bits(c_neg) ^ 0x8000), 0, 1)
    return mismatched == 0


@triton.jit
def _codebook_tables(cent_ptr):
    """The four 32-bit words of the codebook's bf16 byte tables that _dequant_prmt selects from:
    t0, t1 the low bytes of c[0..3], c[4..7] (byte j of a word = entry 4w + j), t2, t3 their
    high bytes. Summing disjoint byte lanes is an OR. A codebook whose entries j + 8 are not the
    negated entries j in bf16 (not sign-magnitude labels of a symmetric codebook) gets NaN
    tables, so the op's output is NaN rather than silently wrong (the GPU cannot raise without a
    host sync; the CPU paths raise)."""
    o = tl.arange(0, 8)
    bits, shift = _bf16_bits(tl.load(cent_ptr + o)), (o % 4) * 8
    symmetric = _symmetric(cent_ptr)
    lo, hi = (bits & 0xFF) << shift, (bits >> 8) << shift
    t0 = tl.sum(tl.where(o < 4, lo, 0), 0)
    t1 = tl.sum(tl.where(o >= 4, lo, 0), 0)
    t2 = tl.sum(tl.where(o < 4, hi, 0), 0)
    t3 = tl.sum(tl.where(o >= 4, hi, 0), 0)
    nan_lo, nan_hi = -1061109568, 0x7F7F7F7F  # bytes 0xC0 and 0x7F: bf16 0x7FC0, a NaN
    return (tl.where(symmetric, t0, nan_lo), tl.where(symmetric, t1, nan_lo),
            tl.where(symmetric, t2, nan_hi), tl.where(symmetric, t3, nan_hi))


@triton.jit
def _tq4_dequant_kernel(
    kp_ptr, vp_ptr, kn_ptr, vn_ptr, cent_ptr, rot_ptr, kv_len_ptr, kd_ptr, vd_ptr,
    stride_kb, stride_kh, stride_ks, stride_nb, stride_nh, H_kv, row0, chunk, qk_scale,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, INTERPRET: tl.constexpr,
):
    """kd/vd[b*H_kv + h, n - row0, :] = cache row n decompressed: norm * c[idx] @ R as bf16 (for
    K also times qk_scale), for the rows n of [row0, row0 + chunk) below kv_len (programs past
    kv_len return at once). Prefill's query tiles all read every row: decompressing each one once,
    back out of the rotated basis, costs S x D x D per KV head, while rotating the queries and the
    outputs instead costs G x L_q x D x D twice; the attention is then a plain bf16 flash
    attention of the unrotated queries."""
    HALF: tl.constexpr = D // 2
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    n0 = row0 + i_n * BLOCK_N
    kv_len = tl.load(kv_len_ptr).to(tl.int32)
    if n0 < kv_len:
        i_b, i_kvh = i_bh // H_kv, i_bh % H_kv
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = (o_n < kv_len) & (o_n < row0 + chunk)
        o_h = tl.arange(0, HALF)
        t0, t1, t2, t3 = _codebook_tables(cent_ptr)
        src = i_b * stride_kb + i_kvh * stride_kh + o_n[:, None] * stride_ks + o_h[None, :]
        p_norm = i_b * stride_nb + i_kvh * stride_nh + o_n
        dst = (i_bh.to(tl.int64) * chunk + (o_n - row0)[:, None]) * D
        for i in tl.static_range(2):
            b = tl.load((kp_ptr if i == 0 else vp_ptr) + src, mask=m_n[:, None], other=0)
            b_n = tl.load((kn_ptr if i == 0 else vn_ptr) + p_norm, mask=m_n, other=0.0).to(tl.float32)
            if i == 0:
                b_n = b_n * qk_scale
            b_e, b_o = _lookup(b, cent_ptr, t0, t1, t2, t3, INTERPRET)
            for c0 in tl.static_range(0, D, BLOCK_C):
                b_d = _unrotate(b_e, b_o, rot_ptr, c0, D, BLOCK_C, INTERPRET) * b_n[:, None]
                o_c = c0 + tl.arange(0, BLOCK_C)
                tl.store((kd_ptr if i == 0 else vd_ptr) + dst + o_c[None, :], b_d.to(tl.bfloat16),
                         mask=m_n[:, None])


@triton.jit
def _split_len(kv_len, nsplit, BLOCK_N: tl.constexpr):
    """Keys per range when kv_len keys are cut into nsplit ranges of whole BLOCK_N tiles."""
    return tl.cdiv(tl.cdiv(kv_len, nsplit), BLOCK_N) * BLOCK_N


@triton.jit
def _rows_and_keys(i_m, i_s, kv_len, Lq, M_total, nsplit, G: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """Query tile i_m's packed rows (r = position * G + head), their mask and absolute positions,
    and split i_s's key range [lo, hi): up to the tile's last position (keys past it are masked for
    every row), cut into nsplit chunks of whole BLOCK_N tiles."""
    o_r = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_r = o_r < M_total
    pos_r = kv_len - Lq + o_r // G
    last = kv_len - Lq + (tl.minimum(i_m * BLOCK_M + BLOCK_M, M_total) - 1) // G
    chunk = _split_len(kv_len, nsplit, BLOCK_N)
    lo = i_s * chunk
    hi = tl.minimum(tl.minimum(kv_len, last + 1), lo + chunk)
    return o_r, m_r, pos_r, lo, hi


@triton.jit
def _used_splits(kv_len, nsplit, SPLIT_KEYS: tl.constexpr):
    """How many of its nsplit key ranges a split prefill uses: one per SPLIT_KEYS cached keys, at
    least one, so a short cache is not cut into ranges whose merge costs more than spreading them
    over SMs gains (with one, the attention stores the output itself and the merge does nothing)."""
    return tl.minimum(nsplit, tl.maximum(1, kv_len // SPLIT_KEYS))


@triton.jit
def _prefill_tile(kv_len_ptr, Lq, M_total, H_kv, nsplit, G: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, SPLIT_KEYS: tl.constexpr):
    """A prefill program's (batch, KV head, batch x KV head, query tile, kv_len), the tile's
    _rows_and_keys for split program_id(1), and the number of splits in use: nsplit, or with
    SPLIT_KEYS > 0 _used_splits (programs past it get an empty key range). Causal tiles further
    down the sequence do more work: they launch first."""
    i_bh = tl.program_id(2)
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_len = tl.load(kv_len_ptr).to(tl.int32)
    ns = nsplit
    if SPLIT_KEYS > 0:
        ns = _used_splits(kv_len, nsplit, SPLIT_KEYS)
    o_r, m_r, pos_r, lo, hi = _rows_and_keys(i_m, tl.program_id(1), kv_len, Lq, M_total, ns, G, BLOCK_M, BLOCK_N)
    return i_bh // H_kv, i_bh % H_kv, i_bh, i_m, kv_len, ns, o_r, m_r, pos_r, lo, hi


@triton.jit
def _online_softmax(b_s, b_m, b_l):
    """One step of the online softmax along the keys (axis 1) of scores b_s [BM, BN], in base 2
    (log2 e is folded into the scores): (new row max, probabilities, factor that rescales the old
    sums, new row sums). A row with nothing kept yet has m = -inf; subtracting 0 instead keeps
    exp2 at 0 rather than NaN."""
    m_new = tl.maximum(b_m, tl.max(b_s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(b_m - m_use)
    b_p = tl.exp2(b_s - m_use[:, None])
    return m_new, b_p, alpha, b_l * alpha + tl.sum(b_p, 1)


@triton.jit
def _dense_tile(n0, hi, pos_r, b_q, b_m, b_l, b_acc, p_kd, p_vd, o_d,
                D: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr, MASK: tl.constexpr):
    """One BLOCK_N step of the flash loop over decompressed rows [n0, n0 + BLOCK_N): returns the
    updated row max, row sum and accumulator. MASK: apply the causal and end-of-range masks."""
    o_n = n0 + tl.arange(0, BLOCK_N)
    m_n = o_n < hi
    p_row = o_n[:, None] * D + o_d[None, :]
    b_k = tl.load(p_kd + p_row, mask=m_n[:, None], other=0.0)
    if INTERPRET:  # the interpreter's bf16 dot is wrong; same algorithm in fp32
        b_k = b_k.to(tl.float32)
    b_s = tl.dot(b_q, tl.trans(b_k))  # [BM, BN], already scaled (K carries the scale)
    if MASK:
        keep = (o_n[None, :] <= pos_r[:, None]) & m_n[None, :]
        b_s = tl.where(keep, b_s, float("-inf"))
    m_new, b_p, alpha, b_l = _online_softmax(b_s, b_m, b_l)
    b_v = tl.load(p_vd + p_row, mask=m_n[:, None], other=0.0)
    if INTERPRET:
        b_v = b_v.to(tl.float32)
    else:
        b_p = b_p.to(tl.bfloat16)
    return m_new, b_l, b_acc * alpha[:, None] + tl.dot(b_p, b_v)


@triton.jit
def _dense_attn_kernel(
    q_ptr, kd_ptr, vd_ptr, kv_len_ptr, out_ptr, po_ptr, plse_ptr,
    stride_qb, stride_qh, stride_ql, stride_ob, stride_oh, stride_ol, Lq, M_total, H_kv, key0, chunk, nsplit,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT_KEYS: tl.constexpr, CHUNKED: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Causal flash attention of the queries as given (not rotated, not scaled) over the rows
    _tq4_dequant_kernel decompressed (K carries the score scale), one program per GQA-packed query
    tile and key split. Tiles wholly at or before the tile's first query position (and inside
    [lo, hi)) need no mask: in causal prefill, every tile left of the diagonal, and compiled for
    sm_90 the unmasked step is about half the masked one's instructions. SPLIT_KEYS > 0: the keys
    are cut into up to nsplit ranges (_used_splits) and each program stores its partial output and
    log-sum-exp (po / plse, merged by _prefill_merge_kernel), for a short chunk over a long cache,
    whose few query tiles alone would leave most SMs idle.

    CHUNKED: the scratch holds only the cache rows [key0, key0 + chunk) (a long cache is
    decompressed one chunk at a time, launch after launch); the tile's keys in that chunk are cut
    into the ranges, each program folds its part into its partial (po / plse) by log-sum-exp
    weights, and in the tile's last chunk, when it is the only range, stores the output."""
    i_b, i_kvh, i_bh, i_m, kv_len, ns, o_r, m_r, pos_r, lo, hi = _prefill_tile(
        kv_len_ptr, Lq, M_total, H_kv, nsplit, G, BLOCK_M, BLOCK_N, SPLIT_KEYS)
    i_s = tl.program_id(1)
    a, b = lo, hi  # the keys this program covers in this launch
    if CHUNKED:  # the tile's keys in this chunk, cut into the ns ranges (every range gets a part)
        end = tl.minimum(kv_len, kv_len - Lq + (tl.minimum(i_m * BLOCK_M + BLOCK_M, M_total) - 1) // G + 1)
        w_hi = tl.minimum(end, key0 + chunk)
        part = tl.cdiv(tl.cdiv(tl.maximum(w_hi - key0, 0), ns), BLOCK_N) * BLOCK_N
        a = key0 + i_s * part
        b = tl.minimum(w_hi, a + part)
        hi = end
    # Programs of splits not in use (a short cache) stop here, and, chunked, those with no keys
    # in this chunk, except in the first launch: an empty range still writes its (empty) result.
    if (i_s < ns) & ((a < b) | (key0 == 0)):
        o_d = tl.arange(0, D)
        b_q = tl.load(_gqa_rows(q_ptr, i_b, i_kvh, o_r, stride_qb, stride_qh, stride_ql, G) + o_d[None, :],
                      mask=m_r[:, None], other=0.0)  # [BM, D]
        if INTERPRET:
            b_q = b_q.to(tl.float32)
        b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        b_l = tl.zeros([BLOCK_M], tl.float32)
        b_acc = tl.zeros([BLOCK_M, D], tl.float32)
        p_kd = kd_ptr + (i_bh.to(tl.int64) * chunk - key0) * D  # row n of the cache at p_kd + n * D
        p_vd = vd_ptr + (i_bh.to(tl.int64) * chunk - key0) * D
        first = kv_len - Lq + (i_m * BLOCK_M) // G
        mid = tl.maximum(a, a + (tl.minimum(b, first + 1) - a) // BLOCK_N * BLOCK_N)
        for n0 in range(a, mid, BLOCK_N):
            b_m, b_l, b_acc = _dense_tile(n0, b, pos_r, b_q, b_m, b_l, b_acc, p_kd, p_vd, o_d,
                                          D, BLOCK_N, INTERPRET, False)
        for n0 in range(mid, b, BLOCK_N):
            b_m, b_l, b_acc = _dense_tile(n0, b, pos_r, b_q, b_m, b_l, b_acc, p_kd, p_vd, o_d,
                                          D, BLOCK_N, INTERPRET, True)
        # Rows that kept nothing (kv_len = 0, or a row before the first position) output zeros.
        b_acc = b_acc * tl.where(b_l > 0, 1.0 / tl.maximum(b_l, 1e-30), 0.0)[:, None]
        lse = tl.where(b_l > 0, b_m + tl.log2(tl.maximum(b_l, 1e-30)), float("-inf"))
        row = (i_bh * nsplit + i_s) * M_total + o_r
        if CHUNKED:
            if key0 > 0:  # fold in what the earlier chunks left (the first launch wrote every range)
                b_acc, lse = _merge_partial(b_acc, lse, po_ptr, plse_ptr, row, o_d, m_r, D)
        if (ns == 1) & (b >= hi):  # the only split, and its last keys: the output
            tl.store(_gqa_rows(out_ptr, i_b, i_kvh, o_r, stride_ob, stride_oh, stride_ol, G) + o_d[None, :],
                     b_acc.to(tl.bfloat16), mask=m_r[:, None])
        else:
            tl.store(plse_ptr + row, lse, mask=m_r)
            tl.store(po_ptr + row[:, None] * D + o_d[None, :], b_acc, mask=m_r[:, None])


@triton.jit
def _merge_partial(b_o, lse, po_ptr, plse_ptr, row, o_d, m_r, D: tl.constexpr):
    """Fold the stored partial (normalized output, base-2 log-sum-exp) of rows `row` into
    (b_o, lse) by log-sum-exp weights; rows empty on both sides stay zeros / -inf."""
    lse_p = tl.load(plse_ptr + row, mask=m_r, other=float("-inf"))
    b_op = tl.load(po_ptr + row[:, None] * D + o_d[None, :], mask=m_r[:, None], other=0.0)
    m = tl.maximum(lse, lse_p)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w, w_p = tl.exp2(lse - m_use), tl.exp2(lse_p - m_use)
    w_sum = w + w_p
    inv = tl.where(w_sum > 0, 1.0 / tl.maximum(w_sum, 1e-30), 0.0)
    return ((b_o * w[:, None] + b_op * w_p[:, None]) * inv[:, None],
            tl.where(w_sum > 0, m_use + tl.log2(tl.maximum(w_sum, 1e-30)), float("-inf")))


@triton.jit
def _decode_step(n0, hi, pos_r, p_k, p_v, p_kn, p_vn, o_h, stride_ks, prefetch, t0, t1, u0, u1, v_flip, v_high,
                 w_sign, b_qe, b_qo, q_add, q_mul, b_m, b_lT, b_wT, b_aeT, b_aoT, b_kn, b_vn, b_kb0, b_vb0,
                 KN_BYTES: tl.constexpr, VN_BYTES: tl.constexpr, BLOCK_N: tl.constexpr, HALF: tl.constexpr,
                 MASK: tl.constexpr, INTERPRET: tl.constexpr, NORMS_AHEAD: tl.constexpr, LOADED: tl.constexpr = False):
    """One BLOCK_N step of the decode loop over keys [n0, n0 + BLOCK_N): returns the updated row
    max, the [BN, BM] per-element sums of probabilities and of +-p |v| (w_sign: the values'
    offsets, below), the accumulators, and the next tile's norms. MASK: apply the end-of-range and
    causal masks (the loop's last tiles only).

    NORMS_AHEAD: b_kn / b_vn are this tile's norms, loaded by the step before (0 past hi), and
    this step loads the next tile's. At 128-key tiles the norms reach the scores' layout through
    shared memory, and Triton issues V's load only after K's norms have made that trip: loaded in
    their own step, they cost a second L2 round trip a step (ncu, llama 4K: the most sampled
    stall of the kernel). Otherwise b_kn / b_vn are unused and each step loads its own.

    LOADED: the tile's packed rows (b_kb0, b_vb0) and norms (b_kn, b_vn) come loaded already
    (`_tq4_decode_kernel`'s ONE_TILE and SHORT); otherwise b_kb0 / b_vb0 are unused."""
    o_n = n0 + tl.arange(0, BLOCK_N)
    m_n = o_n < hi
    if NORMS_AHEAD:
        m_nxt = o_n + BLOCK_N < hi
        kn_nxt = _stream(p_kn + o_n + BLOCK_N, mask=m_nxt, other=0.0)
        vn_nxt = _stream(p_vn + o_n + BLOCK_N, mask=m_nxt, other=0.0)
    else:
        kn_nxt, vn_nxt = b_kn, b_vn
    if LOADED:
        b_kb, b_vb = b_kb0, b_vb0
    elif MASK:
        b_kb = _stream(p_k + o_n[:, None] * stride_ks + o_h[None, :], mask=m_n[:, None], other=0)
        b_vb = _stream(p_v + o_n[:, None] * stride_ks + o_h[None, :], mask=m_n[:, None], other=0)
        if not NORMS_AHEAD:
            b_kn, b_vn = _stream(p_kn + o_n, mask=m_n, other=0.0), _stream(p_vn + o_n, mask=m_n, other=0.0)
    else:
        p_row = o_n[:, None] * stride_ks + o_h[None, :]
        b_kb, b_vb = _stream(p_k + p_row), _stream(p_v + p_row)
        if not NORMS_AHEAD:
            b_kn, b_vn = _stream(p_kn + o_n), _stream(p_vn + o_n)
    b_kn, b_vn = b_kn.to(tl.float32), b_vn.to(tl.float32)
    # The next tile's rows (contiguous: one range each for K, V and their norms) start on their
    # way to L2 while this one is computed, so its loads wait on L2, not on HBM: the loop's
    # stalls on global loads halve (ncu) and decode at 32K-128K gets 1-5% faster.
    if not INTERPRET:
        if prefetch & (n0 + 2 * BLOCK_N <= hi):
            nxt = n0 + BLOCK_N
            _prefetch_l2(p_k + nxt * stride_ks, BLOCK_N * stride_ks)
            _prefetch_l2(p_v + nxt * stride_ks, BLOCK_N * stride_ks)
            _prefetch_l2(p_kn + nxt, BLOCK_N * KN_BYTES)
            _prefetch_l2(p_vn + nxt, BLOCK_N * VN_BYTES)
    # Scores: int8 codes x int8 query, exact in int32; each code stands for (t + 0.5) / cq, so
    # the score is |k| * q_mul * (codes . q + q_add), q_add = sum(q) / 2.
    if INTERPRET:  # same integers, in fp32 (exact at these sizes)
        b_ke, b_ko = _codes_emulated(b_kb, t0, t1, BLOCK_N, HALF)
        b_si = tl.dot(b_ke.to(tl.float32), b_qe) + tl.dot(b_ko.to(tl.float32), b_qo)
    else:
        b_ke, b_ko = _dequant_k(b_kb, t0, t1)
        b_si = tl.dot(b_ke, b_qe) + tl.dot(b_ko, b_qo)
    b_sT = (b_si.to(tl.float32) + q_add[None, :]) * q_mul[None, :] * b_kn[:, None]  # [BN, BM]
    # V is looked up only now, after K's tiles have been read: the looked-up tiles reach the MMAs
    # through shared memory, and K's and V's alive together would not let 4 programs fit per SM.
    # Values as fp16 1024 + u on even rows and -(1024 + ~u) = u - 1279 on odd ones: the true
    # value is u - 127.5, so every entry carries an offset of +-1151.5. With one sign only, the
    # offsets piled up in the fp32 accumulator to ~1000x the signal, and the tensor cores' fp32
    # accumulation lost the difference (llama 128K: cosine 0.998); alternating, they cancel
    # inside each MMA and leave a sum the epilogue subtracts (b_wT holds it).
    if INTERPRET:
        b_ue, b_uo = _codes_emulated(b_vb, t0, t1, BLOCK_N, HALF)
        odd = (w_sign < 0)[:, None]
        b_ve = tl.where(odd, b_ue - 1151, b_ue + 1152).to(tl.float32)  # (t + 128) - 1279, (t + 128) + 1024
        b_vo = tl.where(odd, b_uo - 1151, b_uo + 1152).to(tl.float32)
    else:
        b_ve, b_vo = _dequant_v(b_vb, u0, u1, v_flip, v_high)
    if MASK:
        keep = (o_n[:, None] <= pos_r[None, :]) & m_n[:, None]
        b_sT = tl.where(keep, b_sT, float("-inf"))
    # Online softmax down the key axis, in base 2 (log2 e is folded into q); a row with nothing
    # kept yet subtracts 0 instead of -inf. The row sums stay per element and are reduced once,
    # after the loop: a reduction across warps per step cost a barrier.
    m_new = tl.maximum(b_m, tl.max(b_sT, 0))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(b_m - m_use)
    b_pT = tl.exp2(b_sT - m_use[None, :])
    b_lT = b_lT * alpha[None, :] + b_pT
    # Norms scale the probabilities, which go to fp16 (capped at its largest finite value).
    b_pT = tl.minimum(b_pT * b_vn[:, None], 65504.0).to(tl.float16)
    b_wT = b_wT * alpha[None, :] + b_pT.to(tl.float32) * w_sign[:, None]
    if INTERPRET:
        b_pT = b_pT.to(tl.float32)
    b_aeT = b_aeT * alpha[None, :] + tl.dot(tl.trans(b_ve), b_pT)
    b_aoT = b_aoT * alpha[None, :] + tl.dot(tl.trans(b_vo), b_pT)
    return m_new, b_lT, b_wT, b_aeT, b_aoT, kn_nxt, vn_nxt


@triton.jit
def _decode_loop(lo, hi, kv_len, Lq, i_m, pos_r, p_k, p_v, p_kn, p_vn, o_h, stride_ks, prefetch, t0, t1, u0, u1,
                 v_flip, v_high, w_sign, b_qe, b_qo, q_add, q_mul, b_m, b_lT, b_wT, b_aeT, b_aoT,
                 KN_BYTES: tl.constexpr, VN_BYTES: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, HALF: tl.constexpr, INTERPRET: tl.constexpr):
    """The split kernel's key loop over [lo, hi): `_decode_step` a tile at a time; returns the
    row max, the per-element sums and the accumulators."""
    # Whole tiles at or before the tile's first query position need no mask (at L_q = 1, all
    # but the range's last): the unmasked step is ~60 instructions shorter.
    first = kv_len - Lq + (i_m * BLOCK_M) // G
    mid = tl.maximum(lo, lo + (tl.minimum(hi, first + 1) - lo) // BLOCK_N * BLOCK_N)
    # The first tile's norms (the steps load them one tile ahead: `_decode_step`).
    NORMS_AHEAD: tl.constexpr = BLOCK_N >= 128
    o_n = lo + tl.arange(0, BLOCK_N)
    b_kn = _stream(p_kn + o_n, mask=(o_n < hi) & NORMS_AHEAD, other=0.0)
    b_vn = _stream(p_vn + o_n, mask=(o_n < hi) & NORMS_AHEAD, other=0.0)
    for n0 in range(lo, mid, BLOCK_N):
        b_m, b_lT, b_wT, b_aeT, b_aoT, b_kn, b_vn = _decode_step(
            n0, hi, pos_r, p_k, p_v, p_kn, p_vn, o_h, stride_ks, prefetch, t0, t1, u0, u1, v_flip, v_high,
            w_sign, b_qe, b_qo, q_add, q_mul, b_m, b_lT, b_wT, b_aeT, b_aoT, b_kn, b_vn, 0, 0,
            KN_BYTES, VN_BYTES, BLOCK_N, HALF, False, INTERPRET, NORMS_AHEAD)
    for n0 in range(mid, hi, BLOCK_N):
        b_m, b_lT, b_wT, b_aeT, b_aoT, b_kn, b_vn = _decode_step(
            n0, hi, pos_r, p_k, p_v, p_kn, p_vn, o_h, stride_ks, prefetch, t0, t1, u0, u1, v_flip, v_high,
            w_sign, b_qe, b_qo, q_add, q_mul, b_m, b_lT, b_wT, b_aeT, b_aoT, b_kn, b_vn, 0, 0,
            KN_BYTES, VN_BYTES, BLOCK_N, HALF, True, INTERPRET, NORMS_AHEAD)
    return b_m, b_lT, b_wT, b_aeT, b_aoT


@triton.jit
def _tq4_decode_kernel(
    qr_ptr, kp_ptr, kn_ptr, vp_ptr, vn_ptr, tab_ptr, kv_len_ptr, po_ptr, plse_ptr,
    stride_kb, stride_kh, stride_ks, stride_nb, stride_nh, Lq, M_total, H_kv, nsplit,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INTERPRET: tl.constexpr, PDL: tl.constexpr = False, KV_VEC: tl.constexpr = 16, EARLY: tl.constexpr = False,
    ONE_TILE: tl.constexpr = False, SHORT: tl.constexpr = False,
):
    """Split-K decode, computed transposed: the scores of one cache chunk as K q^T ([BN, BM]) and
    the output as V^T P^T ([D/2, BM] per half), partials to po/plse for _tq4_combine_kernel, their
    columns in `_code_coords` order.

    Why transposed: with the few query rows of decode as M, sm_90 runs mma.sync fed by ~300
    register copies per step; with the keys (scores) and coordinates (output) as M and 8 query
    rows as N, the accumulators are small (128 registers with the launcher's cap) and the looked
    up tiles reach the MMAs by ldmatrix, so 4 programs fit per SM.

    The query is quantized to int8 once per program, per row by its largest coordinate, in the
    coordinate order of the code tensors; keys are int8 codes (`_codes_asm`), values fp16.

    PDL (programmatic dependent launch, sm_90): the kernel is launched while the query rotation
    still runs. Everything else it reads was written before that rotation started, so it sets up
    its key range and asks L2 for its first tile, and waits (griddepcontrol.wait) only before
    loading the rotated query and the codebook tables; it lets the merge launch at once too.

    KV_VEC: bytes of a packed row each thread loads at once (16, or 8 to keep the stores of the
    looked-up V tiles free of bank conflicts: `_kv_vec_aligned`). EARLY: a program whose key range
    is empty skips the query, the tables and the loop (see where it is applied). ONE_TILE: the
    launcher's split count covers the cache (S <= nsplit x BLOCK_N, and kv_len <= S), so every
    range is at most one tile: the program loads it first and runs one step, no loop. SHORT: ranges
    may hold several tiles, and each program checks its own: one tile runs as under ONE_TILE, more
    run the loop (`_decode_loop`).
    """
    HALF: tl.constexpr = D // 2
    # The split is the grid's slowest axis: the GPU hands out programs in grid order, so the
    # splits that hold keys in a partly filled cache (the first ones) go to distinct SMs. With
    # the head slowest, SM j of 132 got programs j, j + 132, j + 264 and j + 396 at 4 per SM,
    # which at 66 splits per head (llama's 8 heads) are one split number: half the SMs got four
    # splits holding keys, half none.
    i_m, i_bh, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_kvh = i_bh // H_kv, i_bh % H_kv
    kv_len = tl.load(kv_len_ptr).to(tl.int32)
    o_r, m_r, pos_r, lo, hi = _rows_and_keys(i_m, i_s, kv_len, Lq, M_total, nsplit, G, BLOCK_M, BLOCK_N)

    o_h = tl.arange(0, HALF)
    KN_BYTES: tl.constexpr = kn_ptr.dtype.element_ty.primitive_bitwidth // 8
    VN_BYTES: tl.constexpr = vn_ptr.dtype.element_ty.primitive_bitwidth // 8
    # EARLY: a range past kv_len (a partly filled cache) stores only its log-sum-exp (-inf); the
    # merge gives its partial row, never written, weight 0.
    if EARLY and (lo >= hi):
        tl.store(plse_ptr + (i_bh * nsplit + i_s) * M_total + o_r, float("-inf"), mask=m_r)
    else:
        one = (hi - lo <= BLOCK_N) | ONE_TILE  # a range of one tile (under ONE_TILE, every range)
        if PDL or ONE_TILE or SHORT:
            p_k, p_v, p_kn, p_vn, prefetch = _split_ptrs(kp_ptr, vp_ptr, kn_ptr, vn_ptr, i_b, i_kvh, stride_kb,
                                                         stride_kh, stride_ks, stride_nb, stride_nh, BLOCK_N,
                                                         KN_BYTES, VN_BYTES)
        if PDL:
            gdc_launch_dependents()
        if ONE_TILE or SHORT:
            # A range's only tile goes to registers before anything waits (on the rotation, then on
            # the query and the tables): its round trip overlaps theirs instead of following them.
            p_k, p_v = _kv_vec_aligned(p_k, p_v, kv_len, KV_VEC)
            o_n = lo + tl.arange(0, BLOCK_N)
            m_n = (o_n < hi) & one
            b_kb0 = _stream(p_k + o_n[:, None] * stride_ks + o_h[None, :], mask=m_n[:, None], other=0)
            b_vb0 = _stream(p_v + o_n[:, None] * stride_ks + o_h[None, :], mask=m_n[:, None], other=0)
            b_kn, b_vn = _stream(p_kn + o_n, mask=m_n, other=0.0), _stream(p_vn + o_n, mask=m_n, other=0.0)
        if PDL:
            if (not ONE_TILE) and prefetch & (lo + BLOCK_N <= hi):  # the first tile, while the rotation finishes
                _prefetch_l2(p_k + lo * stride_ks, BLOCK_N * stride_ks)
                _prefetch_l2(p_v + lo * stride_ks, BLOCK_N * stride_ks)
                _prefetch_l2(p_kn + lo, BLOCK_N * KN_BYTES)
                _prefetch_l2(p_vn + lo, BLOCK_N * VN_BYTES)
            gdc_wait()
        p_q = qr_ptr + (i_bh * M_total + o_r)[None, :] * D + _code_coords(o_h)[:, None]
        b_qe = tl.load(p_q, mask=m_r[None, :], other=0.0).to(tl.float32)  # [D/2, BM]
        b_qo = tl.load(p_q + 4, mask=m_r[None, :], other=0.0).to(tl.float32)
        q_max = tl.maximum(tl.max(tl.abs(b_qe), 0), tl.max(tl.abs(b_qo), 0))
        q_inv = tl.where(q_max > 0, 127.0 / tl.maximum(q_max, 1e-30), 0.0)  # rows of zeros (masked) stay 0
        b_qe = tl.floor(b_qe * q_inv[None, :] + 0.5)
        b_qo = tl.floor(b_qo * q_inv[None, :] + 0.5)
        q_add = 0.5 * (tl.sum(b_qe, 0) + tl.sum(b_qo, 0))
        if not INTERPRET:
            b_qe, b_qo = b_qe.to(tl.int8), b_qo.to(tl.int8)
        t0, t1 = tl.load(tab_ptr), tl.load(tab_ptr + 1)
        cq = tl.load(tab_ptr + 2).to(tl.float32, bitcast=True)
        q_mul = q_max / 127.0 / cq
        u0, u1 = t0 ^ -2139062144, t1 ^ -2139062144  # ^ 0x80808080: the codes in offset binary
        # Per key row: even rows hold values as 1024 + u, odd rows as -(1024 + ~u) (see _decode_step).
        odd = (tl.arange(0, BLOCK_N) % 2) == 1
        v_flip = tl.broadcast_to(tl.where(odd, -1, 0)[:, None], [BLOCK_N, HALF])
        v_high = tl.where(v_flip != 0, -454761244, 1684300900)  # 0xE4E4E4E4, 0x64646464
        w_sign = tl.where(odd, -1.0, 1.0)

        b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        b_lT = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        b_wT = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        b_aeT = tl.zeros([HALF, BLOCK_M], tl.float32)
        b_aoT = tl.zeros([HALF, BLOCK_M], tl.float32)
        if ONE_TILE or SHORT:
            if one:
                if lo < hi:
                    b_m, b_lT, b_wT, b_aeT, b_aoT, b_kn, b_vn = _decode_step(
                        lo, hi, pos_r, p_k, p_v, p_kn, p_vn, o_h, stride_ks, prefetch, t0, t1, u0, u1, v_flip,
                        v_high, w_sign, b_qe, b_qo, q_add, q_mul, b_m, b_lT, b_wT, b_aeT, b_aoT, b_kn, b_vn, b_kb0,
                        b_vb0, KN_BYTES, VN_BYTES, BLOCK_N, HALF, True, INTERPRET, False, True)
            else:  # (SHORT only: under ONE_TILE `one` is a constant and this branch is folded away)
                b_m, b_lT, b_wT, b_aeT, b_aoT = _decode_loop(
                    lo, hi, kv_len, Lq, i_m, pos_r, p_k, p_v, p_kn, p_vn, o_h, stride_ks, prefetch, t0, t1, u0, u1,
                    v_flip, v_high, w_sign, b_qe, b_qo, q_add, q_mul, b_m, b_lT, b_wT, b_aeT, b_aoT,
                    KN_BYTES, VN_BYTES, G, BLOCK_M, BLOCK_N, HALF, INTERPRET)
        else:
            if not PDL:  # (here, not above: ptxas then allocates the loop with ~50 fewer register copies a step)
                p_k, p_v, p_kn, p_vn, prefetch = _split_ptrs(kp_ptr, vp_ptr, kn_ptr, vn_ptr, i_b, i_kvh, stride_kb,
                                                             stride_kh, stride_ks, stride_nb, stride_nh, BLOCK_N,
                                                             KN_BYTES, VN_BYTES)
            p_k, p_v = _kv_vec_aligned(p_k, p_v, kv_len, KV_VEC)
            b_m, b_lT, b_wT, b_aeT, b_aoT = _decode_loop(
                lo, hi, kv_len, Lq, i_m, pos_r, p_k, p_v, p_kn, p_vn, o_h, stride_ks, prefetch, t0, t1, u0, u1,
                v_flip, v_high, w_sign, b_qe, b_qo, q_add, q_mul, b_m, b_lT, b_wT, b_aeT, b_aoT,
                KN_BYTES, VN_BYTES, G, BLOCK_M, BLOCK_N, HALF, INTERPRET)
        b_l = tl.sum(b_lT, 0)
        # The values' offsets: sum over keys of +-1151.5 * p |v|; then back from codes to values.
        b_off = 1151.5 * tl.sum(b_wT, 0)
        inv_l = tl.where(b_l > 0, 1.0 / tl.maximum(b_l, 1e-30), 0.0) / cq
        lse = tl.where(b_l > 0, b_m + tl.log2(tl.maximum(b_l, 1e-30)), float("-inf"))
        row = (i_bh * nsplit + i_s) * M_total + o_r
        tl.store(plse_ptr + row, lse, mask=m_r)
        tl.store(po_ptr + row[None, :] * D + o_h[:, None], (b_aeT - b_off[None, :]) * inv_l[None, :], mask=m_r[None, :])
        tl.store(po_ptr + row[None, :] * D + HALF + o_h[:, None], (b_aoT - b_off[None, :]) * inv_l[None, :],
                 mask=m_r[None, :])


@triton.jit
def _merge_group(b_o, g0: tl.constexpr, nsplit, row0, M_total, m_use, po_ptr, plse_ptr, o_d, D: tl.constexpr,
                 BLOCK_S: tl.constexpr, NS_MAX: tl.constexpr):
    """Add splits [g0, g0 + 64) below nsplit of one row, weighted by exp2(lse - m_use), to the
    [BLOCK_S, width] accumulator b_o: an unrolled loop, so all their loads are in flight at once.
    A split whose weight is 0 adds nothing, whatever its row holds (an empty range of a kernel
    launched with EARLY never writes it)."""
    for s1 in tl.static_range(0, 64, BLOCK_S):
        if g0 + s1 < NS_MAX:
            o_s = g0 + s1 + tl.arange(0, BLOCK_S)
            m_s = o_s < nsplit
            p_row = row0 + o_s * M_total
            w = tl.exp2(tl.load(plse_ptr + p_row, mask=m_s, other=float("-inf")) - m_use)
            b_p = tl.load(po_ptr + p_row[:, None] * D + o_d[None, :], mask=m_s[:, None], other=0.0)
            b_o += tl.where(w[:, None] > 0, w[:, None] * b_p, 0.0)
    return b_o


@triton.jit
def _split_rows(po_ptr, plse_ptr, row0, M_total, nsplit, o_d, D: tl.constexpr, S0: tl.constexpr, N: tl.constexpr):
    """Partial rows (columns o_d) and log-sum-exps of splits [S0, S0 + N), masked past nsplit."""
    o_s = S0 + tl.arange(0, N)
    p_s = row0 + o_s * M_total
    b_p = tl.load(po_ptr + p_s[:, None] * D + o_d[None, :], mask=(o_s < nsplit)[:, None], other=0.0)
    return b_p, tl.load(plse_ptr + p_s, mask=o_s < nsplit, other=float("-inf"))


@triton.jit
def _weighted_sum(b_p, lse, m_use):
    """Partial rows b_p summed by their weights exp2(lse - m_use) (a row of weight 0 adds nothing,
    whatever it holds), and the sum of the weights."""
    w = tl.exp2(lse - m_use)
    return tl.sum(tl.where(w[:, None] > 0, w[:, None] * b_p, 0.0), 0), tl.sum(w, 0)


@triton.jit
def _merged_row(po_ptr, plse_ptr, kv_len, row0, M_total, nsplit, o_d, D: tl.constexpr, WIDTH: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, NS_MAX: tl.constexpr, WHOLE: tl.constexpr,
                NS_HEAD: tl.constexpr, NS_TAIL: tl.constexpr):
    """Columns o_d (WIDTH of them) of one row's nsplit partials (row row0 + s * M_total of split s)
    merged by log-sum-exp weights, and the row's merged base-2 log-sum-exp (-inf: no keys).

    Its loads are as few dependent steps as possible (NS_MAX >= nsplit, a power of two fixed by
    the launcher). WHOLE: the partials and the log-sum-exps are loaded at once, one dependent step,
    and merged after, as a power-of-two tile of splits [0, NS_HEAD) and, if NS_TAIL > 0, a second
    one [NS_HEAD, NS_HEAD + NS_TAIL) (`_whole_split_tiles`); the launcher takes it where they fit in
    registers (`_whole_merge`). Otherwise kv_len and all log-sum-exps come first, then the partial
    rows BLOCK_S at a time in an unrolled loop over NS_MAX, all in flight together, but only after the
    log-sum-exps' maximum (a barrier) and one step per group of 64 splits (each group is a branch
    on kv_len); a loop over nsplit made one dependent L2 round trip per step (6.8 us at 132 splits
    on H100). Every split stores its log-sum-exp (one that holds no keys: -inf), so they need not
    wait for kv_len, and a split whose weight is 0 adds nothing (`_merge_group`). A row whose
    splits hold no keys merges to zeros."""
    if WHOLE:
        b_h, lse_h = _split_rows(po_ptr, plse_ptr, row0, M_total, nsplit, o_d, D, 0, NS_HEAD)
        m = tl.max(lse_h, 0)
        if NS_TAIL > 0:
            b_t, lse_t = _split_rows(po_ptr, plse_ptr, row0, M_total, nsplit, o_d, D, NS_HEAD, NS_TAIL)
            m = tl.maximum(m, tl.max(lse_t, 0))
        m_use = tl.where(m == float("-inf"), 0.0, m)
        o, w_sum = _weighted_sum(b_h, lse_h, m_use)
        if NS_TAIL > 0:
            o_t, w_t = _weighted_sum(b_t, lse_t, m_use)
            o, w_sum = o + o_t, w_sum + w_t
    else:
        o_all = tl.arange(0, NS_MAX)
        lse = tl.load(plse_ptr + row0 + o_all * M_total, mask=o_all < nsplit, other=float("-inf"))
        m = tl.max(lse, 0)
        m_use = tl.where(m == float("-inf"), 0.0, m)
        w_sum = tl.sum(tl.exp2(lse - m_use), 0)
        b_o = tl.zeros([BLOCK_S, WIDTH], tl.float32)
        # Groups of 64 splits past the last that holds keys are skipped whole (masked loads still
        # cost instructions: with 4K cached in a 128K qwen3.5-moe cache, 132 splits of which 64
        # hold keys, the masked unrolled loop took 2.8 us more). The first group always runs.
        used = tl.cdiv(kv_len, tl.maximum(_split_len(kv_len, nsplit, BLOCK_N), 1))
        b_o = _merge_group(b_o, 0, nsplit, row0, M_total, m_use, po_ptr, plse_ptr, o_d, D, BLOCK_S, NS_MAX)
        for g0 in tl.static_range(64, NS_MAX, 64):
            if g0 < used:
                b_o = _merge_group(b_o, g0, nsplit, row0, M_total, m_use, po_ptr, plse_ptr, o_d, D, BLOCK_S, NS_MAX)
        o = tl.sum(b_o, 0)
    o = o * tl.where(w_sum > 0, 1.0 / tl.maximum(w_sum, 1e-30), 0.0)
    return o, tl.where(w_sum > 0, m_use + tl.log2(tl.maximum(w_sum, 1e-30)), float("-inf"))


@triton.jit
def _tq4_merge_cols_kernel(
    po_ptr, plse_ptr, kv_len_ptr, mo_ptr, mlse_ptr, M_total, nsplit,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, NS_MAX: tl.constexpr,
    NS_HEAD: tl.constexpr, NS_TAIL: tl.constexpr, PDL: tl.constexpr = False, WHOLE: tl.constexpr = False,
):
    """Merge the nsplit partials of one row, columns [c0, c0 + BLOCK_C), into mo / mlse (one
    partial per row, for `_tq4_combine_kernel` to rotate back): the first of two merge steps where
    splits are many. Each partial column is read once, by one of D / BLOCK_C programs per row
    (each of the combine's programs reads whole rows).

    PDL: launched while the split kernel runs, it lets the combine launch at once (to load R)
    and waits for the partials."""
    i_r, i_bh, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_d = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    kv_len = tl.load(kv_len_ptr).to(tl.int32)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    o, lse = _merged_row(po_ptr, plse_ptr, kv_len, i_bh * nsplit * M_total + i_r, M_total, nsplit, o_d, D, BLOCK_C,
                         BLOCK_N, BLOCK_S, NS_MAX, WHOLE, NS_HEAD, NS_TAIL)
    row = i_bh * M_total + i_r
    tl.store(mo_ptr + row * D + o_d, o)
    if i_c == 0:
        tl.store(mlse_ptr + row, lse)


@triton.jit
def _tq4_combine_kernel(
    po_ptr, plse_ptr, rot_ptr, kv_len_ptr, out_ptr, stride_ob, stride_oh, stride_ol, M_total, H_kv, nsplit,
    G: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    NS_MAX: tl.constexpr, NS_HEAD: tl.constexpr, NS_TAIL: tl.constexpr, PDL: tl.constexpr = False,
    WHOLE: tl.constexpr = False,
):
    """Merge the nsplit partial outputs of one row by log-sum-exp weights and rotate the result
    back, for output columns [c0, c0 + BLOCK_C): out = (sum_s w_s o_s / sum_s w_s) @ R.

    One program per (row, batch x KV head, column chunk), so decode's few rows still spread over
    many SMs; at short context this kernel is latency, not work (`_merged_row`). Each program
    merges whole rows, all D columns, for its chunk of the rotation: with hundreds of splits
    that repeated reading is slower than merging once, by column chunks, in a kernel of its own
    (`_tq4_merge_cols_kernel`), which leaves this one a single partial per row. The partials keep
    the attention loop's column order (`_code_coords`), so R's rows are read in that order too.

    PDL: launched while the split kernel runs, it loads its chunk of R, which nothing before it
    writes, and then waits (griddepcontrol.wait) for the partials. WHOLE (`_merged_row`): R's chunk
    is loaded first too, with or without PDL, so all of the program's loads are in flight at once.
    """
    HALF: tl.constexpr = D // 2
    i_r, i_bh, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_kvh = i_bh // H_kv, i_bh % H_kv
    o_d = tl.arange(0, D)
    row0 = i_bh * nsplit * M_total + i_r  # partial row of split s: row0 + s * M_total
    kv_len = tl.load(kv_len_ptr).to(tl.int32)
    # Column j of the partials is coordinate _code_coords(j) (j < D/2), or that of j - D/2 plus 4.
    r_row = _code_coords(o_d % HALF) + tl.where(o_d < HALF, 0, 4)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    if PDL or WHOLE:
        b_r = tl.load(rot_ptr + r_row[:, None] * D + o_c[None, :])  # [D, BC]
    if PDL:
        gdc_wait()
    o_rot, _ = _merged_row(po_ptr, plse_ptr, kv_len, row0, M_total, nsplit, o_d, D, D, BLOCK_N, BLOCK_S, NS_MAX,
                           WHOLE, NS_HEAD, NS_TAIL)
    if not (PDL or WHOLE):  # rotate back (loaded last: first was slower here, results/attention.md)
        b_r = tl.load(rot_ptr + r_row[:, None] * D + o_c[None, :])  # [D, BC]
    b_out = tl.sum(o_rot[:, None] * b_r, 0)
    tl.store(out_ptr + i_b * stride_ob + (i_kvh * G + i_r % G) * stride_oh + (i_r // G) * stride_ol + o_c,
             b_out.to(tl.bfloat16))


@triton.jit
def _prefill_merge_kernel(
    po_ptr, plse_ptr, out_ptr, kv_len_ptr, stride_ob, stride_oh, stride_ol, M_total, H_kv, nsplit,
    G: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT_KEYS: tl.constexpr,
):
    """Merge a split prefill's partial outputs (_dense_attn_kernel, output columns already) by
    log-sum-exp weights, BLOCK_R rows per program: a prefill chunk has thousands of rows, where
    _tq4_combine_kernel's one program per row and column chunk spent ~50 us launching programs.
    Nothing to do when the attention used one key range (it stored the output itself)."""
    i_r, i_bh = tl.program_id(0), tl.program_id(1)
    ns = _used_splits(tl.load(kv_len_ptr).to(tl.int32), nsplit, SPLIT_KEYS)
    if ns > 1:
        i_b, i_kvh = i_bh // H_kv, i_bh % H_kv
        o_r = i_r * BLOCK_R + tl.arange(0, BLOCK_R)
        m_r = o_r < M_total
        o_d = tl.arange(0, D)
        row0 = i_bh * nsplit * M_total + o_r  # partial rows of split s: row0 + s * M_total
        m = tl.full([BLOCK_R], float("-inf"), tl.float32)
        for i_s in range(ns):
            m = tl.maximum(m, tl.load(plse_ptr + row0 + i_s * M_total, mask=m_r, other=float("-inf")))
        m_use = tl.where(m == float("-inf"), 0.0, m)  # rows that kept nothing anywhere: zeros
        w_sum = tl.zeros([BLOCK_R], tl.float32)
        b_o = tl.zeros([BLOCK_R, D], tl.float32)
        for i_s in range(ns):
            p_row = row0 + i_s * M_total
            w = tl.exp2(tl.load(plse_ptr + p_row, mask=m_r, other=float("-inf")) - m_use)
            w_sum += w
            b_o += w[:, None] * tl.load(po_ptr + p_row[:, None] * D + o_d[None, :], mask=m_r[:, None], other=0.0)
        b_o = b_o * tl.where(w_sum > 0, 1.0 / tl.maximum(w_sum, 1e-30), 0.0)[:, None]
        tl.store(_gqa_rows(out_ptr, i_b, i_kvh, o_r, stride_ob, stride_oh, stride_ol, G) + o_d[None, :],
                 b_o.to(tl.bfloat16), mask=m_r[:, None])


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # CPU (interpreter, export tracing): any fixed value gives the same program


def validate(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len) -> None:
    """Check dtypes, shapes and devices; raise ValueError naming the problem."""
    if q.dim() != 4:
        raise ValueError(f"tq4_sdpa: q must be [B, H_q, L_q, D], got shape {tuple(q.shape)}")
    B, H_q, _, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"tq4_sdpa: head_dim must be one of {HEAD_DIMS}, got {D}")
    if q.dtype != torch.bfloat16:
        raise ValueError(f"tq4_sdpa: q must be bfloat16, got {q.dtype}")
    for name, t in (("k_packed", k_packed), ("v_packed", v_packed)):
        if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[0] != B or t.shape[3] != D // 2:
            raise ValueError(f"tq4_sdpa: {name} must be uint8 [B={B}, H_kv, S, D/2={D // 2}], "
                             f"got {t.dtype} {tuple(t.shape)}")
    if v_packed.shape != k_packed.shape:
        raise ValueError(f"tq4_sdpa: k_packed {tuple(k_packed.shape)} and v_packed {tuple(v_packed.shape)} differ")
    H_kv = k_packed.shape[1]
    if H_q % H_kv:
        raise ValueError(f"tq4_sdpa: H_q={H_q} is not a multiple of H_kv={H_kv}")
    for name, t in (("k_norms", k_norms), ("v_norms", v_norms)):
        if t.dtype not in (torch.bfloat16, torch.float32) or t.shape != k_packed.shape[:3]:
            raise ValueError(f"tq4_sdpa: {name} must be bf16/fp32 {tuple(k_packed.shape[:3])}, "
                             f"got {t.dtype} {tuple(t.shape)}")
    if centroids.dtype != torch.float32 or centroids.shape != (16,):
        raise ValueError(f"tq4_sdpa: centroids must be float32 [16], got {centroids.dtype} {tuple(centroids.shape)}")
    if rotation.dtype != torch.float32 or rotation.shape != (D, D):
        raise ValueError(f"tq4_sdpa: rotation must be float32 [{D}, {D}], got {rotation.dtype} {tuple(rotation.shape)}")
    if kv_len.dtype != torch.int64 or kv_len.shape != (1,):
        raise ValueError(f"tq4_sdpa: kv_len must be an int64 tensor [1], got {kv_len.dtype} {tuple(kv_len.shape)}")
    # The GPU lookup serves symmetric codebooks in sign-magnitude label order only, as every
    # TurboQuantizer's is (Lloyd-Max for a symmetric law); it gives NaN for another. Its values
    # are checked where reading them is free: on CPU tensors, not on the GPU (a host sync) or
    # while tracing.
    if centroids.device.type == "cpu" and not is_fake(centroids):
        c = centroids.to(torch.bfloat16)
        if not torch.equal(c[8:], -c[:8]):
            raise ValueError("tq4_sdpa: centroids must be symmetric, by sign-magnitude label "
                             f"(c[j + 8] = -c[j] in bf16, as TurboQuantizer stores them), got {c.tolist()}")
    devices = {t.device for t in (q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len)}
    if len(devices) > 1:
        raise ValueError(f"tq4_sdpa: all inputs must be on one device, got {sorted(map(str, devices))}")


# Tuning override for benchmarks and tests: a dict with any of decode (take the split-K decode
# kernels, else prefill's scratch path), block_m, block_n, nsplit (key ranges per query tile;
# with more than one, a merge follows), warps, stages, kv_vec (bytes of a packed row each thread
# of decode's split kernel loads at once: 8 or 16), early (decode's programs with an empty key
# range exit at once), rotate (rows, columns, programs per column chunk, warps of decode's query
# rotation), combine (splits per step, columns, warps, stages of decode's merge and rotation
# back), merge_cols (splits per step, columns, warps of a first merge by column chunks; None:
# none), pdl (launch decode's split kernel and merge with programmatic dependent
# launch where the launcher may: `_use_pdl`), scratch (rows per program, columns per
# step, warps of the prefill scratch kernel), chunk (cache rows the prefill scratch holds),
# split_keys (cached keys per key range of a split prefill) and merge (rows per program, warps of
# a split prefill's merge).
CONFIG_OVERRIDE: dict | None = None
# Prefill decompresses the cache into a bf16 scratch (K and V) of at most this size: a longer
# cache is decompressed and attended in chunks of rows, so the transient copy stays far below
# the bf16 cache TurboQuant saves (qwen3.5-moe heads: 32K rows per chunk).
SCRATCH_BYTES = 64 * 2**20


def _config(M_total, S, B, H_kv, D, device):
    """Launch config without guarding on a dynamic L_q: decode (a few packed rows) splits the
    sequence over many programs; prefill packs the GQA group into tall query tiles."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    sms = _num_sms(device)
    # Prefill's scratch kernel: 64 rows per program; at head_dim 256, 64 output columns per step
    # and 8 warps (4 spill), below 32 columns and 4 warps (H100 sweep, results/attention.md).
    # A split prefill uses one key range per 1024 cached keys; its merge takes 32 rows per program.
    # The scratch holds whole 1024-row blocks within SCRATCH_BYTES (K and V, bf16).
    # Decode's kernels launch with programmatic dependent launch where they may (`_use_pdl`): the
    # split kernel prefetches its first tile instead of waiting out the rotation's launch boundary,
    # and the merge loads R while the split kernel runs: 5-9% faster in every qwen3.5-moe decode
    # case on the H200. At head_dim 128 that merge was 1.5 us slower at 4K until it loaded its
    # partials in one step (`_whole_merge`); with that, PDL is as fast at 4K, 1% faster at
    # 32K-128K and 12% with 4K cached of 128K (results/attention.md).
    common = dict(scratch=(64, 64, 8) if D == 256 else (64, 32, 4), split_keys=1024, merge=(32, 4),
                  combine=(16, 64, 4, 1), pdl=True,
                  chunk=max(1024, SCRATCH_BYTES // (2 * B * H_kv * D * 2) // 1024 * 1024))
    if statically_known_true(M_total <= 16):  # measured best on H100 (scripts/bench_attention.py --sweep)
        # The split kernel (computed transposed: the keys are the MMA's M) with one pipeline stage,
        # 4 warps, 64-key tiles at head_dim 256 (registers) and 128-key tiles below: the fastest
        # of 64 launch configs per case on H100 for both qwen3.5-moe (2 x 256) and llama (8 x 128)
        # heads at 4K-128K (scripts/bench_attention.py --sweep --only decode; results/attention.md).
        # The query rows are the MMA's N: 8 when they fit (decode with GQA up to 8) rather than 16
        # halves the accumulators (scripts/kernel_resources.py): 1-6% faster in every decode case
        # on H200, although Triton then takes mma.sync for wgmma. With two loops (unmasked and
        # masked tiles) ptxas takes ~160 registers; capped at 128 it spills nothing, and registers
        # and shared memory fit 4 programs per SM (3 uncapped: up to 26% slower at 32K-128K, H200).
        # More resident warps hide more of the loop's latencies, but every range also costs a
        # fixed prologue, epilogue and merge: 4 programs per SM where each range still gets at least 4 tiles
        # (llama 32K and both at 128K: 4-8% faster on H200), else 2 (qwen3.5-moe 32K, where a
        # range would get 2 tiles: 5% slower at 4). results/attention.md has the tables.
        block_m = 8 if statically_known_true(M_total <= 8) else 16
        block_n = 64 if D >= 256 else 128
        # Packed rows 8 bytes per thread at head_dim 256: its looked-up V tiles then reach shared
        # memory without bank conflicts (`_tq4_decode_kernel`), 3-7% faster in every qwen3.5-moe
        # decode case on H200; at head_dim 128 16-byte loads stay faster (0.1-2.7%).
        kv_vec = 8 if D >= 256 else 16
        splits4 = triton.cdiv(4 * sms, B * H_kv)
        per_sm = 4 if statically_known_true(S > 3 * block_n * splits4) else 2
        max_splits = triton.cdiv(per_sm * sms, B * H_kv)  # independent of kv_len: a static bound for the merge
        nsplit = max(1, min(triton.cdiv(S, block_n), max_splits))
        # At head_dim 256 (H200, results/attention.md): programs whose key range is empty (a partly
        # filled cache) exit early, 4% faster with 4K cached of 128K and no slower elsewhere (at
        # head_dim 128 0.2 us slower at 4K); and where the splits are 128 or more, their partials
        # are merged by column chunks first (`_tq4_merge_cols_kernel`): 2-3% faster at 32K-128K,
        # where fewer splits pay more for the extra launch than they save.
        early = D >= 256
        # At head_dim 256, ranges of several tiles are checked on the device for holding one
        # (`_short_ranges`): 1-2% faster at 32K-128K and with 4K cached of 128K on H200; at 128 the
        # same was 0.5-2% slower.
        short = D >= 256
        merge_cols = (16, 32, 4) if early and statically_known_true(nsplit >= 128) else None
        # The query rotation is latency on every call's path: at head_dim 256 each of its programs
        # rotates into 8 columns (an 8 KB slice of R) rather than 32, 0.3-0.6 us shorter at 4K-128K;
        # at head_dim 128, 16 or 8 columns made llama 4K 0.5-1 us slower (results/attention.md).
        rotate = (16, 8, 1, 4) if D >= 256 else (16, 32, 1, 4)
        return dict(decode=True, block_m=block_m, block_n=block_n, nsplit=nsplit, max_splits=max_splits, warps=4,
                    stages=1, maxnreg=128, kv_vec=kv_vec, early=early, short=short, merge_cols=merge_cols,
                    rotate=rotate) | common | (CONFIG_OVERRIDE or {})
    # H100 best (results/attention.md): 128 x 64 tiles, 8 warps; 2 stages at head_dim 256 (3 do
    # not fit in shared memory), 3 below.
    bm, bn, warps, stages = (128, 64, 8, 2) if D == 256 else (128, 64, 8, 3)
    # A short chunk over a long cache: when its query tiles (at most, for a dynamic L_q) fill at
    # most half the SMs, split the keys too, up to about two programs per SM, using one range per
    # split_keys cached keys (_used_splits).
    tiles = triton.cdiv(M_total, bm) * B * H_kv
    nsplit = 1
    if statically_known_true(2 * tiles <= sms):
        nsplit = next((ns for ns in (32, 16, 8, 4, 2) if statically_known_true(tiles * ns <= 2 * sms)), 1)
    return dict(decode=False, block_m=bm, block_n=bn, nsplit=nsplit, warps=warps, stages=stages) | common | (
        CONFIG_OVERRIDE or {})


def _one_tile(S, cfg) -> bool:
    """Whether decode's split count covers a cache of S rows, so that every key range is at most one
    tile (the split kernel's ONE_TILE; caches up to 4-8K rows at the benchmark shapes). Its tile is
    then loaded before the prologue waits on anything: at 4K on the H200, qwen3.5-moe 9.9 -> 9.0
    us, llama 9.3 -> 8.8. Peeling the first tile that way in ranges of several tiles made their
    loop 1-3% slower at 32K-128K (results/attention.md). cfg's one_tile=False turns it off (tests).

    Only at 8 query rows (mma.sync): at 16 (L_q > 1 with GQA, where Triton takes wgmma) this
    kernel compiled by Triton 3.6 stores past its shared memory (compute-sanitizer on the H200:
    out-of-range shared addresses at the P V dot) and faults."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return (cfg.get("one_tile", True) and cfg["block_m"] == 8
            and statically_known_true(S <= cfg["nsplit"] * cfg["block_n"]))


def _short_ranges(S, cfg) -> bool:
    """Where ranges may hold several tiles (not `_one_tile`), whether the split kernel checks each
    range on the device and runs a range of one tile as `_one_tile` does (SHORT): a long-context
    cache that is partly filled has ranges of one tile until kv_len reaches a tile per split.
    Where the launcher's config asks for it (`_config`: head_dim 256, where it measured faster),
    and only at 8 query rows, for the reason `_one_tile` gives."""
    return bool(cfg.get("short")) and cfg["block_m"] == 8 and not _one_tile(S, cfg)


def _use_pdl(q) -> bool:
    """Whether decode's kernels may be launched with programmatic dependent launch (PDL: a kernel
    starts while the one before it runs and waits where it reads its results, griddepcontrol on
    sm_90): for tensors on a GPU, not while tracing. AOTInductor launches an exported program's
    kernels without PDL, so an export keeps the kernels compiled without it (the launcher also
    leaves it out under the interpreter)."""
    return q.device.type == "cuda" and not is_fake(q)


@functools.cache
def _decode_launch(warps, stages, maxnreg):
    """The decode kernel with its launch options as a one-config autotuner (one config runs
    without benchmarking). A plain launch's maxnreg does not survive torch.export: the config's
    does, where tq_export's compile settings keep it (`register_caps`), so the exported program
    runs the kernel with the registers measured here."""
    config = triton.Config({}, num_warps=warps, num_stages=stages, maxnreg=maxnreg)
    return triton.autotune(configs=[config], key=[])(_tq4_decode_kernel)


def _whole_merge(values, warps) -> bool:
    """Whether a merge program loads all its partials (and R's chunk: `values` fp32 in all) at once
    (`_merged_row`'s WHOLE): where they come to at most 192 a thread. Measured on the H200: one
    dependent step instead of one per group of 64 splits made the first merge step at qwen3.5-moe
    128K 4.3 -> 2.9 us (128 values a thread: 255 registers and 176 B of spills, and still faster)
    and llama's merge 0.3-0.5 us shorter at 32K-128K (192 a thread: 219 registers, no spills). At
    256 a thread (qwen3.5-moe's merge at 4K: 64 splits of 256 columns and a 64 KB chunk of R) it
    spills 440 B, against 240 by groups, and takes 0.6 us longer."""
    return values <= 192 * 32 * warps


def _whole_split_tiles(nsplit, ns_max) -> tuple[int, int]:
    """The tiles of splits a whole merge loads (`_merged_row`'s NS_HEAD, NS_TAIL): the largest power
    of two within nsplit, then the next power of two at or above what is left (0 if nothing is).
    The launcher's split counts fill the SMs and are rarely powers of two: qwen3.5-moe's 264 at 128K
    made the first merge step load one tile of 512 splits, half of it masked; as 256 + 8 the op is
    0.4-0.7 us faster at 128K on the H200 (results/attention.md), and the combine after it loads
    its one partial row alone instead of a masked tile of 16. (ns_max, 0) where nsplit is not
    static."""
    if not isinstance(nsplit, int):
        return ns_max, 0
    head = 1 << (nsplit.bit_length() - 1)
    return head, (triton.next_power_of_2(nsplit - head) if nsplit > head else 0)


def _partials(rows, D, dev):
    """Split-K partial outputs [rows, D] and their log-sum-exps [rows], fp32."""
    return (torch.empty((rows, D), dtype=torch.float32, device=dev),
            torch.empty((rows,), dtype=torch.float32, device=dev))


def tq4_sdpa_triton(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len, scale=None):
    """Triton path of tq4_sdpa; a plain function (same arguments as the op) so tests can call it
    directly on CPU tensors under TRITON_INTERPRET=1."""
    validate(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len)
    B, H_q, Lq, D = q.shape
    H_kv = k_packed.shape[1]
    G = H_q // H_kv
    M_total = Lq * G
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    cfg = _config(M_total, k_packed.shape[2], B, H_kv, D, q.device)
    nsplit = cfg["nsplit"]
    dev = q.device

    rot = rotation.contiguous()
    k_norms, v_norms = k_norms.contiguous(), v_norms.contiguous()
    k_packed, v_packed = k_packed.contiguous(), v_packed.contiguous()
    out = torch.empty((B, H_q, Lq, D), dtype=torch.bfloat16, device=dev)
    q_strides, out_strides = (q.stride(0), q.stride(1), q.stride(2)), (out.stride(0), out.stride(1), out.stride(2))
    S = k_packed.shape[2]
    kstrides = (k_packed.stride(0), k_packed.stride(1), k_packed.stride(2))
    nstrides = (k_norms.stride(0), k_norms.stride(1))
    q_tiles = triton.cdiv(M_total, cfg["block_m"])  # query tiles per (batch, KV head)

    if not cfg["decode"]:  # every query tile reads every row: decompress each one once, into bf16
        # At most `chunk` rows at a time: a long cache is decompressed and attended chunk by chunk.
        chunk = min(S, cfg["chunk"])
        nchunk = triton.cdiv(S, chunk)
        kd = torch.empty((B * H_kv, chunk, D), dtype=torch.bfloat16, device=dev)
        vd = torch.empty((B * H_kv, chunk, D), dtype=torch.bfloat16, device=dev)
        sn, sc, sw = cfg["scratch"]
        split_keys = cfg["split_keys"] if nsplit > 1 else 0
        po, plse = _partials(B * H_kv * nsplit * M_total, D, dev) if nsplit > 1 or nchunk > 1 else (out, out)
        for c in range(nchunk):
            wrap_triton(_tq4_dequant_kernel)[(triton.cdiv(chunk, sn), B * H_kv)](
                k_packed, v_packed, k_norms, v_norms, centroids, rot, kv_len, kd, vd, *kstrides, *nstrides,
                H_kv, c * chunk, chunk, scale * LOG2E, D=D, BLOCK_N=sn, BLOCK_C=sc, INTERPRET=interpret, num_warps=sw,
            )
            wrap_triton(_dense_attn_kernel)[(q_tiles, nsplit, B * H_kv)](
                q, kd, vd, kv_len, out, po, plse, *q_strides, *out_strides, Lq, M_total, H_kv, c * chunk, chunk,
                nsplit, G=G, D=D, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], SPLIT_KEYS=split_keys,
                CHUNKED=nchunk > 1, INTERPRET=interpret, num_warps=cfg["warps"], num_stages=cfg["stages"],
            )
        if nsplit > 1:
            mr, mw = cfg["merge"]
            wrap_triton(_prefill_merge_kernel)[(triton.cdiv(M_total, mr), B * H_kv)](
                po, plse, out, kv_len, *out_strides, M_total, H_kv, nsplit,
                G=G, D=D, BLOCK_R=mr, SPLIT_KEYS=split_keys, num_warps=mw,
            )
        return out

    # Decode: rotate the queries, split the keys over programs, merge the partials and rotate back.
    q_rot = torch.empty((B, H_kv, M_total, D), dtype=torch.bfloat16, device=dev)
    tab = torch.empty((4,), dtype=torch.int32, device=dev)  # _code_tables: two words of codes, cq
    pdl = bool(cfg["pdl"]) and not interpret and _use_pdl(q)
    launch_pdl = {"launch_pdl": True} if pdl else {}  # for the kernels after the rotation
    rm, rc, rp, rw = cfg["rotate"]
    wrap_triton(_rotate_q_kernel)[(torch.sym_min(triton.cdiv(M_total, rm), rp), B * H_kv, D // rc + 1)](
        q, rot, q_rot, centroids, tab, *q_strides, M_total, H_kv, scale * LOG2E,
        G=G, D=D, BLOCK_M=rm, BLOCK_C=rc, INTERPRET=interpret, PDL=pdl, num_warps=rw, num_stages=2,
    )
    po, plse = _partials(B * H_kv * nsplit * M_total, D, dev)
    wrap_triton(_decode_launch(cfg["warps"], cfg["stages"], cfg.get("maxnreg")))[(q_tiles, B * H_kv, nsplit)](
        q_rot, k_packed, k_norms, v_packed, v_norms, tab, kv_len, po, plse,
        *kstrides, *nstrides, Lq, M_total, H_kv, nsplit,
        G=G, D=D, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], INTERPRET=interpret, PDL=pdl,
        KV_VEC=cfg.get("kv_vec", 16), EARLY=cfg.get("early", False), ONE_TILE=_one_tile(S, cfg),
        SHORT=_short_ranges(S, cfg),
        **launch_pdl,
    )
    cs, cc, cw, cst = cfg["combine"]
    ns_max = triton.next_power_of_2(nsplit if isinstance(nsplit, int) else cfg["max_splits"])
    if cfg.get("merge_cols"):  # merge by column chunks first: the combine then rotates one partial per row
        ms, mc, mw = cfg["merge_cols"]
        mo, mlse = _partials(B * H_kv * M_total, D, dev)
        ns_max = max(ms, ns_max)
        head, tail = _whole_split_tiles(nsplit, ns_max)
        wrap_triton(_tq4_merge_cols_kernel)[(M_total, B * H_kv, D // mc)](
            po, plse, kv_len, mo, mlse, M_total, nsplit, D=D, BLOCK_N=cfg["block_n"], BLOCK_S=ms, BLOCK_C=mc,
            NS_MAX=ns_max, PDL=pdl, WHOLE=_whole_merge((head + tail) * mc, mw), NS_HEAD=head, NS_TAIL=tail,
            num_warps=mw, **launch_pdl,
        )
        po, plse, nsplit, ns_max = mo, mlse, 1, 1
    ns_max = max(cs, ns_max)
    head, tail = _whole_split_tiles(nsplit, ns_max)
    if tail:  # one tile of NS_MAX instead: as two, llama's merge of 66 splits was 0.2-1 us slower at 32K-128K
        head, tail = ns_max, 0
    wrap_triton(_tq4_combine_kernel)[(M_total, B * H_kv, D // cc)](
        po, plse, rot, kv_len, out, *out_strides, M_total, H_kv, nsplit, G=G, D=D, BLOCK_N=cfg["block_n"],
        BLOCK_S=cs, BLOCK_C=cc, NS_MAX=ns_max, PDL=pdl, WHOLE=_whole_merge(head * D + D * cc, cw),
        NS_HEAD=head, NS_TAIL=tail, num_warps=cw, num_stages=cst, **launch_pdl,
    )
    return out


# --------------------------------------------------------------------------------------------
# Reference (fp32, pure torch): dequantize, then plain attention
# --------------------------------------------------------------------------------------------


def dequantize_tq4(packed, norms, centroids, rotation):
    """uint8 [..., D/2] (element 2i in the high nibble) + norms [...] -> float32 [..., D]."""
    p = packed.to(torch.int64)
    idx = torch.stack([p >> 4, p & 15], dim=-1).flatten(-2)
    return (centroids[idx] @ rotation) * norms.float().unsqueeze(-1)


def tq4_sdpa_reference(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len, scale=None):
    validate(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len)
    B, H_q, Lq, D = q.shape
    G = H_q // k_packed.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    k = dequantize_tq4(k_packed, k_norms, centroids, rotation).repeat_interleave(G, dim=1)
    v = dequantize_tq4(v_packed, v_norms, centroids, rotation).repeat_interleave(G, dim=1)
    scores = (q.float() @ k.transpose(-1, -2)) * scale  # [B, H_q, Lq, S]
    pos = kv_len - Lq + torch.arange(Lq, device=q.device)  # absolute position of each row
    keys = torch.arange(k.shape[2], device=q.device)
    keep = (keys[None, :] <= pos[:, None]) & (keys[None, :] < kv_len)
    scores = scores.masked_fill(~keep, float("-inf"))
    # Fully masked rows: softmax would give NaN; they output zeros.
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (probs @ v).to(torch.bfloat16)


# --------------------------------------------------------------------------------------------
# The op: Triton on CUDA (traced into the AOTInductor program), the reference on CPU
# --------------------------------------------------------------------------------------------


@triton_op("tq::tq4_sdpa", mutates_args=())
def tq4_sdpa(
    q: torch.Tensor,
    k_packed: torch.Tensor,
    k_norms: torch.Tensor,
    v_packed: torch.Tensor,
    v_norms: torch.Tensor,
    centroids: torch.Tensor,
    rotation: torch.Tensor,
    kv_len: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    return tq4_sdpa_triton(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len, scale)


@tq4_sdpa.register_kernel("cpu")
def _tq4_sdpa_cpu(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len, scale=None):
    return tq4_sdpa_reference(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len, scale)


@tq4_sdpa.register_fake
def _tq4_sdpa_fake(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len, scale=None):
    # Shapes only: tracing must not launch kernels (under TRITON_INTERPRET=1 the launcher would run).
    validate(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len)
    return torch.empty_like(q)
