#!/usr/bin/env bash
# The test suite, run again and again while other processes keep every core busy: `make test-stress`.
#
#   scripts/test-stress.sh [RUNS] [PYTEST ARGS ...]
#
# CI machines are shared and noisy, and so is a laptop: a test that passes only on an idle
# machine is a race, in the product or in the test. This runs the suite RUNS times (default 5)
# in a row under stress-ng (Debian's stress-ng, installed if missing; a plain busy loop per
# core when it cannot be), stops at the first red run, and prints one line per run. The load
# runs at the same priority as the tests, so they get about half the CPU they would alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-5}
shift || true
python=${PYTHON:-.venv/bin/python}
cores=$(nproc)

bash scripts/install-system-deps.sh stress-ng >/dev/null 2>&1 || true
load_pids=()
if command -v stress-ng >/dev/null 2>&1; then
    stress-ng --cpu "$cores" --cpu-method all --quiet &
    load_pids+=($!)
else
    for _ in $(seq "$cores"); do
        "$python" -c 'while True: pass' &
        load_pids+=($!)
    done
fi
trap 'kill "${load_pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
echo "test-stress: $runs runs of the suite beside $cores busy processes (${load_pids[*]})"

for run in $(seq "$runs"); do
    log=$(mktemp -t test-stress-XXXX.log)
    start=$(date +%s)
    if "$python" -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1; then
        echo "run $run/$runs green in $(($(date +%s) - start)) s: $(tail -n 1 "$log")"
    else
        echo "run $run/$runs RED in $(($(date +%s) - start)) s (log: $log):"
        grep -E '^(FAILED|ERROR) ' "$log" || tail -n 30 "$log"
        exit 1
    fi
done
echo "test-stress: $runs consecutive green runs under load"
