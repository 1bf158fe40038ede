#!/usr/bin/env bash
# Run every benchmark in full mode (or pass --quick), one after another, and keep the outputs.
# Usage: benchmarks/run_all.sh [--quick] [--device cpu|cuda]
# Outputs: benchmarks/results/<name>.txt (console, with the markdown table) and <name>.json.
# Benchmarks are timing measurements, not tests: run them on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${BENCH_OUT:-benchmarks/results}
mkdir -p "$OUT"
for name in bench_extract bench_inject bench_inject_scaling bench_memory bench_cache bench_pipeline bench_families; do
    echo "== $name $*"
    "$PY" "benchmarks/$name.py" "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt"
done
if [ "${BENCH_SCALING:-0}" = 1 ]; then "$PY" benchmarks/bench_scaling.py "$@" --json "$OUT/bench_scaling.json" 2>&1 | tee "$OUT/bench_scaling.txt"; fi  # 2-process DDP and Dask validate vs one process, about 30 min on 2 CPUs with 3 seeds: opt in
if [ "${BENCH_PROTOCOL:-0}" = 1 ]; then "$PY" benchmarks/bench_protocol.py --out "$OUT/bench_protocol.md" 2>&1 | tee "$OUT/bench_protocol.txt"; fi  # CUB-size protocol check, about 16 min on 2 CPUs: opt in
echo "== tables"
for name in bench_extract bench_inject bench_inject_scaling bench_memory bench_cache bench_pipeline bench_families; do
    sed -n '/^### /,$p' "$OUT/$name.txt"
    echo
done
