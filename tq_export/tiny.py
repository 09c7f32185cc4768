"""Tiny random Qwen 3.5 MoE checkpoints, written by transformers itself (for tests and `tq-export --tiny`).

The model is built with transformers' own config and model classes from a fixed seed and saved with
`save_pretrained`, so the loader is tested on files transformers writes, not on files we write. Two
departures from transformers' init, both deterministic:
  * the zero- or one-initialized parameters (norm weights, dt_bias) are jittered, so a loader that mixed
    them up, or a norm with the wrong (1 + w) convention, would show in the logits;
  * the embedding rows share one direction (`embed_shared` times the rows' spread). Trained LMs'
    embeddings and hidden states are anisotropic like this; with i.i.d. rows every token's value vector
    is independent of the others, the worst case for any KV quantizer (the attention output's cosine
    then sits at the per-vector limit sqrt(1 - D_mse) ~ 0.995 at 4 bits), which says little about how a
    real checkpoint fares. `embed_shared=0` keeps transformers' i.i.d. init.

The default keeps head_dim = 256 (the real model's) so cache byte counts are representative, and
everything else small enough to run a forward in milliseconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_DEFAULT: dict = {
    "vocab_size": 512,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
    "linear_conv_kernel_dim": 4,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    "max_position_embeddings": 4096,
    "initializer_range": 0.05,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}

# Smallest vision tower transformers accepts; its weights are written and must be ignored by the loader.
TINY_VISION: dict = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                     "out_hidden_size": 64, "patch_size": 4, "num_position_embeddings": 16}

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EXPERT_LAYOUTS = ("per_expert", "fused")


def tiny_text_config(**overrides):
    """transformers' Qwen3_5MoeTextConfig for TINY_DEFAULT updated with `overrides`."""
    from transformers import Qwen3_5MoeTextConfig

    kwargs = {**TINY_DEFAULT, **overrides}
    if "layer_types" in overrides and "num_hidden_layers" not in overrides:
        kwargs["num_hidden_layers"] = len(overrides["layer_types"])
    if "num_hidden_layers" in overrides and "layer_types" not in overrides:
        kwargs.pop("layer_types")  # let transformers derive the pattern (every 4th layer full)
    return Qwen3_5MoeTextConfig(**kwargs)


def _jitter(model: torch.nn.Module, seed: int, embed_shared: float) -> None:
    """Move the constant-initialized parameters off their init values; give embeddings a shared direction."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("dt_bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
        emb = model.get_input_embeddings().weight
        shared = torch.randn(emb.shape[1], generator=g) * emb.float().std()
        emb.add_((embed_shared * shared).to(emb.dtype))


def build_tiny_model(*, seed: int = 0, multimodal: bool = False, embed_shared: float = 1.0, **overrides):
    """The random transformers model (fp32, eval mode) that make_tiny_checkpoint saves."""
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForCausalLM, Qwen3_5MoeForConditionalGeneration

    text = tiny_text_config(**overrides)
    torch.manual_seed(seed)
    if multimodal:
        config = Qwen3_5MoeConfig(text_config=text.to_dict(), vision_config=dict(TINY_VISION),
                                  tie_word_embeddings=text.tie_word_embeddings)
        model = Qwen3_5MoeForConditionalGeneration(config)
    else:
        model = Qwen3_5MoeForCausalLM(text)
    _jitter(model, seed, embed_shared)
    return model.eval()


def make_tiny_checkpoint(out_dir: str | Path, *, seed: int = 0, multimodal: bool = False,
                         expert_layout: str = "per_expert", dtype: torch.dtype = torch.float32,
                         max_shard_size: str | None = None, tokenizer: bool = True, embed_shared: float = 1.0,
                         **overrides) -> Path:
    """Write a tiny random Qwen 3.5 MoE checkpoint to `out_dir`; return the directory.

    overrides: text-config fields (see TINY_DEFAULT). multimodal: a Qwen3_5MoeForConditionalGeneration
    (text weights under `model.language_model.`, plus a vision tower). expert_layout: "per_expert"
    (what `save_pretrained` writes) or "fused" (transformers' in-memory 3-D expert tensors, saved as
    they are). max_shard_size: shard through `model.safetensors.index.json` (per_expert only).
    embed_shared: strength of the embeddings' shared direction (module docstring; 0 = i.i.d. rows).
    """
    if expert_layout not in EXPERT_LAYOUTS:
        raise ValueError(f"expert_layout must be one of {EXPERT_LAYOUTS}, got {expert_layout!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(seed=seed, multimodal=multimodal, embed_shared=embed_shared, **overrides).to(dtype)
    if expert_layout == "per_expert":
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(out, **kwargs)
    else:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.get_text_config().tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(out)
    if tokenizer:
        write_tiny_tokenizer(out / "tokenizer.json", model.config.get_text_config().vocab_size)
    return out


def write_tiny_tokenizer(path: str | Path, vocab_size: int) -> bool:
    """Byte-level BPE with no merges: one token per byte (ids 0-255) plus a few specials after them.

    Cheap, and a real tokenizer.json that the runner's tokenizer can read. Skipped (returns False) when
    the vocab is too small or the `tokenizers` package is absent.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        return False
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        return False
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(path))
    meta = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIAL_TOKENS[2], "model_max_length": 1 << 20}
    Path(path).with_name("tokenizer_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return True
