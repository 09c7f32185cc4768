"""scripts/bench_e2e.py's CPU-side parts: bench config, runner-stats parsing, table and plot."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_e2e  # noqa: E402

RESULTS = ROOT / "results" / "ci_artifact"


def test_bench_overrides_keep_the_real_layer_pattern_and_shapes():
    from tq_export.tiny import tiny_text_config

    cfg = tiny_text_config(**bench_e2e.bench_overrides(8))
    assert cfg.layer_types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + [
        "full_attention"]
    assert (cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size) == (2048, 256, 8, 512)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (16, 2, 256)
    for bad in (0, 3, 6):
        with pytest.raises(ValueError, match="multiple of 4"):
            bench_e2e.bench_overrides(bad)


# tq-runner's stats block, as printed on the GPU host (results/ci_artifact/runner_vs_eager_*.json).
RUNNER_STDERR = """device          NVIDIA H100 80GB HBM3
load                 136.2 ms   (open 124.8, prefill 6.4, decode 5.1)
prompt eval          23.98 ms        7 tokens      291.92 tok/s
eval                  0.91 ms/token  31 tokens     1097.64 tok/s
gpu memory           130.0 MiB peak in use (weights 2.8, after prefill load 4.0, after decode load 4.0)
shim memory            0.2 MiB peak activations (0.0 live)
"""


def test_parse_stats_reads_the_runners_stats_lines():
    stats = bench_e2e.parse_stats(RUNNER_STDERR)
    assert stats == {"prompt_ms": 23.98, "prompt_tok_s": 291.92, "decode_ms_per_token": 0.91,
                     "decode_tok_s": 1097.64, "decode_steps": 31.0, "peak_gpu_mib": 130.0}


def test_parse_stats_reads_the_committed_runner_logs():
    for variant in ("tq", "bf16"):
        stderr = json.loads((RESULTS / f"runner_vs_eager_{variant}.json").read_text())["runner_stderr_tail"]
        assert set(bench_e2e.parse_stats(stderr)) == {"prompt_ms", "prompt_tok_s", "decode_ms_per_token",
                                                      "decode_tok_s", "decode_steps", "peak_gpu_mib"}


def test_table_and_plot(tmp_path):
    kv = json.loads((RESULTS / "export_report_tq.json").read_text())["kv_cache"]
    fake = {"prompt": {"512": {"prompt_tok_s": 1000.0, "peak_gpu_mib": 10.0}},
            "decode": {str(c): {"decode_tok_s": 100.0 - c / 1024, "peak_gpu_mib": 10.0} for c in (1024, 8192)}}
    results = {"bf16": {**fake, "kv_cache": kv}, "tq": {**fake, "kv_cache": kv}}
    meta = {"date": "2026-01-01", "gpu": "GPU", "commit": "abc", "layers": 4, "runs": 3}
    text = bench_e2e.table(results, meta)
    rows = [ln for ln in text.splitlines() if ln.startswith("| decode at") or ln.startswith("| prompt eval")]
    assert [r.split(" | ")[0] for r in rows] == ["| prompt eval 512", "| decode at 1024", "| decode at 8192"]
    assert all(r.endswith("| 3.94x |") and "| 1.00x |" in r for r in rows)  # KV ratio at D=256; same rates
    bench_e2e.plot(results, tmp_path / "e2e.png", "test")
    assert (tmp_path / "e2e.png").stat().st_size > 10_000
