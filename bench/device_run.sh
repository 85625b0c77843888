#!/usr/bin/env bash
# There (the device tool's `run`, carrying .whl and .gl from bench/device_kit.sh): install what
# the image lacks, run bench/device_check.sh within the call's limit and leave its figures in
# $OUT (device_check.json is rewritten after every step, so a cut-short run keeps them).
#   bash bench/device_run.sh [SECONDS=540] [device_check options ...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device_check_out}"
LIMIT="${1:-540}"
mkdir -p "$OUT"
rm -rf /tmp/device_check   # a warm machine's earlier run: no stale figures
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$egl" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"; fi
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$@" .whl/*.whl; }
if [ -d .whl ]; then   # into the image's environment, else beside it on PYTHONPATH
  pipi 2>/dev/null || { pipi --upgrade --target /tmp/site && export PYTHONPATH=/tmp/site; }
fi
export PYTHONUNBUFFERED=1 PYTHON=python3
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, torch, torchvision, smplx, pyrender; print(sys.version.split()[0],
torch.__version__, torchvision.__version__, torch.version.cuda, torch.cuda.is_available()
and torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/versions.txt"
timeout -k 10 "$LIMIT" bash bench/device_check.sh --out /tmp/device_check "${@:2}" 2>&1 \
  | tee "$OUT/device_check.log"
rc=${PIPESTATUS[0]}
cp /tmp/device_check/device_check.json "$OUT/" 2>/dev/null
tar -czf "$OUT/step_logs.tar.gz" -C /tmp/device_check logs_steps 2>/dev/null
exit "$rc"
