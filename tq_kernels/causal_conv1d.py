"""Depthwise causal conv1d over time with a carried left context (the short conv of Gated DeltaNet).

Spec: `tq_kernels.hybrid_ops.causal_conv1d_ref`. With xs = concat(state, x) over time,

    out[b, t, c] = act(sum_j weight[c, j] * xs[b, t + j, c]),   new_state = last K-1 rows of xs

One kernel serves prefill (any T) and the one-token update (T = 1): each program owns a [BT, BC] tile
of (time, channel) and reads its K-1 rows of left context from `state` or from x itself, so tiles are
independent and there is no second pass. The program on the first time tile also writes the new state
(the last K-1 rows of xs, which for T < K-1 still include old state rows). Channels are the contiguous
axis, so every load is a coalesced row segment; accumulation is fp32.

File order: helpers -> kernel -> launcher (plain function, also runs under TRITON_INTERPRET=1). The reference
and the op registration live in hybrid_ops.py.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.library import wrap_triton

from ._common import store_rounded

# --------------------------------------------------------------------------------------------
# Helpers and kernel
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_xs(x_ptr, s_ptr, o_pos, o_c, m_c, T,
             stride_xt, stride_st, KM1: tl.constexpr):
    """Rows of xs = concat(state, x) at x-positions o_pos (negative = state row KM1 + pos). [BT, BC] fp32."""
    in_x = (o_pos >= 0) & (o_pos < T)
    in_s = (o_pos < 0) & (o_pos >= -KM1)
    b_x = tl.load(x_ptr + o_pos[:, None] * stride_xt + o_c[None, :],
                  mask=in_x[:, None] & m_c[None, :], other=0.0).to(tl.float32)
    b_s = tl.load(s_ptr + (KM1 + o_pos)[:, None] * stride_st + o_c[None, :],
                  mask=in_s[:, None] & m_c[None, :], other=0.0).to(tl.float32)
    return b_x + b_s  # disjoint masks: exactly one of the two is non-zero per row


@triton.jit
def _causal_conv1d_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr, ns_ptr,
    stride_xb, stride_xt, stride_wc, stride_wk, stride_sb, stride_st,
    stride_ob, stride_ot, stride_nb, stride_nt,
    T, C,
    K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, KM1_P2: tl.constexpr, SILU: tl.constexpr,
    UPCAST: tl.constexpr,
):
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    KM1: tl.constexpr = K - 1
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    p_x = x_ptr + i_b * stride_xb
    p_s = s_ptr + i_b * stride_sb

    b_acc = tl.zeros([BT, BC], tl.float32)
    for j in tl.static_range(K):
        # out[t] reads xs[t + j] = x[t + j - (K-1)]: tap j looks K-1-j steps back.
        b_w = tl.load(w_ptr + o_c * stride_wc + j * stride_wk, mask=m_c, other=0.0).to(tl.float32)  # [BC]
        b_acc += _load_xs(p_x, p_s, o_t + j - KM1, o_c, m_c, T, stride_xt, stride_st, KM1) * b_w[None, :]
    if SILU:
        b_acc = b_acc * tl.sigmoid(b_acc)
    m_t = o_t < T
    p_o = out_ptr + i_b * stride_ob + o_t[:, None] * stride_ot + o_c[None, :]
    store_rounded(p_o, b_acc, m_t[:, None] & m_c[None, :], UPCAST)

    if i_t == 0:
        # new_state[r] = xs[T + r] = x[T - (K-1) + r]; for T < K-1 the first rows are old state.
        o_r = tl.arange(0, KM1_P2)
        m_r = o_r < KM1
        b_ns = _load_xs(p_x, p_s, T - KM1 + o_r, o_c, m_c, T, stride_xt, stride_st, KM1)  # [KM1_P2, BC]
        p_ns = ns_ptr + i_b * stride_nb + o_r[:, None] * stride_nt + o_c[None, :]
        store_rounded(p_ns, b_ns, m_r[:, None] & m_c[None, :], UPCAST)  # exact unless state is narrower than x


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------


def validate(x, weight, state) -> None:
    if x.dim() != 3 or weight.dim() != 2 or state.dim() != 3:
        raise ValueError(f"causal_conv1d: want x [B, T, C], weight [C, K], state [B, K-1, C]; got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(state.shape)}")
    B, _, C = x.shape
    K = weight.shape[1]
    if weight.shape[0] != C or K < 2 or tuple(state.shape) != (B, K - 1, C):
        raise ValueError(f"causal_conv1d: weight must be [C={C}, K>=2] and state [B={B}, K-1, C={C}], got "
                         f"{tuple(weight.shape)}, {tuple(state.shape)}")
    if len({x.device, weight.device, state.device}) > 1:
        raise ValueError("causal_conv1d: x, weight and state must be on one device")


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor,
                         apply_silu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path of tq::causal_conv1d: same arguments and results as causal_conv1d_ref."""
    validate(x, weight, state)
    # The kernel assumes unit stride over channels (other strides are passed through).
    x = x if x.stride(-1) == 1 else x.contiguous()
    state = state if state.stride(-1) == 1 else state.contiguous()
    B, T, C = x.shape
    K = weight.shape[1]
    out = torch.empty((B, T, C), dtype=x.dtype, device=x.device)
    new_state = torch.empty((B, K - 1, C), dtype=state.dtype, device=x.device)
    # Decode (T = 1) is a pure stream over channels: wide channel tiles, one time row. The test is on
    # a static fact (a decode export has T = 1, a prefill export a symbolic T): never a guard.
    decode = statically_known_true(T == 1)
    block_t, block_c = (1, 512) if decode else (32, 128)
    grid = (triton.cdiv(T, block_t), triton.cdiv(C, block_c), B)
    wrap_triton(_causal_conv1d_kernel)[grid](
        x, weight, state, out, new_state,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), state.stride(0), state.stride(1),
        out.stride(0), out.stride(1), new_state.stride(0), new_state.stride(1),
        T, C,
        K=K, BT=block_t, BC=block_c, KM1_P2=triton.next_power_of_2(K - 1), SILU=bool(apply_silu),
        UPCAST=os.environ.get("TRITON_INTERPRET") == "1", num_warps=4,
    )
    return out, new_state
