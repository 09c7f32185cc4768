"""Qwen 3.5 MoE (text), export-ready: one stateful forward for prefill and decode.

    model(tokens [B, T], input_pos [T]) -> logits [B, T, vocab]

The layer stack mixes two token mixers (config `layer_types`):
  * full attention: q/gate projection, per-head q_norm/k_norm, partial rotary, GQA over a static KV cache
    (bf16 by default; `rewrite.apply_turboquant` swaps it for the TurboQuant cache, arXiv 2504.19874),
    output gated by sigmoid(gate);
  * Gated DeltaNet linear attention (arXiv 2412.06464): causal depthwise conv with a conv state, then the
    gated delta rule with a recurrent state (the `tq::` ops of tq_kernels.hybrid_ops).
Every layer ends in a sparse MoE: softmax top-k router (renormalized), routed SwiGLU experts, plus a
sigmoid-gated shared expert.

Numerics follow transformers' `modeling_qwen3_5_moe.py` op for op (the tests compare against it): the
decoder norms are zero-centred, x * (1 + w), in fp32; the linear-attention output norm is a plain
gated RMSNorm (w, not 1 + w); the recurrent state is kept in fp32 whatever the model dtype.

All state lives in buffers sized at build time, and nothing branches on tensor values, so one
torch.export with a dynamic T covers prefill and decode; state updates are in-place buffer writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tq_kernels.hybrid_ops  # noqa: F401  (registers torch.ops.tq.gated_delta_rule / causal_conv1d / moe_experts)
from torch import nn

from .. import checkpoint
from ..cache import KVCache

MODEL_TYPES = ("qwen3_5_moe", "qwen3_5_moe_text")
FULL, LINEAR = "full_attention", "linear_attention"

# Checkpoint tensors that are not part of the text model: vision tower, multi-token-prediction head.
IGNORED_PREFIXES = ("model.visual.", "visual.", "mtp.", "model.mtp.")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Qwen35MoeConfig:
    vocab_size: int
    hidden_size: int
    layer_types: tuple[str, ...]
    rms_norm_eps: float
    tie_word_embeddings: bool
    # full attention
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary_dim: int
    rope_theta: float
    attention_bias: bool
    # linear attention (Gated DeltaNet)
    linear_num_k_heads: int
    linear_num_v_heads: int
    linear_k_head_dim: int
    linear_v_head_dim: int
    conv_kernel: int
    # mixture of experts
    num_experts: int
    top_k: int
    moe_intermediate_size: int
    shared_intermediate_size: int
    norm_topk_prob: bool = True

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_k_heads * self.linear_k_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_v_heads * self.linear_v_head_dim

    @property
    def conv_dim(self) -> int:  # q, k and v all pass through the conv
        return 2 * self.linear_key_dim + self.linear_value_dim

    @classmethod
    def from_hf_config(cls, config: dict) -> "Qwen35MoeConfig":
        """From a config.json dict: text-only (`qwen3_5_moe_text`) or multimodal (`text_config` inside).

        Raises ValueError naming the field for anything missing or unsupported.
        """
        text = dict(config.get("text_config") or config)

        def need(key):
            if text.get(key) is None:
                raise ValueError(f"config field '{key}' is missing")
            return text[key]

        if text.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config field 'hidden_act' is {text['hidden_act']!r}; only 'silu' is supported")
        if text.get("attn_output_gate", True) is not True:
            raise ValueError("config field 'attn_output_gate' must be true (the gated attention of Qwen 3.5)")
        head_dim = int(text.get("head_dim") or need("hidden_size") // need("num_attention_heads"))
        theta, partial = _rope_parameters(text)
        cfg = cls(
            vocab_size=int(need("vocab_size")),
            hidden_size=int(need("hidden_size")),
            layer_types=_layer_types(text, int(need("num_hidden_layers"))),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
            num_heads=int(need("num_attention_heads")),
            num_kv_heads=int(need("num_key_value_heads")),
            head_dim=head_dim,
            rotary_dim=int(head_dim * partial),
            rope_theta=theta,
            attention_bias=bool(text.get("attention_bias", False)),
            linear_num_k_heads=int(need("linear_num_key_heads")),
            linear_num_v_heads=int(need("linear_num_value_heads")),
            linear_k_head_dim=int(need("linear_key_head_dim")),
            linear_v_head_dim=int(need("linear_value_head_dim")),
            conv_kernel=int(text.get("linear_conv_kernel_dim", 4)),
            num_experts=int(need("num_experts")),
            top_k=int(need("num_experts_per_tok")),
            moe_intermediate_size=int(need("moe_intermediate_size")),
            shared_intermediate_size=int(need("shared_expert_intermediate_size")),
            norm_topk_prob=bool(text.get("norm_topk_prob", True)),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads={self.num_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_kv_heads}")
        if self.linear_num_v_heads % self.linear_num_k_heads:
            raise ValueError(f"linear_num_value_heads={self.linear_num_v_heads} is not a multiple of "
                             f"linear_num_key_heads={self.linear_num_k_heads}")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary dim {self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if self.conv_kernel < 2:
            raise ValueError(f"linear_conv_kernel_dim={self.conv_kernel} must be >= 2")
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"num_experts_per_tok={self.top_k} must be in [1, num_experts={self.num_experts}]")


def _layer_types(text: dict, n_layers: int) -> tuple[str, ...]:
    types = text.get("layer_types")
    if types is None:  # older configs give the period of the full-attention layers instead
        every = int(text.get("full_attention_interval", 4))
        types = [FULL if (i + 1) % every == 0 else LINEAR for i in range(n_layers)]
    if len(types) != n_layers or not set(types) <= {FULL, LINEAR}:
        raise ValueError(f"config field 'layer_types' must list {n_layers} of {FULL!r}/{LINEAR!r}")
    return tuple(types)


def _rope_parameters(text: dict) -> tuple[float, float]:
    """(theta, partial_rotary_factor) from `rope_parameters` (transformers 5) or the older top-level keys."""
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported (only 'default')")
    # Text positions are equal on the temporal/height/width axes, so Qwen's multimodal rope
    # (mrope_section, interleaved or not) reduces to plain rope: the sections can be ignored.
    theta = float(rope.get("rope_theta", text.get("rope_theta", 10000.0)))
    partial = float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25)))
    return theta, partial


# --------------------------------------------------------------------------------------------
# Norms
# --------------------------------------------------------------------------------------------


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Zero-centred RMSNorm: x_hat * (1 + w), computed in fp32. Checkpoints store w near 0."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_rms(x.float(), self.eps) * (1.0 + self.weight.float())).type_as(x)


class GatedRMSNorm(nn.Module):
    """Linear-attention output norm: (w * x_hat) * silu(gate). Plain w here, not 1 + w.

    The rounding points (x_hat back to the input dtype before w, the gate in fp32) copy transformers'
    Qwen3_5MoeRMSNormGated so bf16 runs round the same way.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        y = self.weight * _rms(x.float(), self.eps).to(x.dtype)
        return (y * F.silu(gate.float())).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Rotary embedding (partial: only the first rotary_dim channels of each head rotate)
# --------------------------------------------------------------------------------------------


def rope_inv_freq(cfg: Qwen35MoeConfig) -> torch.Tensor:
    return 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.rotary_dim, 2, dtype=torch.float) / cfg.rotary_dim))


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: Qwen35MoeConfig):
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(self, input_pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, rotary_dim], from fp32 angles, rounded to the activations' dtype as HF does."""
        freqs = input_pos.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


# Slices, not split/chunk: ExecuTorch's edge dialect turns those into split_copy, which AOTInductor
# can only run through a libtorch fallback kernel that a torch-free runtime does not have.


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; rotates x[..., :rotary_dim] and passes the rest through."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat([x_rot * cos + _rotate_half(x_rot) * sin, x_pass], dim=-1)


# --------------------------------------------------------------------------------------------
# Full attention
# --------------------------------------------------------------------------------------------


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, S, D] -> [B, H_kv * n_rep, S, D]; query head h reads KV head h // n_rep."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


class CachedAttention(nn.Module):
    """Cache write + attention over the whole static cache. The unit `apply_turboquant` swaps out.

    forward(q [B, H_q, T, D], k, v [B, H_kv, T, D], input_pos [T], mask [B, 1, T, S] bool) -> [B, H_q, T, D].
    Attending over all S slots with a mask built from input_pos (rather than slicing the filled prefix)
    keeps every shape static in S and nothing data-dependent in the graph.
    """

    def __init__(self, cache: KVCache, n_heads: int, scale: float):
        super().__init__()
        self.cache = cache
        self.n_rep = n_heads // cache.n_kv_heads
        self.scale = scale

    def forward(self, q, k, v, input_pos, mask):
        k_all, v_all = self.cache.update(input_pos, k, v)
        k_all = repeat_kv(k_all.to(q.dtype), self.n_rep)
        v_all = repeat_kv(v_all.to(q.dtype), self.n_rep)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=self.scale)


class FullAttention(nn.Module):
    def __init__(self, cfg: Qwen35MoeConfig, max_seq_len: int, batch_size: int, cache_dtype: torch.dtype):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        # q_proj emits, per head, the query and an equally sized output gate: [.., H, 2D] -> q | gate.
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim * 2, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        cache = KVCache(cfg.num_kv_heads, cfg.head_dim, max_seq_len, batch_size, dtype=cache_dtype)
        self.attn = CachedAttention(cache, cfg.num_heads, scale=cfg.head_dim ** -0.5)

    def forward(self, x, input_pos, cos, sin, mask):
        b, t, _ = x.shape
        qg = self.q_proj(x).view(b, t, self.n_heads, 2 * self.head_dim)
        q, gate = qg[..., : self.head_dim], qg[..., self.head_dim :]
        gate = gate.reshape(b, t, self.n_heads * self.head_dim)
        q = self.q_norm(q).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = self.attn(q, k, v, input_pos, mask)  # [B, H, T, D]
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.o_proj(out * torch.sigmoid(gate))


# --------------------------------------------------------------------------------------------
# Linear attention: Gated DeltaNet
# --------------------------------------------------------------------------------------------


class GatedDeltaNet(nn.Module):
    """in_proj_qkv -> causal conv (+SiLU) -> split q, k, v -> gated delta rule -> gated norm -> out_proj.

    State buffers: conv_state [B, K-1, conv_dim] (last inputs to the conv, model dtype: they are
    activations, stored exactly) and recurrent_state [B, H_v, D_k, D_v] in fp32 (it integrates over the
    whole sequence; transformers keeps it in fp32 too).
    """

    def __init__(self, cfg: Qwen35MoeConfig, batch_size: int, dtype: torch.dtype):
        super().__init__()
        self.n_k_heads, self.n_v_heads = cfg.linear_num_k_heads, cfg.linear_num_v_heads
        self.k_dim, self.v_dim = cfg.linear_k_head_dim, cfg.linear_v_head_dim
        self.key_dim, self.value_dim = cfg.linear_key_dim, cfg.linear_value_dim
        self.in_proj_qkv = nn.Linear(cfg.hidden_size, cfg.conv_dim, bias=False)
        self.in_proj_z = nn.Linear(cfg.hidden_size, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(cfg.hidden_size, self.n_v_heads, bias=False)
        self.in_proj_a = nn.Linear(cfg.hidden_size, self.n_v_heads, bias=False)
        # Holds the checkpoint's depthwise weight [C, 1, K]; never called as a module: the causal conv
        # with carried state is tq::causal_conv1d.
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.conv_kernel, groups=cfg.conv_dim, bias=False)
        self.A_log = nn.Parameter(torch.zeros(self.n_v_heads))
        self.dt_bias = nn.Parameter(torch.ones(self.n_v_heads))
        self.norm = GatedRMSNorm(self.v_dim, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, cfg.hidden_size, bias=False)
        self.register_buffer("conv_state", torch.zeros(batch_size, cfg.conv_kernel - 1, cfg.conv_dim, dtype=dtype),
                             persistent=False)
        self.register_buffer("recurrent_state",
                             torch.zeros(batch_size, self.n_v_heads, self.k_dim, self.v_dim, dtype=torch.float32),
                             persistent=False)

    def forward(self, x, input_pos, cos, sin, mask):
        b, t, _ = x.shape
        qkv, conv_state = torch.ops.tq.causal_conv1d(self.in_proj_qkv(x), self.conv1d.weight.squeeze(1),
                                                     self.conv_state, True)
        self.conv_state.copy_(conv_state)
        kd = self.key_dim
        q, k, v = qkv[..., :kd], qkv[..., kd : 2 * kd], qkv[..., 2 * kd :]
        q = q.reshape(b, t, self.n_k_heads, self.k_dim)
        k = k.reshape(b, t, self.n_k_heads, self.k_dim)
        v = v.reshape(b, t, self.n_v_heads, self.v_dim)
        beta = self.in_proj_b(x).sigmoid()
        # Decay in log space, in fp32: exp(A_log) can overflow bf16's range well before fp32's.
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias)
        out, state = torch.ops.tq.gated_delta_rule(q, k, v, g, beta, self.recurrent_state, self.k_dim ** -0.5)
        self.recurrent_state.copy_(state)
        z = self.in_proj_z(x).reshape(b, t, self.n_v_heads, self.v_dim)
        out = self.norm(out, z).reshape(b, t, self.value_dim)
        return self.out_proj(out)

    def reset(self) -> None:
        self.conv_state.zero_()
        self.recurrent_state.zero_()

    def reset_where(self, new_sequence: torch.Tensor) -> None:
        """reset() when the bool tensor [1] `new_sequence` is true, read on the device (no branch)."""
        for state in (self.conv_state, self.recurrent_state):
            state.copy_(torch.where(new_sequence, 0, state))


# --------------------------------------------------------------------------------------------
# Sparse mixture of experts
# --------------------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def top_k_by_argmax(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(probs, k) over the last dim as k argmax passes (k is small: the experts per token).

    AOTInductor runs topk only through a libtorch fallback kernel; max/argmax and where lower to
    plain Triton reductions, so the router exports to a torch-free program.
    """
    ids = torch.arange(probs.shape[-1], device=probs.device)
    weights, picks = [], []
    for _ in range(k):
        w, i = probs.max(dim=-1, keepdim=True)
        weights.append(w)
        picks.append(i)
        probs = torch.where(ids == i, float("-inf"), probs)
    return torch.cat(weights, dim=-1), torch.cat(picks, dim=-1)


class Router(nn.Module):
    def __init__(self, cfg: Qwen35MoeConfig):
        super().__init__()
        self.top_k, self.renormalize = cfg.top_k, cfg.norm_topk_prob
        self.weight = nn.Parameter(torch.zeros(cfg.num_experts, cfg.hidden_size))

    def forward(self, x):
        """x [N, H] -> (weights [N, k] in x's dtype, expert ids [N, k] int64)."""
        logits = F.linear(x, self.weight)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top_w, top_ids = top_k_by_argmax(probs, self.top_k)
        if self.renormalize:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        return top_w.to(logits.dtype), top_ids


class Experts(nn.Module):
    """Stacked expert weights in transformers' fused layout: gate_up_proj [E, 2I, H], down_proj [E, H, I]."""

    def __init__(self, cfg: Qwen35MoeConfig):
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.zeros(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.zeros(e, h, i))

    def forward(self, x, top_ids, top_w):
        return torch.ops.tq.moe_experts(x, top_ids, top_w, self.gate_up_proj, self.down_proj)


class SparseMoe(nn.Module):
    def __init__(self, cfg: Qwen35MoeConfig):
        super().__init__()
        self.gate = Router(cfg)
        self.experts = Experts(cfg)
        self.shared_expert = SwiGLU(cfg.hidden_size, cfg.shared_intermediate_size)
        self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, x):
        b, t, h = x.shape
        flat = x.reshape(b * t, h)
        shared = self.shared_expert(flat)
        top_w, top_ids = self.gate(flat)
        routed = self.experts(flat, top_ids, top_w)
        out = routed + torch.sigmoid(self.shared_expert_gate(flat)) * shared
        return out.reshape(b, t, h)


# --------------------------------------------------------------------------------------------
# Decoder layer and model
# --------------------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen35MoeConfig, layer_type: str, max_seq_len: int, batch_size: int,
                 dtype: torch.dtype):
        super().__init__()
        self.layer_type = layer_type
        # The mixer attribute names are the checkpoint's, so parameter names map one to one.
        if layer_type == FULL:
            self.self_attn = FullAttention(cfg, max_seq_len, batch_size, dtype)
        else:
            self.linear_attn = GatedDeltaNet(cfg, batch_size, dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SparseMoe(cfg)

    @property
    def mixer(self) -> nn.Module:
        return self.self_attn if self.layer_type == FULL else self.linear_attn

    def forward(self, x, input_pos, cos, sin, mask):
        x = x + self.mixer(self.input_layernorm(x), input_pos, cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen35Moe(nn.Module):
    """The text model with static state. Parameter names equal the checkpoint's, less the `model.` prefix."""

    def __init__(self, cfg: Qwen35MoeConfig, max_seq_len: int = 4096, batch_size: int = 1,
                 dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.config, self.max_seq_len, self.batch_size = cfg, max_seq_len, batch_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, lt, max_seq_len, batch_size, dtype) for lt in cfg.layer_types)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryEmbedding(cfg)
        self.to(dtype)
        # `to(dtype)` cast every floating buffer; restore the ones whose precision is chosen above.
        self.rope.inv_freq = rope_inv_freq(cfg).to(self.rope.inv_freq.device)
        for layer in self.layers:
            if layer.layer_type == LINEAR:
                layer.linear_attn.recurrent_state = layer.linear_attn.recurrent_state.float()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] int64, input_pos [T] int64 (contiguous positions) -> logits [B, T, vocab]."""
        if tokens.dim() != 2 or tokens.shape[0] != self.batch_size:
            raise ValueError(f"tokens must be [B={self.batch_size}, T], got {tuple(tokens.shape)}")
        if input_pos.dim() != 1 or input_pos.shape[0] != tokens.shape[1]:
            raise ValueError(f"input_pos must be [T={tokens.shape[1]}], got {tuple(input_pos.shape)}")
        x = self.embed_tokens(tokens)
        cos, sin = self.rope(input_pos, x.dtype)
        # Row t may see cache slot s iff s <= input_pos[t]: causal within the chunk, and the unwritten
        # tail of the static cache stays hidden.
        slots = torch.arange(self.max_seq_len, device=input_pos.device)
        # [B, 1, T, S]: ExecuTorch's CUDA SDPA kernel takes one mask per batch row, broadcast over heads.
        mask = (slots[None, :] <= input_pos[:, None]).expand(tokens.shape[0], 1, -1, -1)
        for layer in self.layers:
            x = layer(x, input_pos, cos, sin, mask)
        return self.lm_head(self.norm(x))

    def reset(self) -> None:
        """Clear every cache and state: the next call starts a new sequence at position 0."""
        for m in self.modules():
            if m is not self and callable(getattr(m, "reset", None)):
                m.reset()

    def start_sequence_if_at_zero(self, input_pos: torch.Tensor) -> None:
        """In-graph reset() for a chunk that begins at position 0, so an exported program can run one
        sequence after another. Only the recurrent states need it: attention never reads cache slots
        past the current position, and those it does read the chunk has just written."""
        new_sequence = input_pos[:1] == 0
        for m in self.modules():
            if m is not self and callable(getattr(m, "reset_where", None)):
                m.reset_where(new_sequence)

    def materialize_state(self, device: torch.device | str) -> None:
        """After building on the meta device and assigning weights: real, zeroed state buffers."""
        for module in self.modules():
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf.is_meta:
                    setattr(module, name, torch.zeros(buf.shape, dtype=buf.dtype, device=device))
        self.rope.inv_freq = rope_inv_freq(self.config).to(device)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def from_checkpoint(checkpoint_dir: str | Path, hf_config: dict, *, max_seq_len: int = 4096,
                    dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    batch_size: int = 1) -> Qwen35Moe:
    """Build the model on the meta device, then assign the checkpoint's tensors (validated, converted)."""
    config_file = Path(checkpoint_dir) / "config.json"
    try:
        cfg = Qwen35MoeConfig.from_hf_config(hf_config)
    except (ValueError, TypeError) as e:
        raise checkpoint.CheckpointError(str(e), config_file) from None
    with torch.device("meta"):
        model = Qwen35Moe(cfg, max_seq_len=max_seq_len, batch_size=batch_size, dtype=dtype)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    ignored = IGNORED_PREFIXES + (("lm_head.weight",) if cfg.tie_word_embeddings else ())
    weights = checkpoint.load_weights(checkpoint_dir, expected, dtype=dtype, device=device, ignore=ignored)
    model.load_state_dict(weights, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.materialize_state(device)
    model.requires_grad_(False)
    return model.eval()
