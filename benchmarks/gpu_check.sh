#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py lists the steps, their sizes and time limits):
#   benchmarks/gpu_check.sh                 on a machine with a CUDA GPU: under 10 minutes on an H100/H200
#   benchmarks/gpu_check.sh --device cpu    the dry run at small sizes, on any machine
# Needs torch and torchvision. What else the steps import (Ray, Optuna, pytest, ...) is installed, if missing, from
# .whl/ (benchmarks/gpu_wheels.sh makes it) with no network, into a virtual environment over the system's packages;
# the code runs from this checkout (PYTHONPATH), no install of the project.
set -uo pipefail
set -f  # no globbing: requirements such as ray[train,tune] stay words
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

missing() {  # the requirements whose modules do not import
  local out=() pair
  for pair in "ray:ray[train,tune]==2.60.0" "optuna:optuna>=4" "safetensors:safetensors>=0.4" "pytest:pytest>=8" \
              "pydantic:pydantic>=2.6" \
              "yaml:pyyaml>=6" "filelock:filelock>=3.12"; do
    "$1" -c "import ${pair%%:*}" 2>/dev/null || out+=("${pair#*:}")
  done
  echo "${out[@]:-}"
}

need=$(missing "$PY")
if [[ -n "$need" ]]; then
  if [[ ! -d .whl ]]; then
    echo "gpu_check: missing $need and no .whl/ to install them from (run benchmarks/gpu_wheels.sh where the index is reachable)" >&2
  else
    venv="${ALIGNMIXUP_GPU_VENV:-${TMPDIR:-/tmp}/alignmixup-gpu-venv}"
    # over the system's packages (torch, numpy, pandas, pyarrow stay theirs); without pip if ensurepip is absent
    "$PY" -m venv --system-site-packages "$venv" 2>/dev/null || "$PY" -m venv --system-site-packages --without-pip "$venv"
    pip=("$venv/bin/python" -m pip)
    "$venv/bin/python" -m pip --version >/dev/null 2>&1 || pip=("$PY" -m pip --python "$venv/bin/python")
    for req in $need; do  # one at a time: a requirement that cannot be met leaves the others installed
      "${pip[@]}" install --quiet --no-index --find-links .whl "$req" \
        || echo "gpu_check: could not install $req from .whl (the steps that need it will fail)" >&2
    done
    PY="$venv/bin/python"
  fi
fi
exec "$PY" -m benchmarks.gpu_check "$@"
