#!/usr/bin/env bash
# Checks that tq-runner provides every aoti_torch_* symbol that AOTInductor model .so's import.
#
#   runner/check_shims.sh SO_FILE...
#
# The .so files come from a program with:  tq-runner --extract-so DIR --model model.pte
# tq-runner is taken from $TQ_RUNNER, else build/runner/tq-runner. The provided set is read from the
# binary itself (nm -D --defined-only), so this list can never drift from the code.
# Exit 0 when all imports are met; 1 and one "missing: <symbol>" line per symbol otherwise.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 SO_FILE..." >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
runner="${TQ_RUNNER:-$here/../build/runner/tq-runner}"
if [[ ! -x "$runner" ]]; then
  echo "error: tq-runner not found at $runner (set TQ_RUNNER)" >&2
  exit 2
fi
command -v nm >/dev/null || { echo "error: nm not found (binutils)" >&2; exit 2; }

provided="$(nm -D --defined-only "$runner" | awk '{print $NF}' | grep '^aoti_torch_' | sort -u)"
status=0
for so in "$@"; do
  if [[ ! -f "$so" ]]; then
    echo "error: no such file: $so" >&2
    exit 2
  fi
  needed="$(nm -D --undefined-only "$so" | awk '{print $NF}' | sed 's/@.*//' | grep '^aoti_torch_' | sort -u || true)"
  missing="$(comm -23 <(printf '%s\n' "$needed" | sed '/^$/d') <(printf '%s\n' "$provided"))"
  count=$(printf '%s\n' "$needed" | sed '/^$/d' | wc -l)
  if [[ -n "$missing" ]]; then
    echo "$so: imports $count aoti_torch_* symbols, tq-runner lacks:"
    printf 'missing: %s\n' $missing
    status=1
  else
    echo "$so: all $count aoti_torch_* imports provided by tq-runner"
  fi
done
exit $status
