#!/usr/bin/env bash
# GPU smoke check (issue #7 point 4): on a machine with a CUDA GPU, run the tests marked `gpu` and the
# graph bench on CUDA, all within 8 minutes. Run it from the repository root:
#
#     bash bench/gpu_smoke.sh
#
# It uses $PYTHON when set (an interpreter that already has a CUDA torch and the project's other
# packages, e.g. a GPU image's python with the repo on PYTHONPATH), else .venv when it exists, else
# creates .venv with the project's one pip command (needs network); the 8-minute limit covers that
# too, so prepare .venv beforehand where pip is slow.
# Without a CUDA GPU (no nvidia-smi, or it lists no device) it prints one line and exits 0 without
# running anything: there is nothing to check there, and a job that runs it everywhere stays green.
# A GPU that the venv's torch cannot use is an error (exit 1). The exit status is otherwise the first
# failing step's; 124 when the 8 minutes run out.
set -euo pipefail

if [[ -z "${GPU_SMOKE_TIMED:-}" ]]; then
    GPU_SMOKE_TIMED=1 exec timeout 480 bash "$0" "$@"
fi

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu_smoke: no CUDA GPU on this machine (nvidia-smi lists none); nothing run"
    exit 0
fi
nvidia-smi

PY=${PYTHON:-.venv/bin/python}
if [[ -z "${PYTHON:-}" && ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q -r requirements.txt -e .
fi
if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_smoke: nvidia-smi sees a GPU but $PY's torch cannot use it (a CPU-only build, or a driver too old for it)" >&2
    exit 1
fi
"$PY" -c 'import torch; print("gpu_smoke: torch", torch.__version__, "on", torch.cuda.get_device_name())'

# Only the GPU tests' module is collected: collecting the whole suite would import the serving and UI
# stacks (ray, gradio), which a bare GPU image need not have.
"$PY" -m pytest -q -m gpu tests/test_gpu.py
timeout 300 "$PY" bench/graph.py --device cuda --clips 16
