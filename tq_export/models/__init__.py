"""Model registry: CLI name -> model module, and `load(checkpoint_dir)` that picks one by config.json.

A model module provides `MODEL_TYPES` (the config.json `model_type` values it reads) and
`from_checkpoint(checkpoint_dir, hf_config, *, max_seq_len, dtype, device, batch_size) -> nn.Module`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ..checkpoint import CONFIG_NAME, CheckpointError, read_config

# CLI name -> module path. Modules import lazily: loading one model never imports the others.
REGISTRY: dict[str, str] = {
    "qwen3.5-moe": "tq_export.models.qwen3_5_moe",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> ModuleType:
    """The model module registered under a CLI name."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    return importlib.import_module(REGISTRY[name])


def for_config(config: dict, config_file: str | Path = CONFIG_NAME) -> tuple[str, ModuleType]:
    """(CLI name, module) of the model that reads this config's model_type."""
    model_type = config.get("model_type")
    for name in names():
        module = get(name)
        if model_type in module.MODEL_TYPES:
            return name, module
    known = sorted(t for n in names() for t in get(n).MODEL_TYPES)
    raise CheckpointError(f"unsupported model_type {model_type!r}; supported: {', '.join(known)}", config_file)


def load(checkpoint_dir: str | Path, *, max_seq_len: int = 4096, dtype: torch.dtype = torch.bfloat16,
         device: str | torch.device = "cpu", batch_size: int = 1, name: str | None = None) -> nn.Module:
    """Build the export-ready model for a Hugging Face checkpoint directory.

    The model is picked by config.json's `model_type` (or forced with `name`, which must then accept
    that model_type). Raises CheckpointError (one line, `<what> (<file>)`) for any bad input.
    """
    config = read_config(checkpoint_dir)
    config_file = Path(checkpoint_dir) / CONFIG_NAME
    found, module = for_config(config, config_file)
    if name is not None and name != found:
        raise CheckpointError(f"checkpoint is a {found!r} model, not {name!r}", config_file)
    return module.from_checkpoint(checkpoint_dir, config, max_seq_len=max_seq_len, dtype=dtype,
                                  device=device, batch_size=batch_size)
