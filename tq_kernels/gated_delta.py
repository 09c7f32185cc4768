"""Gated delta rule (Gated DeltaNet, Yang et al., arXiv 2412.06464): chunked prefill, recurrent decode.

Spec: `tq_kernels.hybrid_ops.gated_delta_rule_ref` (q, k L2-normalized inside, q scaled, fp32 state):

    S_t = (I - b_t k_t k_t^T) exp(g_t) S_{t-1} + b_t k_t v_t^T,      o_t = S_t^T q_t       (S is [D_k, D_v])

Decode (T = 1) runs the recurrence as written (_gdn_recurrent_kernel): one program per (batch, v head,
D_v tile) holds its slice of S in fp32 registers; the whole state is read once and written once.

Prefill uses the chunked (WY / UT-transform) form of flash-linear-attention's chunk_gated_delta_rule,
written here from the algebra. Inside a chunk of BT = 64 steps, with G_t the cumulative log decay since
the chunk start and S_0 the state before the chunk, unrolling the recurrence gives

    S_t = e^{G_t} S_0 + sum_{j<=t} e^{G_t - G_j} k_j d_j^T,   d = u - w S_0   ("pseudo values" [BT, D_v])
    (I + A) u = diag(b) V,   (I + A) w = diag(b e^G) K,   A_tj = b_t e^{G_t - G_j} k_t.k_j  (j < t)

so one chunk costs a 64 x 64 triangular inverse and plain matmuls, and only S_0 -> S_BT is sequential:

  1. _gdn_prepare_kernel   (all chunks in parallel) G, 1/|k|, A and (I + A)^-1, then w and u.
  2. _gdn_state_kernel     (sequential over chunks, parallel over heads x D_v tiles) stores each chunk's
                           S_0, d = u - w S_0, and S <- e^{G_last} S_0 + (e^{G_last - G} k)^T d.
  3. _gdn_output_kernel    (all chunks in parallel) o = e^{G} q S_0 + (tril(q k^T) * e^{G_t - G_j}) d.

(I + A)^-1 is taken in 16 x 16 blocks: each diagonal block by forward substitution (exact, fp32), then
the off-diagonal blocks by block forward substitution T_ij = -T_ii sum_m A_im T_mj. A Neumann series
in powers of A would be shorter to write but loses everything to cancellation when keys are
correlated (entries of A^n grow like binomial coefficients). A last, partial chunk pads with
k = v = b = g = 0: padded rows get d = 0 and leave G_last, hence the state, untouched.

Precision: the carried state and every decay are fp32; matmul operands are bf16 (tensor cores) with
fp32 accumulation, as in FLA; w, u, d and the per-chunk S_0 are stored as bf16. Against the fp32
reference that is ~0.5% rms error on outputs and final state for random inputs, ~2% when keys are
nearly parallel with no decay (I + A ill-conditioned). The recurrent kernel is fp32 throughout.
Under TRITON_INTERPRET=1 (UPCAST = 1) operands are rounded to bf16 by hand and kept in fp32, because the
interpreter's bf16 dot is wrong and its fp32 -> bf16 cast truncates: a bf16 x bf16 product is exact in
fp32, so the CPU tests see the GPU's rounding. EXACT_FP32 (UPCAST = 2) skips the rounding, so a test can
check the algebra alone.

File order: helpers -> kernels -> launchers (plain functions, also run under TRITON_INTERPRET=1). The
reference and the op registration live in hybrid_ops.py.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.library import wrap_triton

CHUNK = 64  # BT: four 16-row sub-blocks (the triangular inverse below is written for exactly four)
# Test hook: interpreted runs keep every intermediate in fp32, so a test can check the algebra alone
# (to ~1e-6) apart from the bf16 rounding of the real path.
EXACT_FP32 = False

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _op(x, UPCAST: tl.constexpr):
    """x rounded to bf16 (a tensor-core operand, or a value about to be stored as bf16).

    UPCAST = 0 (compiled): a bf16 tensor. UPCAST = 1 (interpreted): the value stays fp32 (the
    interpreter's bf16 dot is wrong) but is rounded to nearest by Veltkamp splitting (hi = t - (t - x),
    t = x (2^16 + 1), keeps the top 8 significant bits), because the interpreter's own fp32 -> bf16 cast
    truncates where the GPU rounds to nearest even. UPCAST = 2 (interpreted, EXACT_FP32): not rounded.
    """
    if UPCAST == 2:
        return x
    elif UPCAST == 1:
        t = x * 65537.0
        return t - (t - x)
    else:
        return x.to(tl.bfloat16)


@triton.jit
def _store(p, x, mask, UPCAST: tl.constexpr):
    """Store x in p's dtype, rounding to nearest (see _op) when that dtype is bf16."""
    if p.dtype.element_ty == tl.bfloat16:
        if UPCAST:
            x = _op(x, 1)
        else:
            x = x.to(tl.bfloat16)
    tl.store(p, x.to(p.dtype.element_ty), mask=mask)


@triton.jit
def _load_rows(p, o_t, T, stride_t, o_d):
    """Rows o_t (masked at T) of a [T, D] slice, fp32."""
    return tl.load(p + o_t[:, None] * stride_t + o_d[None, :], mask=(o_t < T)[:, None], other=0.0).to(tl.float32)


@triton.jit
def _load_vec(p, o_t, T, stride_t):
    """Entries o_t (0 past T) of a per-step scalar such as g or beta, fp32. [16]"""
    return tl.load(p + o_t * stride_t, mask=o_t < T, other=0.0).to(tl.float32)


@triton.jit
def _key_block(p_k, p_rk, o_t, T, stride_kt, o_k, b_beta, b_g, UPCAST: tl.constexpr):
    """Load 16 key rows, store 1/|k|, return the normalized rows as bf16 operands, plain and scaled by
    b e^G (the fp32 rows die here: this kernel is register-bound)."""
    b_k = _load_rows(p_k, o_t, T, stride_kt, o_k)  # [16, D_K]
    b_r = tl.rsqrt(tl.sum(b_k * b_k, 1) + 1e-6)  # the eps of hybrid_ops.l2norm
    tl.store(p_rk + o_t, b_r, mask=o_t < T)
    b_k = b_k * b_r[:, None]
    return _op(b_k, UPCAST), _op(b_k * (b_beta * tl.exp(b_g))[:, None], UPCAST)


@triton.jit
def _load_op(p, mask, UPCAST: tl.constexpr):
    """A matmul operand stored as bf16 (fp32 when UPCAST = 2): used as is, upcast when interpreted."""
    x = tl.load(p, mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _kkt(b_ki, b_kj, b_bi, b_gi, b_gj, DIAG: tl.constexpr):
    """Block (i, j) of A from bf16 key blocks: b_t e^{G_t - G_j} k_t.k_j, below the diagonal. [16, 16] fp32."""
    b_a = tl.dot(b_ki, tl.trans(b_kj))
    d = b_gi[:, None] - b_gj[None, :]
    if DIAG:
        o = tl.arange(0, 16)
        # Mask the exponent, not the product: above the diagonal G_t - G_j > 0 and exp can overflow.
        d = tl.where(o[:, None] > o[None, :], d, float("-inf"))
    return b_a * tl.exp(d) * b_bi[:, None]


@triton.jit
def _inv_unit_lower(b_a):
    """(I + a)^-1 for a strictly lower [16, 16] a, by forward substitution in fp32.

    Row i of T = e_i - sum_{j<i} a_ij T_j. Register tiles cannot be indexed, so row i is read and
    written through a mask; row i of T is still e_i when it is reached, hence the plain subtraction.
    """
    o = tl.arange(0, 16)
    b_t = tl.where(o[:, None] == o[None, :], 1.0, 0.0)
    for i in tl.static_range(1, 16):
        m_i = o[:, None] == i
        b_ai = tl.sum(tl.where(m_i, b_a, 0.0), 0)  # [16] row i of a
        b_t = b_t - tl.where(m_i, tl.sum(b_ai[:, None] * b_t, 0)[None, :], 0.0)
    return b_t


@triton.jit
def _mm(a, b):
    """Exact fp32 product of two small blocks (the merge steps of the triangular inverse)."""
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _wy(t0, t1, t2, t3, b_x0, b_x1, b_x2, b_x3, N: tl.constexpr):
    """Row block N-1 of T @ X from bf16 blocks: sum_{j<N} T_j X_j (T is block lower triangular)."""
    b_o = tl.dot(t0, b_x0)
    if N > 1:
        b_o = tl.dot(t1, b_x1, b_o)
    if N > 2:
        b_o = tl.dot(t2, b_x2, b_o)
    if N > 3:
        b_o = tl.dot(t3, b_x3, b_o)
    return b_o


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _gdn_recurrent_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, s_ptr, out_ptr, ns_ptr,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh, stride_gb, stride_gt, stride_ob, stride_ot, stride_oh,
    T, H_V, R, scale,
    D_K: tl.constexpr, D_V: tl.constexpr, BV: tl.constexpr, UPCAST: tl.constexpr,
):
    """The recurrence step by step (decode): S stays in registers across the T steps. [D_K, BV] fp32."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H_V, i_bh % H_V
    i_hk = i_h // R
    o_k = tl.arange(0, D_K)
    o_v = i_v * BV + tl.arange(0, BV)
    p_s = (i_bh * D_K + o_k)[:, None].to(tl.int64) * D_V + o_v[None, :]
    b_s = tl.load(s_ptr + p_s).to(tl.float32)  # [D_K, BV]
    p_q = q_ptr + i_b * stride_qb + i_hk * stride_qh + o_k
    p_k = k_ptr + i_b * stride_kb + i_hk * stride_kh + o_k
    p_v = v_ptr + i_b * stride_vb + i_h * stride_vh + o_v
    p_o = out_ptr + i_b * stride_ob + i_h * stride_oh + o_v
    p_g = g_ptr + i_b * stride_gb + i_h
    p_beta = beta_ptr + i_b * stride_gb + i_h
    for t in range(T):
        b_q = tl.load(p_q + t * stride_qt).to(tl.float32)
        b_k = tl.load(p_k + t * stride_kt).to(tl.float32)
        b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q, 0) + 1e-6) * scale  # the eps of hybrid_ops.l2norm
        b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k, 0) + 1e-6)
        b_v = tl.load(p_v + t * stride_vt).to(tl.float32)  # [BV]
        b_g = tl.load(p_g + t * stride_gt).to(tl.float32)
        b_beta = tl.load(p_beta + t * stride_gt).to(tl.float32)
        b_s = b_s * tl.exp(b_g)
        b_d = (b_v - tl.sum(b_k[:, None] * b_s, 0)) * b_beta  # [BV] what k_t should recall, minus what it does
        b_s = b_s + b_k[:, None] * b_d[None, :]
        b_o = tl.sum(b_q[:, None] * b_s, 0)
        _store(p_o + t * stride_ot, b_o, None, UPCAST)
    _store(ns_ptr + p_s, b_s, None, UPCAST)


@triton.jit
def _gdn_prepare_kernel(
    k_ptr, v_ptr, g_ptr, beta_ptr, gc_ptr, rk_ptr, w_ptr, u_ptr,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_gb, stride_gt,
    T, H_V, R,
    D_K: tl.constexpr, D_V: tl.constexpr, BV: tl.constexpr, UPCAST: tl.constexpr,
):
    """Per chunk: G (cumulative log decay), 1/|k|, T = (I + A)^-1, w = T diag(b e^G) K, u = T diag(b) V.

    The 64-row chunk is handled as four 16-row blocks (suffix 0..3) held in separate registers.
    """
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H_V, i_bh % H_V
    i_hk = i_h // R
    t0 = i_c * 64
    o_i = tl.arange(0, 16)
    o_k = tl.arange(0, D_K)
    o_t0, o_t1, o_t2, o_t3 = t0 + o_i, t0 + 16 + o_i, t0 + 32 + o_i, t0 + 48 + o_i

    # Decay: G = cumsum(g) from the chunk start, in fp32; padded rows add 0.
    p_g = g_ptr + i_b * stride_gb + i_h
    p_beta = beta_ptr + i_b * stride_gb + i_h
    b_g0 = tl.cumsum(_load_vec(p_g, o_t0, T, stride_gt), 0)
    b_g1 = tl.cumsum(_load_vec(p_g, o_t1, T, stride_gt), 0) + tl.sum(tl.where(o_i == 15, b_g0, 0.0), 0)
    b_g2 = tl.cumsum(_load_vec(p_g, o_t2, T, stride_gt), 0) + tl.sum(tl.where(o_i == 15, b_g1, 0.0), 0)
    b_g3 = tl.cumsum(_load_vec(p_g, o_t3, T, stride_gt), 0) + tl.sum(tl.where(o_i == 15, b_g2, 0.0), 0)
    b_b0, b_b1 = _load_vec(p_beta, o_t0, T, stride_gt), _load_vec(p_beta, o_t1, T, stride_gt)
    b_b2, b_b3 = _load_vec(p_beta, o_t2, T, stride_gt), _load_vec(p_beta, o_t3, T, stride_gt)
    p_gc = gc_ptr + i_bh.to(tl.int64) * T
    tl.store(p_gc + o_t0, b_g0, mask=o_t0 < T)
    tl.store(p_gc + o_t1, b_g1, mask=o_t1 < T)
    tl.store(p_gc + o_t2, b_g2, mask=o_t2 < T)
    tl.store(p_gc + o_t3, b_g3, mask=o_t3 < T)

    # Keys: bf16 operands for A (c) and for w (kw = k b e^G), both normalized. [16, D_K] each
    p_k = k_ptr + i_b * stride_kb + i_hk * stride_kh
    p_rk = rk_ptr + i_bh.to(tl.int64) * T
    b_c0, b_kw0 = _key_block(p_k, p_rk, o_t0, T, stride_kt, o_k, b_b0, b_g0, UPCAST)
    b_c1, b_kw1 = _key_block(p_k, p_rk, o_t1, T, stride_kt, o_k, b_b1, b_g1, UPCAST)
    b_c2, b_kw2 = _key_block(p_k, p_rk, o_t2, T, stride_kt, o_k, b_b2, b_g2, UPCAST)
    b_c3, b_kw3 = _key_block(p_k, p_rk, o_t3, T, stride_kt, o_k, b_b3, b_g3, UPCAST)

    # A in 16 x 16 blocks (i, j), i >= j.
    a00 = _kkt(b_c0, b_c0, b_b0, b_g0, b_g0, True)
    a11 = _kkt(b_c1, b_c1, b_b1, b_g1, b_g1, True)
    a22 = _kkt(b_c2, b_c2, b_b2, b_g2, b_g2, True)
    a33 = _kkt(b_c3, b_c3, b_b3, b_g3, b_g3, True)
    a10 = _kkt(b_c1, b_c0, b_b1, b_g1, b_g0, False)
    a20 = _kkt(b_c2, b_c0, b_b2, b_g2, b_g0, False)
    a21 = _kkt(b_c2, b_c1, b_b2, b_g2, b_g1, False)
    a30 = _kkt(b_c3, b_c0, b_b3, b_g3, b_g0, False)
    a31 = _kkt(b_c3, b_c1, b_b3, b_g3, b_g1, False)
    a32 = _kkt(b_c3, b_c2, b_b3, b_g3, b_g2, False)

    # T = (I + A)^-1: diagonal blocks by substitution, then block forward substitution.
    t00 = _inv_unit_lower(a00)
    t11 = _inv_unit_lower(a11)
    t22 = _inv_unit_lower(a22)
    t33 = _inv_unit_lower(a33)
    t10 = -_mm(t11, _mm(a10, t00))
    t21 = -_mm(t22, _mm(a21, t11))
    t32 = -_mm(t33, _mm(a32, t22))
    t20 = -_mm(t22, _mm(a20, t00) + _mm(a21, t10))
    t31 = -_mm(t33, _mm(a31, t11) + _mm(a32, t21))
    t30 = -_mm(t33, _mm(a30, t00) + _mm(a31, t10) + _mm(a32, t20))
    # bf16 operands from here on, rounded once.
    t00, t11, t22, t33 = _op(t00, UPCAST), _op(t11, UPCAST), _op(t22, UPCAST), _op(t33, UPCAST)
    t10, t21, t32 = _op(t10, UPCAST), _op(t21, UPCAST), _op(t32, UPCAST)
    t20, t31, t30 = _op(t20, UPCAST), _op(t31, UPCAST), _op(t30, UPCAST)

    # w = T diag(b e^G) K. [16, D_K] per block
    p_w = w_ptr + i_bh.to(tl.int64) * T * D_K + o_k[None, :]
    b_w = _wy(t00, t00, t00, t00, b_kw0, b_kw1, b_kw2, b_kw3, 1)
    _store(p_w + o_t0[:, None] * D_K, b_w, (o_t0 < T)[:, None], UPCAST)
    b_w = _wy(t10, t11, t11, t11, b_kw0, b_kw1, b_kw2, b_kw3, 2)
    _store(p_w + o_t1[:, None] * D_K, b_w, (o_t1 < T)[:, None], UPCAST)
    b_w = _wy(t20, t21, t22, t22, b_kw0, b_kw1, b_kw2, b_kw3, 3)
    _store(p_w + o_t2[:, None] * D_K, b_w, (o_t2 < T)[:, None], UPCAST)
    b_w = _wy(t30, t31, t32, t33, b_kw0, b_kw1, b_kw2, b_kw3, 4)
    _store(p_w + o_t3[:, None] * D_K, b_w, (o_t3 < T)[:, None], UPCAST)

    # u = T diag(b) V, D_V in tiles of BV to bound registers. [16, BV] per block
    p_v = v_ptr + i_b * stride_vb + i_h * stride_vh
    p_u = u_ptr + i_bh.to(tl.int64) * T * D_V
    for v0 in tl.static_range(0, D_V, BV):
        o_v = v0 + tl.arange(0, BV)
        b_v0 = _op(_load_rows(p_v, o_t0, T, stride_vt, o_v) * b_b0[:, None], UPCAST)
        b_v1 = _op(_load_rows(p_v, o_t1, T, stride_vt, o_v) * b_b1[:, None], UPCAST)
        b_v2 = _op(_load_rows(p_v, o_t2, T, stride_vt, o_v) * b_b2[:, None], UPCAST)
        b_v3 = _op(_load_rows(p_v, o_t3, T, stride_vt, o_v) * b_b3[:, None], UPCAST)
        _store(p_u + o_t0[:, None] * D_V + o_v[None, :], _wy(t00, t00, t00, t00, b_v0, b_v1, b_v2, b_v3, 1),
               (o_t0 < T)[:, None], UPCAST)
        _store(p_u + o_t1[:, None] * D_V + o_v[None, :], _wy(t10, t11, t11, t11, b_v0, b_v1, b_v2, b_v3, 2),
               (o_t1 < T)[:, None], UPCAST)
        _store(p_u + o_t2[:, None] * D_V + o_v[None, :], _wy(t20, t21, t22, t22, b_v0, b_v1, b_v2, b_v3, 3),
               (o_t2 < T)[:, None], UPCAST)
        _store(p_u + o_t3[:, None] * D_V + o_v[None, :], _wy(t30, t31, t32, t33, b_v0, b_v1, b_v2, b_v3, 4),
               (o_t3 < T)[:, None], UPCAST)


@triton.jit
def _gdn_state_kernel(
    k_ptr, gc_ptr, rk_ptr, w_ptr, u_ptr, s_ptr, h_ptr, d_ptr, ns_ptr,
    stride_kb, stride_kt, stride_kh,
    T, NT, H_V, R,
    D_K: tl.constexpr, D_V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, UPCAST: tl.constexpr,
):
    """The only sequential part: carry S [D_K, BV] (fp32, registers) across the chunks."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H_V, i_bh % H_V
    i_hk = i_h // R
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, D_K)
    o_v = i_v * BV + tl.arange(0, BV)
    p_sv = (i_bh * D_K + o_k)[:, None].to(tl.int64) * D_V + o_v[None, :]
    b_s = tl.load(s_ptr + p_sv).to(tl.float32)
    p_k = k_ptr + i_b * stride_kb + i_hk * stride_kh
    p_w = w_ptr + i_bh.to(tl.int64) * T * D_K
    p_u = u_ptr + i_bh.to(tl.int64) * T * D_V
    p_d = d_ptr + i_bh.to(tl.int64) * T * D_V
    p_gc = gc_ptr + i_bh.to(tl.int64) * T
    p_rk = rk_ptr + i_bh.to(tl.int64) * T
    p_h = h_ptr + (i_bh.to(tl.int64) * NT * D_K + o_k[:, None]) * D_V + o_v[None, :]
    for i_c in range(NT):
        o_t = i_c * BT + o_i
        m_t = o_t < T
        _store(p_h + i_c * D_K * D_V, b_s, None, UPCAST)  # S_0 of this chunk, for the output pass
        b_w = _load_op(p_w + o_t[:, None] * D_K + o_k[None, :], m_t[:, None], UPCAST)  # [BT, D_K]
        b_u = _load_rows(p_u, o_t, T, D_V, o_v)  # [BT, BV]
        b_d = b_u - tl.dot(b_w, _op(b_s, UPCAST))  # pseudo values
        b_d = _op(b_d, UPCAST)  # rounded once: the output pass reads the same values
        _store(p_d + o_t[:, None] * D_V + o_v[None, :], b_d, m_t[:, None], UPCAST)
        b_gc = tl.load(p_gc + o_t, mask=m_t, other=0.0)
        g_last = tl.load(p_gc + tl.minimum(i_c * BT + BT, T) - 1)
        b_rk = tl.load(p_rk + o_t, mask=m_t, other=0.0)
        # Keys decayed to the chunk end; padded rows have rk = 0.
        b_k = _load_rows(p_k, o_t, T, stride_kt, o_k) * (b_rk * tl.exp(g_last - b_gc))[:, None]  # [BT, D_K]
        b_s = b_s * tl.exp(g_last) + tl.dot(tl.trans(_op(b_k, UPCAST)), b_d)
    _store(ns_ptr + p_sv, b_s, None, UPCAST)


@triton.jit
def _gdn_output_kernel(
    q_ptr, k_ptr, gc_ptr, rk_ptr, h_ptr, d_ptr, out_ptr,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_ob, stride_ot, stride_oh,
    T, NT, H_V, R, scale,
    D_K: tl.constexpr, D_V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, UPCAST: tl.constexpr,
):
    """o = e^G q S_0 + (tril(q k^T) e^{G_t - G_j}) d for one chunk and one D_V tile. [BT, BV]"""
    i_c, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H_V, i_bh % H_V
    i_hk = i_h // R
    o_i = tl.arange(0, BT)
    o_t = i_c * BT + o_i
    m_t = o_t < T
    o_k = tl.arange(0, D_K)
    o_v = i_v * BV + tl.arange(0, BV)
    b_q = _load_rows(q_ptr + i_b * stride_qb + i_hk * stride_qh, o_t, T, stride_qt, o_k)  # [BT, D_K]
    b_q = b_q * (tl.rsqrt(tl.sum(b_q * b_q, 1) + 1e-6) * scale)[:, None]
    b_rk = tl.load(rk_ptr + i_bh.to(tl.int64) * T + o_t, mask=m_t, other=0.0)
    b_k = _load_rows(k_ptr + i_b * stride_kb + i_hk * stride_kh, o_t, T, stride_kt, o_k) * b_rk[:, None]
    b_gc = tl.load(gc_ptr + i_bh.to(tl.int64) * T + o_t, mask=m_t, other=0.0)
    b_qe = _op(b_q, UPCAST)
    p_h = h_ptr + ((i_bh.to(tl.int64) * NT + i_c) * D_K + o_k[:, None]) * D_V + o_v[None, :]
    b_h = _load_op(p_h, (o_k < D_K)[:, None], UPCAST)  # [D_K, BV]
    b_o = tl.dot(b_qe, b_h) * tl.exp(b_gc)[:, None]  # inter-chunk: what S_0 returns, decayed to t
    # Intra-chunk: causal (inclusive) scores with relative decay; mask the exponent (it is > 0 above).
    b_p = tl.dot(b_qe, tl.trans(_op(b_k, UPCAST)))  # [BT, BT]
    d = tl.where(o_i[:, None] >= o_i[None, :], b_gc[:, None] - b_gc[None, :], float("-inf"))
    b_p = b_p * tl.exp(d)
    p_d = d_ptr + i_bh.to(tl.int64) * T * D_V
    b_d = _load_op(p_d + o_t[:, None] * D_V + o_v[None, :], m_t[:, None], UPCAST)  # [BT, BV]
    b_o = tl.dot(_op(b_p, UPCAST), b_d, b_o)
    p_o = out_ptr + i_b * stride_ob + i_h * stride_oh + o_t[:, None] * stride_ot + o_v[None, :]
    _store(p_o, b_o, m_t[:, None], UPCAST)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def validate(q, k, v, g, beta, state) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4:
        raise ValueError(f"gated_delta_rule: want q, k [B, T, H_k, D_k] and v [B, T, H_v, D_v]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H_k, D_k = q.shape
    H_v, D_v = v.shape[2], v.shape[3]
    if v.shape[:2] != q.shape[:2] or H_v % H_k:
        raise ValueError(f"gated_delta_rule: v {tuple(v.shape)} does not fit q {tuple(q.shape)} "
                         f"(H_v must be a multiple of H_k)")
    for d, name in ((D_k, "D_k"), (D_v, "D_v")):
        if d < 16 or d & (d - 1):
            raise ValueError(f"gated_delta_rule: {name}={d} must be a power of two >= 16")
    if tuple(g.shape) != (B, T, H_v) or tuple(beta.shape) != (B, T, H_v):
        raise ValueError(f"gated_delta_rule: g {tuple(g.shape)} and beta {tuple(beta.shape)} must be [B, T, H_v]")
    if tuple(state.shape) != (B, H_v, D_k, D_v):
        raise ValueError(f"gated_delta_rule: state must be [B={B}, H_v={H_v}, D_k={D_k}, D_v={D_v}], "
                         f"got {tuple(state.shape)}")
    if len({t.device for t in (q, k, v, g, beta, state)}) > 1:
        raise ValueError("gated_delta_rule: all inputs must be on one device")


def _upcast_mode() -> int:
    """UPCAST for the kernels: 0 compiled, 1 interpreted (bf16 rounding emulated), 2 interpreted fp32."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return 0
    return 2 if EXACT_FP32 else 1


def _prep(q, k, v, g, beta, state, scale):
    validate(q, k, v, g, beta, state)
    # Unit stride along the head dim is assumed; q, k, v as split views of one projection keep it.
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    g, beta, state = g.contiguous(), beta.contiguous(), state.contiguous()
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return q, k, v, g, beta, state, scale


def gated_delta_rule_recurrent(q, k, v, g, beta, state, scale=None):
    """The step-by-step kernel for any T (the decode path; also a cross-check of the chunked one)."""
    q, k, v, g, beta, state, scale = _prep(q, k, v, g, beta, state, scale)
    B, T, H_k, D_k = q.shape
    H_v, D_v = v.shape[2], v.shape[3]
    out = torch.empty((B, T, H_v, D_v), dtype=q.dtype, device=q.device)
    new_state = torch.empty_like(state)
    block_v = min(D_v, 32)  # B * H_v * D_v / 32 programs: 128 for Qwen 3.5 decode, about one per SM
    wrap_triton(_gdn_recurrent_kernel)[(D_v // block_v, B * H_v)](
        q, k, v, g, beta, state, out, new_state,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), g.stride(0), g.stride(1), out.stride(0), out.stride(1), out.stride(2),
        T, H_v, H_v // H_k, scale,
        D_K=D_k, D_V=D_v, BV=block_v, UPCAST=_upcast_mode(), num_warps=4,
    )
    return out, new_state


def gated_delta_rule_chunked(q, k, v, g, beta, state, scale=None):
    """The chunked (WY) path for any T >= 1 (the prefill path)."""
    q, k, v, g, beta, state, scale = _prep(q, k, v, g, beta, state, scale)
    B, T, H_k, D_k = q.shape
    H_v, D_v = v.shape[2], v.shape[3]
    R = H_v // H_k
    BH = B * H_v
    NT = triton.cdiv(T, CHUNK)
    upcast = _upcast_mode()
    inter_dtype = torch.float32 if upcast == 2 else torch.bfloat16  # w, u, d, per-chunk S_0
    dev = q.device
    gc = torch.empty((BH, T), dtype=torch.float32, device=dev)
    rk = torch.empty((BH, T), dtype=torch.float32, device=dev)
    w = torch.empty((BH, T, D_k), dtype=inter_dtype, device=dev)
    u = torch.empty((BH, T, D_v), dtype=inter_dtype, device=dev)
    d = torch.empty((BH, T, D_v), dtype=inter_dtype, device=dev)
    # [BH, NT, D_k, D_v], allocated flat: a 4-d empty with a symbolic NT makes export guard on NT != 1.
    h = torch.empty((BH * NT * D_k * D_v,), dtype=inter_dtype, device=dev)
    out = torch.empty((B, T, H_v, D_v), dtype=q.dtype, device=dev)
    new_state = torch.empty_like(state)

    wrap_triton(_gdn_prepare_kernel)[(NT, BH)](
        k, v, g, beta, gc, rk, w, u,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), g.stride(0), g.stride(1),
        T, H_v, R,
        D_K=D_k, D_V=D_v, BV=min(D_v, 64), UPCAST=upcast, num_warps=8,  # 4 warps spill on sm_90
    )
    bv_state = min(D_v, 32)  # more programs on the sequential pass: B * H_v * D_v / 32
    wrap_triton(_gdn_state_kernel)[(D_v // bv_state, BH)](
        k, gc, rk, w, u, state, h, d, new_state,
        k.stride(0), k.stride(1), k.stride(2),
        T, NT, H_v, R,
        D_K=D_k, D_V=D_v, BT=CHUNK, BV=bv_state, UPCAST=upcast, num_warps=4, num_stages=2,
    )
    bv_out = min(D_v, 64)
    wrap_triton(_gdn_output_kernel)[(NT, D_v // bv_out, BH)](
        q, k, gc, rk, h, d, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        T, NT, H_v, R, scale,
        D_K=D_k, D_V=D_v, BT=CHUNK, BV=bv_out, UPCAST=upcast, num_warps=4, num_stages=2,
    )
    return out, new_state


def gated_delta_rule_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                            state: torch.Tensor, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path of tq::gated_delta_rule: same arguments and results as gated_delta_rule_ref.

    T = 1 (decode) takes the recurrent kernel, anything else the chunked one. The test is on a static
    fact (a decode export has T = 1, a prefill export a symbolic T): never a guard.
    """
    if statically_known_true(q.shape[1] == 1):
        return gated_delta_rule_recurrent(q, k, v, g, beta, state, scale)
    return gated_delta_rule_chunked(q, k, v, g, beta, state, scale)
