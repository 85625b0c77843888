#!/usr/bin/env bash
# The whole CUDA path in one command (< 8 min on one GPU); see bench/device_check.py.
#   bash bench/device_check.sh [--out DIR] [--quick] [--compile] [--only STEP,...]
# Without CUDA the CUDA steps are reported as skipped; --quick is a toy-size dry run on any device.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" bench/device_check.py "$@"
