#!/usr/bin/env bash
# One GPU-host session of acceptance checks, in priority order (each step time-boxed, later steps run
# even when earlier ones fail). Run from the repo root with the wheelhouse carried:
#     bash scripts/gpu_acceptance.sh OUTDIR
# Logs and JSON land in OUTDIR; a summary table is printed last.
set -uo pipefail
out=${1:?usage: gpu_acceptance.sh OUTDIR}
mkdir -p "$out"
source .wheelhouse/install.sh >/dev/null
source scripts/dev_env.sh
export PYTHONUNBUFFERED=1
commit=${TQ_COMMIT:-unknown}
declare -A status
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  status[$name]="rc=$rc $((SECONDS - t0))s"
  echo "[$name] rc=$rc in $((SECONDS - t0))s"; tail -n 4 "$out/$name.log"
}
art=/tmp/tq-art
step export_tq 330 python3 -m tq_export --model qwen3.5-moe --tiny --turboquant -o $art/tq --debug
cp $art/tq/export_report.json "$out/export_report_tq.json" 2>/dev/null
step runner_build 90 bash -c "cmake -S . -B build/runner -DCMAKE_BUILD_TYPE=Release -DTQ_RUNNER_TESTS=OFF >/dev/null && cmake --build build/runner -j16 2>&1 | tail -3"
step runner_vs_eager_tq 60 python3 scripts/runner_vs_eager.py --runner build/runner/tq-runner --artifacts $art/tq --turboquant --json "$out/runner_vs_eager_tq.json"
step runner_stats 40 bash -c "build/runner/tq-runner --model $art/tq/model.pte --data $art/tq/aoti_cuda_blob.ptd --prompt-tokens 1,2,3,4,5,6,7 --max-new-tokens 1000 --temperature 0 --warmup 1 --iters 3"
step export_bf16 200 python3 -m tq_export --model qwen3.5-moe --tiny -o $art/bf16
step runner_vs_eager_bf16 60 python3 scripts/runner_vs_eager.py --runner build/runner/tq-runner --artifacts $art/bf16 --json "$out/runner_vs_eager_bf16.json"
echo; echo "== summary"; for k in "${!status[@]}"; do printf '%-22s %s\n' "$k" "${status[$k]}"; done
