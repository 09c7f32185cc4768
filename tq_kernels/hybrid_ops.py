"""Custom ops for the hybrid (linear-attention + MoE) layers of Qwen 3.5 MoE, with pure-torch references.

Three ops in the `tq` namespace, each a `torch.library.triton_op` with a fake (meta) kernel, so
`torch.export` records ONE node per call whatever the sequence length: the loops inside (over time steps,
over experts) never unroll into the graph, and the shapes stay symbolic in T.

    tq::gated_delta_rule(q, k, v, g, beta, state, scale)      -> (out, new_state)
        Gated DeltaNet recurrence (Yang et al., "Gated Delta Networks", arXiv 2412.06464).
    tq::causal_conv1d(x, weight, state, apply_silu)            -> (out, new_state)
        Depthwise causal conv over time, left context from a conv state, optional SiLU.
    tq::moe_experts(x, topk_ids, topk_weights, gate_up, down)  -> out
        Sum over each token's top-k SwiGLU experts, weighted by the router.

The ops never mutate their inputs (`mutates_args=()`): they return the new state and the model copies it
into its buffer (`buf.copy_(new)`), which torch.export records as a plain buffer mutation.

Each reference (`*_ref`) is a plain function that accumulates in float32 and is written to be the spec a
faster kernel must match (a Triton `triton_op` for CUDA can take over the op names and be tested against
these). This file imports nothing from tq_export.
"""

# No `from __future__ import annotations`: custom_op reads the schema from real annotations.
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import triton_op

from .causal_conv1d import causal_conv1d_triton
from .gated_delta import gated_delta_rule_triton
from .moe import moe_experts_triton

# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim: the FLA convention that checkpoints were trained with."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def gated_delta_rule_ref(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                         scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Gated delta rule, one time step at a time.

    q, k  [B, T, H_k, D_k]   raw (L2-normalized here, q then scaled by `scale`, default D_k^-0.5)
    v     [B, T, H_v, D_v]   H_v a multiple of H_k: k head j serves v heads j*r .. j*r + r-1
    g     [B, T, H_v]        log decay (<= 0): the state is multiplied by exp(g_t) before step t
    beta  [B, T, H_v]        write strength in (0, 1)
    state [B, H_v, D_k, D_v] recurrent state S before the first step

    Per step: S <- exp(g_t) S;  S <- S + k_t (beta_t (v_t - k_t^T S))^T;  o_t = q_t^T S.
    Returns out [B, T, H_v, D_v] in q's dtype and the final state in state's dtype.
    """
    n_rep = v.shape[2] // k.shape[2]
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    qf = (l2norm(q.float()) * scale).repeat_interleave(n_rep, dim=2)
    kf = l2norm(k.float()).repeat_interleave(n_rep, dim=2)
    vf, decay, bf = v.float(), g.float().exp(), beta.float()
    s = state.float().clone()  # [B, H_v, D_k, D_v]
    out = vf.new_empty(vf.shape)
    for t in range(v.shape[1]):
        s = s * decay[:, t, :, None, None]
        k_t = kf[:, t]  # [B, H_v, D_k]
        recalled = torch.einsum("bhk,bhkv->bhv", k_t, s)
        delta = (vf[:, t] - recalled) * bf[:, t, :, None]  # [B, H_v, D_v]
        s = s + k_t[..., :, None] * delta[..., None, :]
        out[:, t] = torch.einsum("bhk,bhkv->bhv", qf[:, t], s)
    return out.to(q.dtype), s.to(state.dtype)


def causal_conv1d_ref(x: Tensor, weight: Tensor, state: Tensor, apply_silu: bool = True) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv over time with a carried left context.

    x [B, T, C], weight [C, K], state [B, K-1, C] (the last K-1 inputs before x; zeros at the start).
    out[t, c] = sum_j weight[c, j] * xs[t + j, c] with xs = concat(state, x) over time, then SiLU.
    Returns out [B, T, C] in x's dtype and the new state (last K-1 rows of xs) in state's dtype.
    """
    kernel = weight.shape[1]
    xs = torch.cat([state.float(), x.float()], dim=1)  # [B, K-1+T, C]
    windows = xs.unfold(1, kernel, 1)  # [B, T, C, K], window j = position t + j of xs
    out = (windows * weight.float()).sum(-1)
    if apply_silu:
        out = F.silu(out)
    new_state = xs[:, xs.shape[1] - (kernel - 1):].to(state.dtype).clone(memory_format=torch.contiguous_format)
    return out.to(x.dtype), new_state


def moe_experts_ref(x: Tensor, topk_ids: Tensor, topk_weights: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """Routed SwiGLU experts.

    x [N, H], topk_ids [N, k] int64, topk_weights [N, k], gate_up [E, 2I, H] (gate rows first, then up),
    down [E, H, I]. out[n] = sum_j w[n, j] * down[e] @ (silu(gate[e] @ x[n]) * (up[e] @ x[n])), e = ids[n, j].
    Loops over the experts that were picked (eager only: the op is opaque to export), fp32 accumulation.
    """
    n_tok, top_k = topk_ids.shape
    inter = down.shape[2]
    flat_ids = topk_ids.reshape(-1)
    token_of = torch.arange(n_tok, device=x.device).repeat_interleave(top_k)
    flat_w = topk_weights.reshape(-1).float()
    out = torch.zeros(n_tok, x.shape[1], dtype=torch.float32, device=x.device)
    for e in flat_ids.unique().tolist():
        slots = (flat_ids == e).nonzero().squeeze(1)
        rows = token_of[slots]
        gu = x[rows].float() @ gate_up[e].float().T  # [n_e, 2I]
        h = F.silu(gu[:, :inter]) * gu[:, inter:]
        out.index_add_(0, rows, (h @ down[e].float().T) * flat_w[slots, None])
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Custom ops (one graph node each) + fake kernels
# --------------------------------------------------------------------------------------------


# Triton on CUDA (traced into the AOTInductor program); the references above on CPU. The fakes
# launch nothing, so tracing works under TRITON_INTERPRET=1 too.


@triton_op("tq::gated_delta_rule", mutates_args=())
def gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                     scale: float | None = None) -> tuple[Tensor, Tensor]:
    return gated_delta_rule_triton(q, k, v, g, beta, state, scale)


@gated_delta_rule.register_kernel("cpu")
def _(q, k, v, g, beta, state, scale=None):
    return gated_delta_rule_ref(q, k, v, g, beta, state, scale)


@gated_delta_rule.register_fake
def _(q, k, v, g, beta, state, scale=None):
    return v.new_empty(v.shape, dtype=q.dtype), state.new_empty(state.shape)


@triton_op("tq::causal_conv1d", mutates_args=())
def causal_conv1d(x: Tensor, weight: Tensor, state: Tensor, apply_silu: bool = True) -> tuple[Tensor, Tensor]:
    return causal_conv1d_triton(x, weight, state, apply_silu)


@causal_conv1d.register_kernel("cpu")
def _(x, weight, state, apply_silu=True):
    return causal_conv1d_ref(x, weight, state, apply_silu)


@causal_conv1d.register_fake
def _(x, weight, state, apply_silu=True):
    return x.new_empty(x.shape), state.new_empty(state.shape)


@triton_op("tq::moe_experts", mutates_args=())
def moe_experts(x: Tensor, topk_ids: Tensor, topk_weights: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    return moe_experts_triton(x, topk_ids, topk_weights, gate_up, down)


@moe_experts.register_kernel("cpu")
def _(x, topk_ids, topk_weights, gate_up, down):
    return moe_experts_ref(x, topk_ids, topk_weights, gate_up, down)


@moe_experts.register_fake
def _(x, topk_ids, topk_weights, gate_up, down):
    return x.new_empty(x.shape)
