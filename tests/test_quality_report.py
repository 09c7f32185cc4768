"""The quality report runs end to end at reduced size (the committed report is full size)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quality_report_small(tmp_path):
    spec = importlib.util.spec_from_file_location("quality_report", ROOT / "scripts" / "quality_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.main(["--small", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "quality.md").read_text()
    assert (tmp_path / "quality.png").stat().st_size > 10_000
    for setting in ("K4V4", "K4V2", "K3V3"):
        assert text.count(f"| {setting} |") == 3  # two key kinds + the tiny model
    # 4-bit distortion rows sit at the optimum even at reduced size.
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| 256 | 4 |")]
    measured, optimum = float(rows[0][3]), float(rows[0][4])
    assert abs(measured / optimum - 1) < 0.03
