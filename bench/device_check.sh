#!/usr/bin/env bash
# The device check: one call on a lent GPU machine; its steps add up to ≤ 5 minutes (25 + 25 + 120 + 120 s limits), so a 15-minute GPU budget
# (machine start included) leaves room for a rerun (docs/what-ships.md).
#   here:   make device-wheels                      (what that machine lacks, as wheels in .whl/)
#   there:  bash bench/device_check.sh               (device tool: carry [".whl"], timeout_s 420)
# Writes into $OUT (or ./device-check-out): gpu.txt, versions.txt, weight_change.json, gpu_check.json and each step's log.
# Steps (each bounded; a step that cannot run says SKIP and why; a failed install stops the check):
#   0. install .whl/ (no index), versions of torch, triton, vllm, ray;
#   1. bench/weight_change.py: the fused kernel's bits on CUDA = the CPU kernel's for many (seed, name, dtype, window,
#      seeds), the draw's bits, scored = written; the weight change per entry at Qwen2.5-1.5B's shapes (random bf16
#      weights, nothing downloaded): torch-ops path vs fused kernel vs a device-to-device copy, peak device bytes;
#   2. bench/gpu_check.py: a bfloat16 `corpmerge run` on CUDA with its shipped check, written = scored bits, CPU vs
#      CUDA agreement; with vLLM installed there, the vLLM backend too.
# DEVICE=cpu runs the same steps on the CPU with a tiny model (the test suite's dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-check-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { echo "== $(date +%T) $*"; }
skip() { echo "SKIP $1: $2" | tee -a "$OUT/skipped.txt"; }
if [ "$DEVICE" = cuda ]; then
  step "0. install"
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "STOP: .whl/ is empty (run make device-wheels here and carry .whl)"; exit 2
  fi
  if ! timeout -k 5 25 $PY -m pip install -q --no-index --no-deps .whl/*.whl >"$OUT/install.log" 2>&1; then
    echo "STOP: installing .whl failed:"; tail -5 "$OUT/install.log"; exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  MODELS=qwen1.5b BITS=200 ENTRIES=3 ONLY=
else
  MODELS=tiny BITS=3 ENTRIES=1 ONLY=--tiny-only
fi
timeout -k 5 25 $PY - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import importlib, importlib.util
for name in ("torch", "triton", "vllm", "ray", "numba", "transformers", "lm_eval"):
    if importlib.util.find_spec(name) is None:
        print(f"{name}: not installed")
        continue
    try:
        print(f"{name}: {importlib.import_module(name).__version__}")
    except Exception as exc:  # a package that is there but does not import
        print(f"{name}: does not import ({type(exc).__name__}: {str(exc)[:120]})")
EOF
grep -q "^triton: [0-9]" "$OUT/versions.txt" || [ "$DEVICE" = cpu ] || skip "fused kernel on CUDA" "triton is not importable there: the weight change runs as torch ops (same bits)"
grep -q "^vllm: [0-9]" "$OUT/versions.txt" || skip "vLLM steps of gpu_check" "vllm is not importable there (it does not travel with the tree)"
grep -q "^ray: [0-9]" "$OUT/versions.txt" || skip "Ray" "ray is not importable there; no step of this check needs it"
status=0
step "1. weight change (≤ 120 s)"
timeout -k 5 120 $PY bench/weight_change.py --device "$DEVICE" --bits $BITS --entries $ENTRIES --models $MODELS --json "$OUT/weight_change.json" \
  >"$OUT/weight_change.log" 2>&1 || { status=1; echo "weight_change failed or timed out:"; }
tail -6 "$OUT/weight_change.log"
step "2. gpu_check (≤ 120 s)"
timeout -k 5 120 $PY bench/gpu_check.py --device "$DEVICE" --entries 4 $ONLY >"$OUT/gpu_check.log" 2>&1 || { status=1; echo "gpu_check failed or timed out:"; }
tail -25 "$OUT/gpu_check.log"
step "done (status $status)"
exit $status
