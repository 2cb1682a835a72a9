#!/usr/bin/env bash
# The prepared GPU check (see scripts/gpu_check.py): installs the project if needed, runs the check,
# and keeps its output in ${OUT:-.}/gpu_check.txt. One command, under 8 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import cofitune_ray, ray, transformers, lm_eval" 2>/dev/null; then
  python -m pip install --quiet -e ".[lmeval]"
fi
python scripts/gpu_check.py "$@" 2>&1 | tee "${OUT:-.}/gpu_check.txt"
