"""Regenerate tq_export/data/codebooks.json: Lloyd-Max codebooks for the exact coordinate law.

    python scripts/make_codebooks.py

The shipped tables let an export run without scipy; tests/test_turboquant.py re-solves them and
checks they still match.
"""

import json
from pathlib import Path

from tq_export.turboquant import CODEBOOK_BITS, SHIPPED_DIMS, solve_codebook

out = Path(__file__).resolve().parents[1] / "tq_export" / "data" / "codebooks.json"
tables = {str(d): {str(b): solve_codebook(d, b) for b in CODEBOOK_BITS} for d in SHIPPED_DIMS}
out.write_text(json.dumps(tables, indent=1) + "\n")
for d in SHIPPED_DIMS:
    print(f"d={d:4d}  " + "  ".join(f"{b}b D_mse={tables[str(d)][str(b)]['mse']:.6f}" for b in CODEBOOK_BITS))
print(f"wrote {out}")
