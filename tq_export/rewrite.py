"""Model rewrites: plain functions that swap submodules and return how many they replaced.

apply_turboquant swaps every full-attention layer's bf16 KV cache for a TurboQuant cache (arXiv
2504.19874: per vector a norm plus 4-bit Lloyd-Max indices of the randomly rotated unit vector) and
routes its attention through `torch.ops.tq.tq4_sdpa`, which scores against the packed cache directly.
Linear-attention layers keep their conv/recurrent state: they have no KV cache to compress.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
import tq_kernels  # noqa: F401  (registers torch.ops.tq.tq4_sdpa)
from torch import nn
from tq_kernels.tq4_sdpa import HEAD_DIMS as TQ4_HEAD_DIMS

from .cache import TurboQuantKVCache
from .models.qwen3_5_moe import CachedAttention, repeat_kv

log = logging.getLogger(__name__)


class TurboQuantAttention(nn.Module):
    """Drop-in for CachedAttention: same forward(q, k, v, input_pos, mask) -> [B, H_q, T, D].

    At 4/4 bits (and a head_dim the kernel supports) attention runs in tq4_sdpa, which takes the
    causal bound from kv_len instead of the mask. Other widths dequantize the whole cache and use
    masked attention: correct, but it moves fp32 K/V through memory, so it is for experiments only.
    """

    def __init__(self, cache: TurboQuantKVCache, n_rep: int, scale: float):
        super().__init__()
        self.cache, self.n_rep, self.scale = cache, n_rep, scale
        self.fused = cache.k_bits == 4 and cache.v_bits == 4 and cache.head_dim in TQ4_HEAD_DIMS

    def forward(self, q, k, v, input_pos, mask):
        c = self.cache
        c.update(input_pos, k, v)
        if self.fused:
            # Positions are contiguous, so the filled length is one past the last one written;
            # a [1] tensor keeps it on the device (no host sync, nothing specialized at export).
            kv_len = input_pos[-1:] + 1
            # K and V quantizers share the seed, hence the rotation, and at 4 bits the codebook.
            out = torch.ops.tq.tq4_sdpa(q.to(torch.bfloat16), c.k_packed, c.k_norms, c.v_packed, c.v_norms,
                                        c.k_quantizer.centroids, c.k_quantizer.rotation, kv_len, self.scale)
            return out.to(q.dtype)
        k_all, v_all = c.dequantize()
        k_all = repeat_kv(k_all.to(q.dtype), self.n_rep)
        v_all = repeat_kv(v_all.to(q.dtype), self.n_rep)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=self.scale)


def apply_turboquant(model: nn.Module, k_bits: int = 4, v_bits: int = 4, seed: int = 0) -> int:
    """Swap each CachedAttention (bf16 KV cache) in `model` for TurboQuantAttention; return the count.

    The new caches are empty (as after `model.reset()`) and live on the old caches' device. The same
    seed gives every layer the same rotation: one [D, D] matrix is all the kernel needs per layer.
    """
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, CachedAttention)]
    for name, old in targets:
        kv = old.cache
        cache = TurboQuantKVCache(kv.n_kv_heads, kv.head_dim, kv.max_seq_len, k_bits=k_bits, v_bits=v_bits,
                                  batch_size=kv.batch_size, seed=seed).to(kv.k_cache.device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, TurboQuantAttention(cache, old.n_rep, old.scale))
    log.info("TurboQuant K%d/V%d: rewrote %d full-attention layer(s)", k_bits, v_bits, len(targets))
    return len(targets)
