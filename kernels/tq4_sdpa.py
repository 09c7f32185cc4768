"""Fused attention over a TurboQuant 4-bit KV cache: `torch.ops.tq.tq4_sdpa`.

TurboQuant (arXiv 2504.19874) stores each key/value as a norm and the 4-bit Lloyd-Max indices of
its rotated unit vector y = u @ R^T. Attention never decompresses the cache to memory:

    score(q, k_j)  = |k_j| * <q @ R^T, c[idx_j]>        (rotate the query once)
    out            = (sum_j p_j |v_j| c[idx_j]) @ R       (rotate the output back once)

so the inner loop reads 2 bytes per 4 coordinates (plus one norm per row), looks each nibble up in
the 16-entry codebook, and feeds tensor-core dots. Two more tricks keep the loop lean:
  * no nibble interleaving: the high nibbles are the even coordinates and the low nibbles the odd
    ones, so the query is loaded as its even and odd halves and every dot is split in two;
  * norms scale the [M, N] score / probability tiles, never the [N, D] K / V tiles.

Decode (one query row per head) splits the KV sequence over CTAs (flash-decoding) and a second
kernel merges the partial results; prefill tiles queries with GQA packing (one tile holds G query
heads x BLOCK_M/G positions that share one KV head, so each K/V tile is unpacked once per tile).
kv_len is read on the device: no host sync, CUDA-graph safe, and the loops stop at kv_len and at
the causal bound, never visiting empty cache.

File order: kernels -> launcher (plain function, also runs under TRITON_INTERPRET=1) ->
pure-torch fp32 reference -> triton_op registration.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

LOG2E = 1.4426950408889634
HEAD_DIMS = (64, 128, 256)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _rotate_q_kernel(
    q_ptr, rot_ptr, qr_ptr, cent_ptr, lut_ptr,
    stride_qb, stride_qh, stride_ql,
    M_total, H_kv, qk_scale,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """q_rot[b, kvh, r, c-chunk] = q[b, kvh*G + r%G, r//G, :] @ R[c-chunk, :]^T * qk_scale  (bf16).

    Rows are GQA-packed (r = position * G + head). One program per column chunk keeps the read of R
    spread over many SMs. Program (0, 0, 0) also writes the bf16 codebook LUT, so the attention
    loop loads 2-byte entries with no conversion and no extra launch.
    """
    i_m, i_bh, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_kvh = i_bh // H_kv, i_bh % H_kv
    if i_m == 0 and i_bh == 0 and i_c == 0:
        o_l = tl.arange(0, 16)
        tl.store(lut_ptr + o_l, tl.load(cent_ptr + o_l).to(tl.bfloat16))
    o_r = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_r = o_r < M_total
    o_d = tl.arange(0, D)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_q = (q_ptr + i_b * stride_qb + (i_kvh * G + o_r % G)[:, None] * stride_qh
           + (o_r // G)[:, None] * stride_ql + o_d[None, :])
    b_q = tl.load(p_q, mask=m_r[:, None], other=0.0).to(tl.float32)  # [BM, D]
    b_r = tl.load(rot_ptr + o_c[:, None] * D + o_d[None, :])  # [BC, D] rows of R
    b_o = tl.dot(b_q, tl.trans(b_r)) * qk_scale  # [BM, BC]
    tl.store(qr_ptr + (i_bh * M_total + o_r)[:, None] * D + o_c[None, :], b_o.to(tl.bfloat16),
             mask=m_r[:, None])


@triton.jit
def _unrotate_store(b_oe, b_oo, rot_ptr, out_ptr, i_b, i_kvh, o_r, m_r, c0,
                    stride_ob, stride_oh, stride_ol,
                    G: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Columns [c0, c0 + BC) of ([o_even | o_odd] interleaved) @ R, stored bf16 to [B, H_q, L_q, D]."""
    HALF: tl.constexpr = D // 2
    o_h = tl.arange(0, HALF)
    o_c = c0 + tl.arange(0, BLOCK_C)
    b_re = tl.load(rot_ptr + (2 * o_h)[:, None] * D + o_c[None, :])  # [D/2, BC] even rows of R
    b_ro = tl.load(rot_ptr + (2 * o_h + 1)[:, None] * D + o_c[None, :])  # odd rows
    b_o = tl.dot(b_oe, b_re) + tl.dot(b_oo, b_ro)  # [BM, BC]
    p_out = (out_ptr + i_b * stride_ob + (i_kvh * G + o_r % G)[:, None] * stride_oh
             + (o_r // G)[:, None] * stride_ol + o_c[None, :])
    tl.store(p_out, b_o.to(tl.bfloat16), mask=m_r[:, None])


@triton.jit
def _tq4_attn_kernel(
    qr_ptr, kp_ptr, kn_ptr, vp_ptr, vn_ptr, lut_ptr, rot_ptr, kv_len_ptr,
    out_ptr, po_ptr, plse_ptr,
    stride_kb, stride_kh, stride_ks, stride_nb, stride_nh,
    stride_ob, stride_oh, stride_ol,
    Lq, M_total, H_kv,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NSPLIT: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr,
):
    HALF: tl.constexpr = D // 2
    i_m, i_s, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_kvh = i_bh // H_kv, i_bh % H_kv
    # Causal prefill tiles further down the sequence do more work: launch them first.
    i_m = tl.num_programs(0) - 1 - i_m
    kv_len = tl.load(kv_len_ptr).to(tl.int32)

    o_r = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # packed rows: r = position * G + head
    m_r = o_r < M_total
    pos_r = kv_len - Lq + o_r // G  # absolute position of each query row
    last = kv_len - Lq + (tl.minimum(i_m * BLOCK_M + BLOCK_M, M_total) - 1) // G
    hi = tl.minimum(kv_len, last + 1)  # keys past this are masked for every row of the tile
    chunk = tl.cdiv(tl.cdiv(kv_len, NSPLIT), BLOCK_N) * BLOCK_N
    lo = i_s * chunk
    hi = tl.minimum(hi, lo + chunk)

    o_h = tl.arange(0, HALF)
    p_q = qr_ptr + (i_bh * M_total + o_r)[:, None] * D
    b_qe = tl.load(p_q + 2 * o_h[None, :], mask=m_r[:, None], other=0.0)  # [BM, D/2] even coords
    b_qo = tl.load(p_q + 2 * o_h[None, :] + 1, mask=m_r[:, None], other=0.0)  # odd coords
    if UPCAST:  # the interpreter's bf16 dot is wrong; same algorithm in fp32
        b_qe, b_qo = b_qe.to(tl.float32), b_qo.to(tl.float32)

    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_ae = tl.zeros([BLOCK_M, HALF], tl.float32)
    b_ao = tl.zeros([BLOCK_M, HALF], tl.float32)
    p_k = kp_ptr + i_b * stride_kb + i_kvh * stride_kh
    p_v = vp_ptr + i_b * stride_kb + i_kvh * stride_kh
    p_kn = kn_ptr + i_b * stride_nb + i_kvh * stride_nh
    p_vn = vn_ptr + i_b * stride_nb + i_kvh * stride_nh
    for n0 in range(lo, hi, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < hi
        b_kb = tl.load(p_k + o_n[:, None] * stride_ks + o_h[None, :], mask=m_n[:, None], other=0)
        b_vb = tl.load(p_v + o_n[:, None] * stride_ks + o_h[None, :], mask=m_n[:, None], other=0)
        b_kn = tl.load(p_kn + o_n, mask=m_n, other=0.0).to(tl.float32)
        b_vn = tl.load(p_vn + o_n, mask=m_n, other=0.0).to(tl.float32)
        # Codebook values of the high (even coordinates) and low (odd) nibbles: [BN, D/2] each.
        # The 16-entry bf16 table is one 32-byte sector, so each gather is one L1 wavefront.
        b_ke = tl.load(lut_ptr + (b_kb >> 4))
        b_ko = tl.load(lut_ptr + (b_kb & 15))
        if UPCAST:
            b_ke, b_ko = b_ke.to(tl.float32), b_ko.to(tl.float32)
        b_s = tl.dot(b_qe, tl.trans(b_ke)) + tl.dot(b_qo, tl.trans(b_ko))  # [BM, BN]
        b_s = b_s * b_kn[None, :]
        keep = (o_n[None, :] <= pos_r[:, None]) & m_n[None, :]
        b_s = tl.where(keep, b_s, float("-inf"))
        # Online softmax in base 2 (log2 e is folded into q). A row with nothing kept yet has
        # m = -inf; subtracting 0 instead keeps exp2 at 0 rather than NaN.
        m_new = tl.maximum(b_m, tl.max(b_s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(b_m - m_use)
        b_p = tl.exp2(b_s - m_use[:, None])
        b_l = b_l * alpha + tl.sum(b_p, 1)
        b_pv = b_p * b_vn[None, :]
        b_ve = tl.load(lut_ptr + (b_vb >> 4))
        b_vo = tl.load(lut_ptr + (b_vb & 15))
        if UPCAST:
            b_ve, b_vo = b_ve.to(tl.float32), b_vo.to(tl.float32)
        else:
            b_pv = b_pv.to(tl.bfloat16)
        b_ae = b_ae * alpha[:, None] + tl.dot(b_pv, b_ve)
        b_ao = b_ao * alpha[:, None] + tl.dot(b_pv, b_vo)
        b_m = m_new

    # Rows that kept nothing (kv_len = 0, or a row before the first position) output zeros.
    inv_l = tl.where(b_l > 0, 1.0 / tl.maximum(b_l, 1e-30), 0.0)
    b_ae, b_ao = b_ae * inv_l[:, None], b_ao * inv_l[:, None]
    if NSPLIT == 1:
        for c0 in tl.static_range(0, D, BLOCK_C):
            _unrotate_store(b_ae, b_ao, rot_ptr, out_ptr, i_b, i_kvh, o_r, m_r, c0,
                            stride_ob, stride_oh, stride_ol, G, D, BLOCK_C)
    else:
        lse = tl.where(b_l > 0, b_m + tl.log2(tl.maximum(b_l, 1e-30)), float("-inf"))
        row = (i_bh * NSPLIT + i_s) * M_total + o_r
        tl.store(plse_ptr + row, lse, mask=m_r)
        tl.store(po_ptr + row[:, None] * D + o_h[None, :], b_ae, mask=m_r[:, None])
        tl.store(po_ptr + row[:, None] * D + HALF + o_h[None, :], b_ao, mask=m_r[:, None])


@triton.jit
def _tq4_combine_kernel(
    po_ptr, plse_ptr, orot_ptr, M_total,
    D: tl.constexpr, BLOCK_M: tl.constexpr, NSPLIT: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Merge the NSPLIT partial outputs of each row by log-sum-exp weights (one pass, rescaling as
    the running max grows), one column chunk per program so the partials are read once, spread
    over many SMs. o_rot keeps the partials' [even | odd] column order."""
    i_m, i_bh, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_r = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_r = o_r < M_total
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_w = tl.zeros([BLOCK_M], tl.float32)
    b_o = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    for i_s in range(NSPLIT):
        row = (i_bh * NSPLIT + i_s) * M_total + o_r
        lse = tl.load(plse_ptr + row, mask=m_r, other=float("-inf"))
        m_new = tl.maximum(b_m, lse)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(b_m - m_use)
        w = tl.exp2(lse - m_use)
        b_w = b_w * alpha + w
        b_o = b_o * alpha[:, None] + w[:, None] * tl.load(po_ptr + row[:, None] * D + o_c[None, :],
                                                          mask=m_r[:, None], other=0.0)
        b_m = m_new
    inv_w = tl.where(b_w > 0, 1.0 / tl.maximum(b_w, 1e-30), 0.0)
    tl.store(orot_ptr + (i_bh * M_total + o_r)[:, None] * D + o_c[None, :], b_o * inv_w[:, None],
             mask=m_r[:, None])


@triton.jit
def _unrotate_kernel(
    orot_ptr, rot_ptr, out_ptr, stride_ob, stride_oh, stride_ol, M_total, H_kv,
    G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out = o_rot @ R for merged decode rows, one output column chunk per program."""
    HALF: tl.constexpr = D // 2
    i_m, i_bh, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_kvh = i_bh // H_kv, i_bh % H_kv
    o_r = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_r = o_r < M_total
    o_h = tl.arange(0, HALF)
    p_o = orot_ptr + (i_bh * M_total + o_r)[:, None] * D + o_h[None, :]
    b_oe = tl.load(p_o, mask=m_r[:, None], other=0.0)
    b_oo = tl.load(p_o + HALF, mask=m_r[:, None], other=0.0)
    _unrotate_store(b_oe, b_oo, rot_ptr, out_ptr, i_b, i_kvh, o_r, m_r, i_c * BLOCK_C,
                    stride_ob, stride_oh, stride_ol, G, D, BLOCK_C)


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
    devices = {t.device for t in (q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len)}
    if len(devices) > 1:
        raise ValueError(f"tq4_sdpa: all inputs must be on one device, got {sorted(map(str, devices))}")


# Tuning override for benchmarks: a dict with any of block_m, block_n, nsplit, warps, stages.
CONFIG_OVERRIDE: dict | None = None


def _config(M_total, S, B, H_kv, D, device):
    """Launch config without guarding on a dynamic L_q: decode (a few packed rows) splits the
    sequence over about `2 x SMs` programs; prefill packs the GQA group into tall query tiles."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    if statically_known_true(M_total <= 16):
        block_n = 64
        target = 2 * _num_sms(device)
        nsplit = max(1, min(triton.cdiv(S, block_n), triton.cdiv(target, B * H_kv)))
        cfg = dict(block_m=16, block_n=block_n, nsplit=nsplit, warps=4, stages=2)
    else:  # measured best on H100 (scripts/bench_attention.py --sweep)
        cfg = dict(block_m=128, block_n=32 if D == 256 else 64, nsplit=1, warps=8, stages=2)
    cfg.update(CONFIG_OVERRIDE or {})
    return cfg


def tq4_sdpa_triton(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len, scale=None):
    """Triton path of tq4_sdpa; a plain function (same arguments as the op) so tests can call it
    directly on CPU tensors under TRITON_INTERPRET=1."""
    validate(q, k_packed, k_norms, v_packed, v_norms, centroids, rotation, kv_len)
    B, H_q, Lq, D = q.shape
    H_kv = k_packed.shape[1]
    G = H_q // H_kv
    M_total = Lq * G
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    upcast = os.environ.get("TRITON_INTERPRET") == "1"
    cfg = _config(M_total, k_packed.shape[2], B, H_kv, D, q.device)
    nsplit, block_c, small_m = cfg["nsplit"], 32, 16
    dev = q.device

    rot = rotation.contiguous()
    k_norms, v_norms = k_norms.contiguous(), v_norms.contiguous()
    k_packed, v_packed = k_packed.contiguous(), v_packed.contiguous()
    q_rot = torch.empty((B, H_kv, M_total, D), dtype=torch.bfloat16, device=dev)
    lut = torch.empty((16,), dtype=torch.bfloat16, device=dev)
    out = torch.empty((B, H_q, Lq, D), dtype=torch.bfloat16, device=dev)
    out_strides = (out.stride(0), out.stride(1), out.stride(2))

    wrap_triton(_rotate_q_kernel)[(triton.cdiv(M_total, 32), B * H_kv, D // block_c)](
        q, rot, q_rot, centroids, lut, q.stride(0), q.stride(1), q.stride(2),
        M_total, H_kv, scale * LOG2E, G=G, D=D, BLOCK_M=32, BLOCK_C=block_c, num_warps=4,
    )
    if nsplit > 1:
        po = torch.empty((B * H_kv * nsplit * M_total, D), dtype=torch.float32, device=dev)
        plse = torch.empty((B * H_kv * nsplit * M_total,), dtype=torch.float32, device=dev)
    else:
        po = plse = out  # unused: the kernel's epilogue rotates back and stores the output
    wrap_triton(_tq4_attn_kernel)[(triton.cdiv(M_total, cfg["block_m"]), nsplit, B * H_kv)](
        q_rot, k_packed, k_norms, v_packed, v_norms, lut, rot, kv_len, out, po, plse,
        k_packed.stride(0), k_packed.stride(1), k_packed.stride(2), k_norms.stride(0), k_norms.stride(1),
        *out_strides, Lq, M_total, H_kv,
        G=G, D=D, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], NSPLIT=nsplit, BLOCK_C=block_c,
        UPCAST=upcast, num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    if nsplit > 1:
        o_rot = torch.empty((B * H_kv * M_total, D), dtype=torch.float32, device=dev)
        grid = (triton.cdiv(M_total, small_m), B * H_kv, D // block_c)
        wrap_triton(_tq4_combine_kernel)[grid](
            po, plse, o_rot, M_total, D=D, BLOCK_M=small_m, NSPLIT=nsplit, BLOCK_C=block_c,
            num_warps=2,
        )
        wrap_triton(_unrotate_kernel)[grid](
            o_rot, rot, out, *out_strides, M_total, H_kv, G=G, D=D, BLOCK_M=small_m, BLOCK_C=block_c,
            num_warps=4,
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
