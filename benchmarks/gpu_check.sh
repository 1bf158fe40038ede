#!/usr/bin/env bash
# The GPU check, in one call: needs only PyTorch + torchvision and this repository's src/.
# Usage: bash benchmarks/gpu_check.sh [--quick] [--device cuda|cpu] [--tiny] [--json FILE] [--nproc N]
#   --nproc N: only the DDP scaling check (training images/s at 1 and N processes; 0 = every GPU).
#   --quick: < 8 minutes on one GPU; --device cpu --tiny: a seconds-long smoke test (CI runs it).
# Prints RESULT lines and a markdown table for the README's performance table (name the GPU there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/gpu_check.py "$@"
