#!/usr/bin/env bash
# Prepare .whl/ (gitignored) for benchmarks/gpu_check.sh: Ray 2.60.0 for CPython 3.12 without its Java jar, and
# the small wheels a GPU machine with torch but no Ray may lack (benchmarks/gpu_wheels.py says what and why).
# Run here, where the package index is reachable; pass .whl to the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.gpu_wheels "$@"
