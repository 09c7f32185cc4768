"""Shared by the benchmark scripts: which commit a result belongs to, and appending a results table."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def commit_id(given: str | None = None) -> str:
    """`given`, else this tree's short HEAD; "unknown" for a copy without .git (e.g. on a GPU host)."""
    if given:
        return given
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def publish(table: str, out: str | Path, json_path: str | Path | None, payload: dict) -> None:
    """Print the markdown table, append it to `out`, and write `payload` as JSON when asked."""
    print(table)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(table)
    if json_path:
        Path(json_path).write_text(json.dumps(payload, indent=1))
