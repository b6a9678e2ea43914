#!/usr/bin/env bash
# The device check: one call on a lent GPU machine, ≤ 9 minutes (docs/what-ships.md).
#   here:   make device-wheels                      (what that machine lacks, as wheels in .whl/, ≈ 16 MiB)
#   there:  bash bench/device_check.sh               (device tool: carry [".whl"], timeout_s 560)
# Writes into $OUT (or ./device-check-out): gpu.txt, weight_change.json, gpu_check.json and each step's log.
# Steps: 1. the portable noise scheme's bits on CUDA against the CPU (200 draws) and the device's θ₀ + Δ against the
# writer's arithmetic; 2. the weight change per entry on a random-weight model with Qwen2.5-1.5B's config in bfloat16,
# 0.3's host path against this version's device path; 3. bench/gpu_check.py: a bfloat16 `corpmerge run` on CUDA with its
# shipped check, written = scored bits, CPU vs CUDA agreement, peak device bytes per parameter.
# DEVICE=cpu runs the same steps on the CPU with a tiny model (the test suite's dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-check-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DEVICE" = cuda ]; then
  $PY -m pip install -q --no-index --no-deps .whl/*.whl >"$OUT/install.log" 2>&1 || { echo "installing .whl failed (make device-wheels first)"; tail -3 "$OUT/install.log"; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  MODELS=qwen1.5b BITS=200 ENTRIES=3 ONLY=
else
  MODELS=tiny BITS=3 ENTRIES=1 ONLY=--tiny-only
fi
status=0
timeout 240 $PY bench/weight_change.py --device "$DEVICE" --bits $BITS --entries $ENTRIES --models $MODELS --json "$OUT/weight_change.json" \
  >"$OUT/weight_change.log" 2>&1 || { status=1; echo "weight_change failed:"; }
tail -4 "$OUT/weight_change.log"
timeout 300 $PY bench/gpu_check.py --device "$DEVICE" --entries 4 $ONLY >"$OUT/gpu_check.log" 2>&1 || { status=1; echo "gpu_check failed:"; }
tail -25 "$OUT/gpu_check.log"
exit $status
