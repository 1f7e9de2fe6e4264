#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): speed and memory of the CUDA paths, side by side in
# one run, in <= 8 minutes on one H100/H200. `--cpu-smoke` runs the same code on tiny shapes on
# the CPU in under a minute (tests/test_gpu_check.py runs it, so the script cannot rot).
#
#   bench/gpu_check.sh [--cpu-smoke]
#
# Python: $PYTHON if set, else the project's .venv, else python3 (a GPU machine's own torch; the
# check needs diffusers and torchvision besides, and none of zarr/submitit).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi
missing=$("$py" - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "torchvision", "diffusers", "yaml") if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  echo "gpu_check: $py lacks: $missing (install them, or carry their wheels to the GPU machine)" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout 600 "$py" bench/gpu_check.py "$@"
