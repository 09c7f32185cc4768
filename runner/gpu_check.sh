#!/usr/bin/env bash
# GPU acceptance check for tq-runner. Run on the GPU host from the repository root:
#
#   runner/gpu_check.sh PTE_DIR
#
# PTE_DIR holds tq-export's output: model.pte, aoti_cuda_blob.ptd and (optionally) tokenizer.json.
# Environment: executorch_DIR (set by the wheelhouse's install.sh) or a python that imports executorch;
# PROMPT (default "The capital of France is"), NEW_TOKENS (default 32), BUILD_DIR (default
# build/runner-gpu), TOKENIZER (default PTE_DIR/tokenizer.json), SANITIZER=1 to add a compute-sanitizer
# memcheck run (slow).
#
# Steps: build; ctest (its GPU parts run here: shim tests on the device and the synthetic CudaBackend
# program, which must generate exact ids with decode sharing prefill's weights and cache); check the
# model's .so imports against our shims; --info; greedy generation (text, stats, repeatability);
# memory: loading decode must add < 5% of the weight bytes, and SOAK_STEPS (default 1000) decode
# steps must not grow it; seeded sampling repeatability; failure modes (wrong .ptd, long prompt,
# bad token ids) must exit 2 with one error line. Logs go to BUILD_DIR/gpu-check/. Exit status: number of failed checks (0 = all passed).
set -uo pipefail

if [[ $# -lt 1 || ! -d "$1" ]]; then
  echo "usage: $0 PTE_DIR" >&2
  exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pte_dir="$(cd "$1" && pwd)"
model="$pte_dir/model.pte"
data="$pte_dir/aoti_cuda_blob.ptd"
tokenizer="${TOKENIZER:-$pte_dir/tokenizer.json}"
prompt="${PROMPT:-The capital of France is}"
new_tokens="${NEW_TOKENS:-32}"
build="${BUILD_DIR:-$repo/build/runner-gpu}"
log="$build/gpu-check"
runner="$build/tq-runner"
python="${PYTHON:-python3}"
failures=0

pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; failures=$((failures + 1)); }
section() { printf '\n== %s\n' "$1"; }

# Expects exit code $1 and exactly one "error: " line on stderr from the rest of the command line.
expect_error() {
  local want=$1 name=$2
  shift 2
  "$@" >"$log/err.out" 2>"$log/err.txt"
  local rc=$?
  local lines
  lines=$(grep -c . "$log/err.txt" || true)
  if [[ $rc -eq $want && $lines -eq 1 ]] && grep -q '^error: ' "$log/err.txt"; then
    pass "$name: exit $rc, $(cat "$log/err.txt")"
  else
    fail "$name: exit $rc (want $want), stderr: $(head -c 400 "$log/err.txt")"
  fi
}

mkdir -p "$log"
section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || fail "nvidia-smi"
[[ -f "$model" ]] || { fail "no $model"; exit 1; }
[[ -f "$data" ]] || { fail "no $data"; exit 1; }

section "build"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release ${executorch_DIR:+-Dexecutorch_DIR="$executorch_DIR"} \
  >"$log/configure.txt" 2>&1 && cmake --build "$build" -j"$(nproc)" >"$log/build.txt" 2>&1
if [[ $? -eq 0 && -x "$runner" ]]; then pass "build ($build)"; else fail "build: see $log/build.txt"; tail -20 "$log/build.txt"; exit 1; fi

section "ctest (GPU parts included)"
if ctest --test-dir "$build" --output-on-failure >"$log/ctest.txt" 2>&1; then pass "ctest"; else fail "ctest: see $log/ctest.txt"; fi
grep -E "Test +#|tests passed|Skipped|GPU checks" "$log/ctest.txt"
grep -q "synthetic_run .*Passed" "$log/ctest.txt" && pass "synthetic CudaBackend program ran on the GPU" \
  || fail "synthetic_run did not pass on the GPU (see $log/ctest.txt)"

section "shims needed by the model"
rm -rf "$log/so" && mkdir -p "$log/so"
if "$runner" --extract-so "$log/so" --model "$model" >"$log/so.txt" 2>&1; then
  for so in "$log"/so/*.so; do
    nm -D --undefined-only "$so" | awk '{print $NF}' | sed 's/@.*//' | grep '^aoti_torch_' | sort -u >"$so.imports"
    echo "$(basename "$so"): $(wc -l <"$so.imports") aoti_torch_* imports (list in $so.imports)"
  done
  if TQ_RUNNER="$runner" "$repo/runner/check_shims.sh" "$log"/so/*.so; then pass "all shim imports provided"; else fail "missing shims (above)"; fi
else
  fail "--extract-so: $(cat "$log/so.txt")"
fi

section "metadata"
if "$runner" --model "$model" --data "$data" --info | tee "$log/info.txt"; then pass "--info"; else fail "--info"; fi
max_seq_len=$(awk '/^max_seq_len/ {print $2}' "$log/info.txt")
vocab=$(awk '/^vocab_size/ {print $2}' "$log/info.txt")

tok_args=()
if [[ -f "$tokenizer" ]]; then
  tok_args=(--tokenizer "$tokenizer" --prompt "$prompt")
else
  echo "no tokenizer at $tokenizer: using --prompt-tokens"
  tok_args=(--prompt-tokens "1,2,3,4,5,6,7,8")
fi

section "greedy generation"
run_gen() {  # $1 = tag; rest = extra flags
  local tag=$1
  shift
  "$runner" --model "$model" --data "$data" "${tok_args[@]}" --max-new-tokens "$new_tokens" --print-token-ids "$@" \
    >"$log/$tag.out" 2>"$log/$tag.err"
}
run_gen greedy --warmup 1 --iters 3
rc=$?
cat "$log/greedy.out" "$log/greedy.err"
if [[ $rc -eq 0 ]]; then pass "greedy generation exits 0"; else fail "greedy generation: exit $rc"; fi
ids1=$(grep '^token ids:' "$log/greedy.out")
[[ -n "$ids1" && "$ids1" != "token ids:" ]] && pass "tokens generated" || fail "no tokens generated"

section "memory: decode shares prefill's weights"
read -r base after_prefill after_decode peak weights < <(sed -n 's/^mem-bytes base=\([0-9]*\) after_prefill=\([0-9]*\) after_decode=\([0-9]*\) peak=\([0-9]*\) weights=\([0-9]*\) .*/\1 \2 \3 \4 \5/p' "$log/greedy.err")
if [[ -n "${weights:-}" && "$weights" -gt 0 ]]; then
  "$python" - "$base" "$after_prefill" "$after_decode" "$peak" "$weights" <<'EOF'
import sys
base, pre, dec, peak, w = map(int, sys.argv[1:])
g = 2**30
print(f"weights {w/g:.2f} GiB; after prefill load {(pre-base)/g:.2f} GiB; decode load added {(dec-pre)/g:.3f} GiB "
      f"= {100*(dec-pre)/w:.2f}% of weights; peak {(peak-base)/g:.2f} GiB")
sys.exit(0 if (dec - pre) < 0.05 * w else 1)
EOF
  if [[ $? -eq 0 ]]; then pass "decode load adds < 5% of weight bytes"; else fail "decode load adds >= 5% of weight bytes"; fi
else
  fail "no mem-bytes line in stats"
fi
grep '^sharing' "$log/greedy.err"
grep -q 'no own weights loaded' "$log/greedy.err" && pass "decode loaded no weights of its own" \
  || fail "decode loaded its own weights (see the sharing line)"

section "memory: ${SOAK_STEPS:=1000} decode steps"
if [[ -n "$max_seq_len" && "$max_seq_len" -gt $((SOAK_STEPS + 8)) ]]; then
  "$runner" --model "$model" --data "$data" --prompt-tokens 1,2,3,4,5,6,7,8 --max-new-tokens $((SOAK_STEPS + 1)) \
    --ignore-eos >"$log/soak.out" 2>"$log/soak.err"
  rc=$?
  grep -E '^(eval|gpu memory|shim memory)' "$log/soak.err"
  read -r first last sfirst slast < <(sed -n 's/^mem-bytes .*first_step=\(-\?[0-9]*\) last_step=\(-\?[0-9]*\) shim_first_step=\(-\?[0-9]*\) shim_last_step=\(-\?[0-9]*\).*/\1 \2 \3 \4/p' "$log/soak.err")
  steps=$(awk '/^eval/ {print $4}' "$log/soak.err")
  echo "after decode step 1: device ${first:-?} B in use, shim tensors ${sfirst:-?} B; after step ${steps:-?}: ${last:-?} B, ${slast:-?} B"
  if [[ $rc -eq 0 && "${steps:-0}" -ge "$SOAK_STEPS" && "${first:--1}" -ge 0 && "$last" -le "$first" \
        && "${sfirst:--1}" -ge 0 && "$slast" -le "$sfirst" ]]; then
    pass "no memory growth over $steps decode steps"
  else
    fail "memory grew or the run failed (exit $rc; see $log/soak.err)"
  fi
else
  echo "max_seq_len ${max_seq_len:-?} too short for $SOAK_STEPS steps: skipped"
fi

section "repeatability"
run_gen greedy2
[[ "$(grep '^token ids:' "$log/greedy2.out")" == "$ids1" ]] && pass "greedy ids repeat" || fail "greedy ids differ between runs"
run_gen sampled1 --temperature 0.8 --seed 1234
run_gen sampled2 --temperature 0.8 --seed 1234
s1=$(grep '^token ids:' "$log/sampled1.out"); s2=$(grep '^token ids:' "$log/sampled2.out")
[[ -n "$s1" && "$s1" == "$s2" ]] && pass "sampling with a seed repeats" || fail "sampled ids differ with the same seed"

section "long prompt (chunked prefill)"
if [[ -n "$max_seq_len" && "$max_seq_len" -gt 64 ]]; then
  n=$((max_seq_len / 2))
  ids=$(seq 0 $((n - 1)) | awk -v v="${vocab:-2}" '{ printf "%s%d", (NR > 1 ? "," : ""), 1 + $1 % (v - 1) }')
  "$runner" --model "$model" --data "$data" --prompt-tokens "$ids" --max-new-tokens 8 --print-token-ids \
    >"$log/long.out" 2>"$log/long.err" && pass "$n-token prompt" || fail "$n-token prompt: $(tail -1 "$log/long.err")"
  grep '^prompt eval' "$log/long.err"
fi

section "failure modes (exit 2, one line)"
expect_error 2 "prompt longer than max_seq_len" "$runner" --model "$model" --data "$data" \
  --prompt-tokens "$(yes 1 | head -n $((max_seq_len + 1)) | paste -sd,)"
expect_error 2 "token id out of range" "$runner" --model "$model" --data "$data" --prompt-tokens "1,$vocab"
expect_error 2 "missing .ptd" "$runner" --model "$model" --data "$log/nope.ptd" --prompt-tokens 1
if [[ -f "$build/runner_fixtures/aoti_cuda_blob.ptd" ]]; then
  expect_error 2 "wrong .ptd (same keys, tiny blobs)" "$runner" --model "$model" \
    --data "$build/runner_fixtures/aoti_cuda_blob.ptd" --prompt-tokens 1
fi
if [[ -f "$build/synthetic/aoti_cuda_blob.ptd" ]]; then
  expect_error 2 "wrong .ptd (another program)" "$runner" --model "$model" --data "$build/synthetic/aoti_cuda_blob.ptd" \
    --prompt-tokens 1
fi
head -c $(( $(stat -c %s "$model") / 2 )) "$model" >"$log/truncated.pte"
expect_error 2 "truncated .pte" "$runner" --model "$log/truncated.pte" --data "$data" --prompt-tokens 1
expect_error 3 "no CUDA device visible" env CUDA_VISIBLE_DEVICES= "$runner" --model "$model" --data "$data" --prompt-tokens 1

if [[ "${SANITIZER:-0}" == 1 ]] && command -v compute-sanitizer >/dev/null; then
  section "compute-sanitizer memcheck (4 tokens)"
  compute-sanitizer --tool memcheck --error-exitcode 9 "$runner" --model "$model" --data "$data" \
    --prompt-tokens 1,2,3 --max-new-tokens 4 >"$log/memcheck.txt" 2>&1 && pass "memcheck clean" \
    || fail "memcheck: see $log/memcheck.txt"
fi

section "summary"
if [[ $failures -eq 0 ]]; then echo "all GPU checks passed (logs in $log)"; else echo "$failures check(s) failed (logs in $log)"; fi
exit $failures
