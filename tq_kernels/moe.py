"""Routed SwiGLU experts as grouped GEMMs (the sparse MoE block of Qwen 3.5 MoE).

Spec: `tq_kernels.hybrid_ops.moe_experts_ref`:
    out[n] = sum_j w[n, j] * down[e] @ (silu(gate[e] @ x[n]) * (up[e] @ x[n])),  e = topk_ids[n, j]

The M = N * top_k (token, expert) pairs ("slots") are grouped by expert on the device, without a host
sync and with every grid sized from shapes alone (AOTInductor / CUDA-graph safe):

  1. _moe_count_kernel    counts[e] by atomic add; the old value returned by the atomic is the slot's
                          rank inside its expert, so no sort is needed (ranks inside an expert are in
                          arbitrary order, which changes nothing: every row of a GEMM is independent).
  2. _moe_scatter_kernel  sorted[offset[e] + rank] = slot, offsets = exclusive cumsum of counts.
     (Decode, M <= 64: _moe_route_small_kernel does 1 and 2 in one program, ranks by comparison.)
  3. _moe_gate_up_kernel  grouped GEMM over tiles of BM rows of one expert: h = silu(x Wg^T) * (x Wu^T),
                          rows gathered from x by token, written in grouped order.
  4. _moe_down_kernel     grouped GEMM y = (h Wd^T) * w[slot], written back at the slot's place.
  5. _moe_sum_kernel      out[n] = sum_j y[n * top_k + j] in fp32: a fixed order, so deterministic.

Row tiles never straddle two experts. Expert e owns cdiv(counts[e], BM) tiles; the number of tiles
is at most cdiv(M, BM) + min(E, M), which is the grid. Each GEMM program recomputes the tile table
(a cumsum over E counts, a few hundred integers) and finds its expert by counting the tile ends at or
below its id; programs past the last tile return at once. Decode (one token, top-8) therefore runs
8 tiles and reads only the 8 selected experts' weights. All routing is in Triton, not torch.sort /
searchsorted, so the exported program needs no fallback (aten) kernels for it.

Precision: fp32 accumulation; h between the GEMMs is stored in x's dtype (it is the second GEMM's bf16
operand anyway), and so are the weighted terms y, summed in fp32. Both at decode and at prefill: a
token's output must not depend on how many tokens share its call, or a prefill graph compiled for a
dynamic length (which takes the prefill path) would round differently from the same call run
eagerly on a short chunk (which takes the decode path).

File order: helpers -> kernels -> launcher (plain function, also runs under TRITON_INTERPRET=1). The
reference and the op registration live in hybrid_ops.py.
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
# Helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _expert_tile(cnt_ptr, i_tile, E, BM: tl.constexpr, E_P2: tl.constexpr):
    """Which expert owns row tile i_tile, and the tile's grouped rows [row0, row_end).

    Returns e = E for a tile past the last one (the caller returns).
    """
    o_e = tl.arange(0, E_P2)
    b_cnt = tl.load(cnt_ptr + o_e, mask=o_e < E, other=0)  # [E_P2]
    b_tiles = (b_cnt + BM - 1) // BM
    b_tile_end = tl.cumsum(b_tiles, 0)  # inclusive
    b_row_end = tl.cumsum(b_cnt, 0)
    e = tl.sum((b_tile_end <= i_tile).to(tl.int32), 0)
    # Scalars of the owning expert (a masked sum picks one element of a register vector).
    sel = o_e == e
    tile0 = tl.sum(tl.where(sel, b_tile_end - b_tiles, 0), 0)
    row_end = tl.sum(tl.where(sel, b_row_end, 0), 0)
    row0 = row_end - tl.sum(tl.where(sel, b_cnt, 0), 0) + (i_tile - tile0) * BM
    return e, row0, row_end


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _moe_count_kernel(ids_ptr, cnt_ptr, rank_ptr, M, BLOCK: tl.constexpr):
    o_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_m = o_m < M
    b_e = tl.load(ids_ptr + o_m, mask=m_m, other=0).to(tl.int32)
    b_rank = tl.atomic_add(cnt_ptr + b_e, 1, mask=m_m)  # old count = this slot's rank in its expert
    tl.store(rank_ptr + o_m, b_rank, mask=m_m)


@triton.jit
def _moe_scatter_kernel(ids_ptr, cnt_ptr, rank_ptr, sorted_ptr, M, E,
                        BLOCK: tl.constexpr, E_P2: tl.constexpr):
    o_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_m = o_m < M
    o_e = tl.arange(0, E_P2)
    b_cnt = tl.load(cnt_ptr + o_e, mask=o_e < E, other=0)
    b_start = tl.cumsum(b_cnt, 0) - b_cnt  # [E_P2] exclusive offsets
    b_e = tl.load(ids_ptr + o_m, mask=m_m, other=0).to(tl.int32)
    # offset[b_e] as a [BLOCK, E_P2] select-and-sum: no gather from a register vector in Triton.
    b_off = tl.sum(tl.where(b_e[:, None] == o_e[None, :], b_start[None, :], 0), 1)  # [BLOCK]
    b_rank = tl.load(rank_ptr + o_m, mask=m_m, other=0)
    tl.store(sorted_ptr + b_off + b_rank, o_m, mask=m_m)


@triton.jit
def _moe_route_small_kernel(ids_ptr, cnt_ptr, sorted_ptr, M, E, M_P2: tl.constexpr, E_P2: tl.constexpr):
    """Steps 1 and 2 in one program for M <= M_P2 slots (decode): no atomics, no zero-filled counts.

    rank = number of earlier slots with the same expert, from an [M, M] comparison.
    """
    o_m = tl.arange(0, M_P2)
    m_m = o_m < M
    o_e = tl.arange(0, E_P2)
    b_e = tl.load(ids_ptr + o_m, mask=m_m, other=E_P2).to(tl.int32)  # padding matches no expert
    b_hit = b_e[:, None] == o_e[None, :]  # [M_P2, E_P2]
    b_cnt = tl.sum(b_hit.to(tl.int32), 0)
    tl.store(cnt_ptr + o_e, b_cnt, mask=o_e < E)
    b_start = tl.cumsum(b_cnt, 0) - b_cnt
    b_off = tl.sum(tl.where(b_hit, b_start[None, :], 0), 1)  # [M_P2]
    b_same = (b_e[:, None] == b_e[None, :]) & (o_m[None, :] < o_m[:, None])  # [M_P2, M_P2]
    b_rank = tl.sum(b_same.to(tl.int32), 1)
    tl.store(sorted_ptr + b_off + b_rank, o_m, mask=m_m)


@triton.jit
def _moe_gate_up_kernel(
    x_ptr, w_ptr, cnt_ptr, sorted_ptr, h_ptr,
    stride_xn, stride_we, stride_wn, stride_hm,
    E, K_IN, INTER,
    TOP_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, E_P2: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """h[rows, n-tile] = silu(x[tok] @ gate[e, n-tile]^T) * (x[tok] @ up[e, n-tile]^T), grouped rows."""
    i_n, i_tile = tl.program_id(0), tl.program_id(1)
    e, row0, row_end = _expert_tile(cnt_ptr, i_tile, E, BM, E_P2)
    if e >= E:
        return
    o_m = row0 + tl.arange(0, BM)
    m_m = o_m < row_end
    b_tok = tl.load(sorted_ptr + o_m, mask=m_m, other=0) // TOP_K  # [BM] token of each grouped row
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < INTER
    o_k = tl.arange(0, BK)
    p_x = x_ptr + b_tok[:, None].to(tl.int64) * stride_xn + o_k[None, :]
    p_g = w_ptr + e.to(tl.int64) * stride_we + o_n[:, None] * stride_wn + o_k[None, :]
    p_u = p_g + INTER * stride_wn  # up rows follow the gate rows
    b_g = tl.zeros([BM, BN], tl.float32)
    b_u = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K_IN, BK):
        m_k = (k0 + o_k) < K_IN
        b_x = tl.load(p_x + k0, mask=m_m[:, None] & m_k[None, :], other=0.0)  # [BM, BK]
        b_wg = tl.load(p_g + k0, mask=m_n[:, None] & m_k[None, :], other=0.0)  # [BN, BK]
        b_wu = tl.load(p_u + k0, mask=m_n[:, None] & m_k[None, :], other=0.0)
        if UPCAST:  # the interpreter's bf16 dot is wrong; same algorithm in fp32
            b_x, b_wg, b_wu = b_x.to(tl.float32), b_wg.to(tl.float32), b_wu.to(tl.float32)
        b_g = tl.dot(b_x, tl.trans(b_wg), b_g)
        b_u = tl.dot(b_x, tl.trans(b_wu), b_u)
    b_h = b_g * tl.sigmoid(b_g) * b_u
    p_h = h_ptr + o_m[:, None].to(tl.int64) * stride_hm + o_n[None, :]
    store_rounded(p_h, b_h, m_m[:, None] & m_n[None, :], UPCAST)


@triton.jit
def _moe_down_kernel(
    h_ptr, w_ptr, cnt_ptr, sorted_ptr, tw_ptr, y_ptr,
    stride_hm, stride_we, stride_wn, stride_ym,
    E, K_IN, N_OUT,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, E_P2: tl.constexpr, UPCAST: tl.constexpr,
):
    """y[slot, n-tile] = topk_weight[slot] * (h[rows] @ down[e, n-tile]^T)."""
    i_n, i_tile = tl.program_id(0), tl.program_id(1)
    e, row0, row_end = _expert_tile(cnt_ptr, i_tile, E, BM, E_P2)
    if e >= E:
        return
    o_m = row0 + tl.arange(0, BM)
    m_m = o_m < row_end
    b_slot = tl.load(sorted_ptr + o_m, mask=m_m, other=0)  # [BM]
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N_OUT
    o_k = tl.arange(0, BK)
    p_h = h_ptr + o_m[:, None].to(tl.int64) * stride_hm + o_k[None, :]
    p_w = w_ptr + e.to(tl.int64) * stride_we + o_n[:, None] * stride_wn + o_k[None, :]
    b_y = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K_IN, BK):
        m_k = (k0 + o_k) < K_IN
        b_h = tl.load(p_h + k0, mask=m_m[:, None] & m_k[None, :], other=0.0)  # [BM, BK]
        b_w = tl.load(p_w + k0, mask=m_n[:, None] & m_k[None, :], other=0.0)  # [BN, BK]
        if UPCAST:
            b_h, b_w = b_h.to(tl.float32), b_w.to(tl.float32)
        b_y = tl.dot(b_h, tl.trans(b_w), b_y)
    b_tw = tl.load(tw_ptr + b_slot, mask=m_m, other=0.0).to(tl.float32)
    b_y = b_y * b_tw[:, None]
    p_y = y_ptr + b_slot[:, None].to(tl.int64) * stride_ym + o_n[None, :]
    store_rounded(p_y, b_y, m_m[:, None] & m_n[None, :], UPCAST)


@triton.jit
def _moe_sum_kernel(y_ptr, out_ptr, N, H, stride_ym, stride_on,
                    TOP_K: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr, UPCAST: tl.constexpr):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BT + tl.arange(0, BT)
    o_h = i_h * BH + tl.arange(0, BH)
    m = (o_t < N)[:, None] & (o_h < H)[None, :]
    p_y = y_ptr + (o_t * TOP_K).to(tl.int64)[:, None] * stride_ym + o_h[None, :]
    b_o = tl.zeros([BT, BH], tl.float32)
    for j in tl.static_range(TOP_K):
        b_o += tl.load(p_y + j * stride_ym, mask=m, other=0.0).to(tl.float32)
    p_o = out_ptr + o_t.to(tl.int64)[:, None] * stride_on + o_h[None, :]
    store_rounded(p_o, b_o, m, UPCAST)


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------


def validate(x, topk_ids, topk_weights, gate_up, down) -> None:
    if x.dim() != 2 or topk_ids.dim() != 2 or gate_up.dim() != 3 or down.dim() != 3:
        raise ValueError(f"moe_experts: want x [N, H], topk_ids [N, k], gate_up [E, 2I, H], down [E, H, I]; got "
                         f"{tuple(x.shape)}, {tuple(topk_ids.shape)}, {tuple(gate_up.shape)}, {tuple(down.shape)}")
    N, H = x.shape
    E, I2, H2 = gate_up.shape
    if H2 != H or I2 % 2 or tuple(down.shape) != (E, H, I2 // 2):
        raise ValueError(f"moe_experts: gate_up {tuple(gate_up.shape)} / down {tuple(down.shape)} do not fit "
                         f"hidden {H}")
    if topk_ids.shape[0] != N or tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(f"moe_experts: topk_ids {tuple(topk_ids.shape)} / topk_weights "
                         f"{tuple(topk_weights.shape)} do not fit N={N}")
    if not (x.dtype == gate_up.dtype == down.dtype) or not x.dtype.is_floating_point:
        raise ValueError(f"moe_experts: x, gate_up and down must share one float dtype, got {x.dtype}, "
                         f"{gate_up.dtype}, {down.dtype}")
    if topk_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"moe_experts: topk_ids must be int64 or int32, got {topk_ids.dtype}")
    if len({t.device for t in (x, topk_ids, topk_weights, gate_up, down)}) > 1:
        raise ValueError("moe_experts: all inputs must be on one device")


def _config(decode: bool):
    """(BM, BN_gate_up, BN_down, BK, num_warps, num_stages)."""
    if decode:  # a handful of rows per expert: stream the weights through many small N tiles
        return 16, 32, 64, 128, 4, 4
    return 64, 64, 128, 64, 4, 3


def moe_experts_triton(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                       gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Triton path of tq::moe_experts: same arguments and result as moe_experts_ref."""
    validate(x, topk_ids, topk_weights, gate_up, down)
    N, H = x.shape
    top_k = topk_ids.shape[1]
    E, inter = down.shape[0], down.shape[2]
    M = N * top_k
    upcast = os.environ.get("TRITON_INTERPRET") == "1"
    decode = statically_known_true(M <= 64)  # static in a decode export; never a guard on a dynamic M
    block_m, bn_gu, bn_dn, block_k, warps, stages = _config(decode)
    e_p2 = triton.next_power_of_2(E)
    # The kernels assume unit stride along the reduced (last) dim; everything else goes by stride.
    x = x if x.stride(-1) == 1 else x.contiguous()
    gate_up = gate_up if gate_up.stride(-1) == 1 else gate_up.contiguous()
    down = down if down.stride(-1) == 1 else down.contiguous()
    ids = topk_ids.reshape(M).contiguous()
    tw = topk_weights.reshape(M).contiguous()

    sorted_slots = torch.empty((M,), dtype=torch.int32, device=x.device)
    h = torch.empty((M, inter), dtype=x.dtype, device=x.device)
    # y holds the 8 weighted terms of each token until the sum, in x's dtype on both paths (see the
    # module docstring; it also halves 2 x 134 MB of traffic at 4096 tokens x top-8).
    y = torch.empty((M, H), dtype=x.dtype, device=x.device)
    out = torch.empty((N, H), dtype=x.dtype, device=x.device)

    if decode:  # one launch instead of a zero fill and two kernels: decode is launch-bound here
        counts = torch.empty((E,), dtype=torch.int32, device=x.device)
        wrap_triton(_moe_route_small_kernel)[(1,)](
            ids, counts, sorted_slots, M, E, M_P2=max(16, triton.next_power_of_2(M)), E_P2=e_p2)
    else:
        counts = torch.zeros((E,), dtype=torch.int32, device=x.device)
        rank = torch.empty((M,), dtype=torch.int32, device=x.device)
        wrap_triton(_moe_count_kernel)[(triton.cdiv(M, 256),)](ids, counts, rank, M, BLOCK=256)
        wrap_triton(_moe_scatter_kernel)[(triton.cdiv(M, 64),)](
            ids, counts, rank, sorted_slots, M, E, BLOCK=64, E_P2=e_p2)
    # Upper bound on row tiles: every non-empty expert wastes at most one partial tile. N tiles are the
    # fast grid axis: the programs sharing a row tile (its gathered x rows, or h rows) run together and
    # hit in L2, and an expert's few row tiles still run close enough to share its weights there.
    n_tiles = triton.cdiv(M, block_m) + torch.sym_min(E, M)
    wrap_triton(_moe_gate_up_kernel)[(triton.cdiv(inter, bn_gu), n_tiles)](
        x, gate_up, counts, sorted_slots, h,
        x.stride(0), gate_up.stride(0), gate_up.stride(1), h.stride(0),
        E, H, inter,
        TOP_K=top_k, BM=block_m, BN=bn_gu, BK=block_k, E_P2=e_p2, UPCAST=upcast,
        num_warps=warps, num_stages=stages,
    )
    wrap_triton(_moe_down_kernel)[(triton.cdiv(H, bn_dn), n_tiles)](
        h, down, counts, sorted_slots, tw, y,
        h.stride(0), down.stride(0), down.stride(1), y.stride(0),
        E, inter, H,
        BM=block_m, BN=bn_dn, BK=block_k, E_P2=e_p2, UPCAST=upcast,
        num_warps=warps, num_stages=stages,
    )
    sum_t, sum_h = 8, 256
    wrap_triton(_moe_sum_kernel)[(triton.cdiv(N, sum_t), triton.cdiv(H, sum_h))](
        y, out, N, H, y.stride(0), out.stride(0), TOP_K=top_k, BT=sum_t, BH=sum_h, UPCAST=upcast,
        num_warps=4)
    return out
