"""Hugging Face checkpoint reading: config.json + safetensors shards -> a validated state dict.

Tensors are read one at a time through safetensors' memory map (`safe_open`) and converted to the
target dtype and device on the fly, so peak host memory is the model plus one tensor, not the file.

Accepted layouts (what the hub and transformers write for Qwen 3.5 MoE):
  * one `model.safetensors`, or shards listed by `model.safetensors.index.json`;
  * text tensors under `model.` (text-only) or `model.language_model.` (multimodal), `lm_head.` on top;
  * experts per expert (`mlp.experts.<e>.gate_proj.weight`, `up_proj`, `down_proj`: the hub format) or
    already stacked (`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]: the
    layout transformers 5 keeps in memory). The model always holds the stacked layout.

Any problem is one `CheckpointError` whose message is a single line `<what> (<file>)`; the CLI prints it
as `error: ...` and exits 2.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

CONFIG_NAME = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TEXT_PREFIXES = ("model.language_model.", "model.")

_PER_EXPERT = re.compile(r"^(?P<base>.+\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")


class CheckpointError(ValueError):
    """A bad checkpoint. str(e) is one line: `<what> (<file>)`."""

    def __init__(self, what: str, file: str | Path):
        self.what, self.file = " ".join(str(what).split()), str(file)
        super().__init__(f"{self.what} ({self.file})")


# --------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------


def read_config(checkpoint_dir: str | Path) -> dict:
    """The parsed config.json of a checkpoint directory."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointError("checkpoint directory not found", root)
    path = root / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError("missing config.json", path)
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot parse config.json: {e}", path) from None
    if not isinstance(config, dict):
        raise CheckpointError("config.json is not a JSON object", path)
    return config


def model_type(config: dict) -> str | None:
    return config.get("model_type")


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def _shard_files(root: Path) -> tuple[list[Path], dict[str, str] | None, Path]:
    """(shard paths, index weight_map or None, the file to name when a tensor is missing)."""
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"invalid safetensors index: {e}", index) from None
        shards = [root / name for name in sorted(set(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"missing shard '{shard.name}' listed in {INDEX_FILE}", shard)
        return shards, weight_map, index
    if (root / SINGLE_FILE).is_file():
        return [root / SINGLE_FILE], None, root / SINGLE_FILE
    shards = sorted(root.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE}", root)
    return shards, None, root


def _open_shard(stack: ExitStack, path: Path):
    try:
        return stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
    except Exception as e:  # safetensors raises its own error type for corrupt headers; OSError for I/O
        raise CheckpointError(f"cannot read safetensors file: {e}", path) from None


class _Shards:
    """Open shards: key -> (handle, path), with the index (if any) checked against the headers."""

    def __init__(self, stack: ExitStack, root: Path):
        files, weight_map, self.missing_file = _shard_files(root)
        self.where: dict[str, tuple[object, Path]] = {}
        for path in files:
            handle = _open_shard(stack, path)
            for key in handle.keys():
                if key in self.where:
                    raise CheckpointError(f"tensor '{key}' appears in two shards", path)
                self.where[key] = (handle, path)
        for key, name in (weight_map or {}).items():
            if key not in self.where or self.where[key][1].name != name:
                raise CheckpointError(f"tensor '{key}' listed in {INDEX_FILE} is not in the shard", root / name)

    def shape(self, key: str) -> tuple[int, ...]:
        handle, _ = self.where[key]
        return tuple(handle.get_slice(key).get_shape())

    def load(self, key: str, dtype: torch.dtype, device) -> torch.Tensor:
        handle, path = self.where[key]
        try:
            t = handle.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"cannot read tensor '{key}': {e}", path) from None
        if not t.is_floating_point():
            raise CheckpointError(f"tensor '{key}' has dtype {t.dtype}, expected floating point", path)
        return t.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Name mapping and loading
# --------------------------------------------------------------------------------------------


def _strip_prefix(key: str) -> tuple[str, str]:
    for prefix in TEXT_PREFIXES:
        if key.startswith(prefix):
            return prefix, key[len(prefix):]
    return "", key


def _fmt(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def load_weights(checkpoint_dir: str | Path, expected: dict[str, tuple[int, ...]], *,
                 dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                 ignore: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Read every tensor in `expected` (model names -> shapes) from the checkpoint.

    Checkpoint names map to model names by dropping `model.language_model.` or `model.`; per-expert
    weights are stacked into `<...>.experts.gate_up_proj` / `down_proj` when the model expects those.
    Keys starting with an `ignore` prefix (raw or mapped) are skipped. Missing, unexpected and
    mis-shaped tensors raise CheckpointError before anything large is read.
    """
    root = Path(checkpoint_dir)
    with ExitStack() as stack:
        shards = _Shards(stack, root)
        direct, experts, prefixes = _plan(shards, expected, ignore)
        text_prefix = prefixes.most_common(1)[0][0] if prefixes else "model."
        _check_complete(shards, expected, direct, experts, text_prefix)
        out = {name: shards.load(key, dtype, device) for name, key in direct.items()}
        for name, parts in experts.items():
            out[name] = _stack_experts(shards, name, expected[name], parts, dtype, device)
        return out


def _plan(shards: _Shards, expected: dict, ignore: tuple[str, ...]):
    """Map checkpoint keys to model names: (direct {name: key}, per-expert {fused name: {(e, proj): key}})."""
    direct: dict[str, str] = {}
    experts: dict[str, dict[tuple[int, str], str]] = {}
    prefixes: Counter = Counter()
    for key in sorted(shards.where):
        prefix, name = _strip_prefix(key)
        if key.startswith(ignore) or name.startswith(ignore):
            continue
        if prefix:
            prefixes[prefix] += 1
        m = _PER_EXPERT.match(name)
        if name in expected:
            if name in direct:
                raise CheckpointError(f"tensor '{key}' duplicates '{direct[name]}'", shards.where[key][1])
            direct[name] = key
        elif m and f"{m['base']}.gate_up_proj" in expected:
            fused = f"{m['base']}.down_proj" if m["proj"] == "down_proj" else f"{m['base']}.gate_up_proj"
            experts.setdefault(fused, {})[(int(m["e"]), m["proj"])] = key
        else:
            raise CheckpointError(f"unexpected tensor '{key}'", shards.where[key][1])
    return direct, experts, prefixes


def _check_complete(shards: _Shards, expected: dict, direct: dict, experts: dict, text_prefix: str) -> None:
    for name, shape in expected.items():
        if name in direct:
            if name in experts:
                key = next(iter(experts[name].values()))
                raise CheckpointError(f"tensor '{key}' duplicates '{direct[name]}'", shards.where[key][1])
            got = shards.shape(direct[name])
            if got != tuple(shape):
                raise CheckpointError(f"tensor '{direct[name]}' has shape {_fmt(got)}, expected {_fmt(shape)}",
                                      shards.where[direct[name]][1])
        elif name in experts:
            for (e, proj), key in experts[name].items():
                want = _expert_shape(shape, proj)
                if e >= shape[0]:
                    raise CheckpointError(f"unexpected tensor '{key}' (only {shape[0]} experts)", shards.where[key][1])
                got = shards.shape(key)
                if got != want:
                    raise CheckpointError(f"tensor '{key}' has shape {_fmt(got)}, expected {_fmt(want)}",
                                          shards.where[key][1])
            projs = ("down_proj",) if name.endswith(".down_proj") else ("gate_proj", "up_proj")
            sample = next(iter(experts[name].values()))
            for e in range(shape[0]):
                for proj in projs:
                    if (e, proj) not in experts[name]:
                        key = _PER_EXPERT.sub(rf"\g<base>.{e}.{proj}.weight", sample)
                        raise CheckpointError(f"missing tensor '{key}'", shards.missing_file)
        else:
            key = name if name.startswith("lm_head.") else text_prefix + name
            raise CheckpointError(f"missing tensor '{key}'", shards.missing_file)


def _expert_shape(fused_shape: tuple[int, ...], proj: str) -> tuple[int, ...]:
    _, rows, cols = fused_shape
    return (rows // 2, cols) if proj in ("gate_proj", "up_proj") else (rows, cols)


def _stack_experts(shards: _Shards, name: str, shape, parts: dict, dtype, device) -> torch.Tensor:
    """Per-expert [I, H] gate/up (or [H, I] down) matrices -> [E, 2I, H] (gate rows first) or [E, H, I]."""
    out = torch.empty(shape, dtype=dtype, device=device)
    half = shape[1] // 2
    for (e, proj), key in parts.items():
        if proj == "gate_proj":
            out[e, :half] = shards.load(key, dtype, device)
        elif proj == "up_proj":
            out[e, half:] = shards.load(key, dtype, device)
        else:
            out[e] = shards.load(key, dtype, device)
    return out
