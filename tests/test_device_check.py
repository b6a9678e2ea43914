"""The device check's CPU half: bench/device_check.sh with DEVICE=cpu runs every step on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_check_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    weights = json.loads((tmp_path / "weight_change.json").read_text())
    bits = weights["bits"]
    assert bits["n_write_mismatched"] == 0 and bits["n_draw_mismatched"] == 0 and all(bits["scored_equals_written"].values())
    assert bits["fused_writes"] == 3 and len(bits["scored_equals_written"]) == 4
    row = weights["rows"][0]
    assert row["model"] == "tiny" and row["kernel"] == "numba" and min(row["ops_s"], row["fused_s"], row["copy_s"]) > 0
    assert "vllm" in (tmp_path / "versions.txt").read_text()  # every package is named, present or not
    check = json.loads((tmp_path / "gpu_check.json").read_text())
    assert check["tiny"]["shipped_check"]["identical"] and check["tiny"]["written_equals_scored"]
    assert check["tiny"]["cpu_vs_device"]["agree"] == 1.0
