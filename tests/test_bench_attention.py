"""scripts/bench_attention.py's CPU-side part: the launch override it times exported launches with."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_attention  # noqa: E402
from tq_kernels import tq4_sdpa as mod  # noqa: E402


def qwen_128k_decode_config():
    return mod._config(8, 131072, 1, 2, 256, torch.device("cpu"))  # 8 query rows, 2 KV heads, D 256


def test_launch_override_layers_over_the_launcher_and_restores_it():
    assert mod.CONFIG_OVERRIDE is None
    shipped = qwen_128k_decode_config()
    assert shipped["pdl"] and shipped["nsplit"] == 264
    with bench_attention.launch_override(pdl=False):  # the exported column's launches
        cfg = qwen_128k_decode_config()
        assert not cfg["pdl"] and cfg["nsplit"] == 264
        with bench_attention.launch_override(nsplit=256):  # overrides stack
            cfg = qwen_128k_decode_config()
            assert not cfg["pdl"] and cfg["nsplit"] == 256
        assert qwen_128k_decode_config()["nsplit"] == 264
    assert mod.CONFIG_OVERRIDE is None and qwen_128k_decode_config() == shipped


def test_launch_override_is_restored_when_the_timed_call_fails():
    with pytest.raises(RuntimeError, match="out of resources"):
        with bench_attention.launch_override(warps=64):
            raise RuntimeError("out of resources")
    assert mod.CONFIG_OVERRIDE is None
