#!/usr/bin/env bash
# CI artifact pipeline on a GPU host: export the tiny model with and without --turboquant, build
# tq-runner, run it, check its greedy tokens against Python eager, and leave OUTDIR with the
# artifacts, logs and manifest.json (file sizes, sha256, versions, GPU, commit, pass/fail per check).
#
#     bash scripts/ci_artifact.sh OUTDIR [tq-export flags...]
#
# Extra flags go to both tq-export runs (e.g. --gemm-configs 1). The manifest names the commit
# $TQ_COMMIT when set (a copied tree's git metadata can be stale or missing), else git's HEAD.
#
# Offline GPU host: carry the wheelhouse (scripts assume ./.wheelhouse, see README) or have torch,
# executorch and triton installed. Each check is time-boxed; later checks run even when one fails
# (those that need its output fail too). Exit status: 0 when every check passed, 1 otherwise.
set -uo pipefail
out=${1:?usage: ci_artifact.sh OUTDIR [tq-export flags...]}
shift
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
if [[ -f .wheelhouse/install.sh ]]; then source .wheelhouse/install.sh >/dev/null; fi
source scripts/dev_env.sh
export PYTHONUNBUFFERED=1
checks="$out/logs/checks.tsv"
: > "$checks"

check() {  # check NAME SECONDS CMD... : run, log to logs/NAME.log, record pass/fail and seconds
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$out/logs/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$checks"
  printf '%-20s %s in %ss\n' "$name" "$([[ $rc -eq 0 ]] && echo pass || echo "FAIL (exit $rc)")" "$((SECONDS - t0))"
}

# The two exports and the runner build are independent: run them side by side (an export is
# mostly single-threaded Python and compiler subprocesses; a GPU host has the cores).
for variant in tq bf16; do
  flag=$([[ $variant == tq ]] && echo --turboquant)
  check "export_$variant" 600 python3 -m tq_export --model qwen3.5-moe --tiny $flag -o "$out/$variant" "$@" &
done
check runner_build 300 bash -c "cmake -S . -B build/runner -DCMAKE_BUILD_TYPE=Release -DTQ_RUNNER_TESTS=OFF \
  && cmake --build build/runner -j\$(nproc)"
wait
for variant in tq bf16; do
  flag=$([[ $variant == tq ]] && echo --turboquant)
  check "runner_vs_eager_$variant" 300 python3 scripts/runner_vs_eager.py --runner build/runner/tq-runner \
    --artifacts "$out/$variant" $flag --json "$out/logs/runner_vs_eager_$variant.json"
done

python3 - "$out" <<'PY'
import hashlib, json, subprocess, sys
from pathlib import Path

out = Path(sys.argv[1])
def version(mod):
    try:
        return __import__(mod).__version__
    except Exception:
        return None
import torch
try:
    from importlib.metadata import version as dist_version
    executorch = dist_version("executorch")
except Exception:
    executorch = None
def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
files = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
         for p in sorted(out.glob("*/*")) if p.is_file() and p.parent.name != "logs"}
checks = {}
for line in (out / "logs" / "checks.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    checks[name] = {"pass": rc == "0", "exit": int(rc), "seconds": int(secs)}
import os
commit = os.environ.get("TQ_COMMIT")
if not commit:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except Exception:
        commit = None
manifest = {
    "commit": commit,
    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "versions": {"torch": torch.__version__, "executorch": executorch, "triton": version("triton")},
    "files": files,
    "checks": checks,
    "pass": all(c["pass"] for c in checks.values()),
}
(out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
print(f"manifest: {out / 'manifest.json'}  ({sum(c['pass'] for c in checks.values())}/{len(checks)} checks passed)")
PY
awk -F'\t' '$2 != 0 {bad = 1} END {exit bad}' "$checks"
