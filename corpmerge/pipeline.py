"""`corpmerge score` and `corpmerge run`: sample → score → candidates → gate → probe → write → evaluate."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from corpmerge.amplitudes import Amplitudes, Cloud
from corpmerge.report.diagnose import plot, sketch, split_half
from corpmerge.scoring.distributed import World, current_world
from corpmerge.errors import CorpmergeError
from corpmerge.scoring.folds import count
from corpmerge.gate.procedure import Candidate, GateDecision, run_gate, subject_of, subject_of_result
from corpmerge.report.heldout import accuracy, evaluate_held_out
from corpmerge.output.hub import push_folder
from corpmerge.plan import Checked, check_recipe
from corpmerge.model_io import ensure_checkpoint, load_base, perturbed_names, resolve_base
from corpmerge.output.folder import population_summary, write_output
from corpmerge.population import Entry
from corpmerge.progress import task
from corpmerge.recipe import EvaluateSpec, Recipe
from corpmerge.gate.stage2 import iterate
from corpmerge.scoring.scorer import entry_subject, entry_update, ordered
from corpmerge.scoring.session import Session, open_session

log = logging.getLogger(__name__)


class PhaseTimer:
    """Wall time per phase, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - start, 3)


def score_population(session: Session, entries: list[Entry], world: World | None = None) -> list[Entry]:
    """Give every entry its fold-A reward (mean reward metric), scoring those not yet in the store.

    Under a launcher the unfinished entries are dealt round-robin to the processes; every
    process then reads all rewards back from the shared store.
    """
    world = world or current_world()
    pending = [e for e in entries if e.reward is None and not session.store.done(entry_subject(e), "A")]
    world.barrier()  # every process has read the same pending list before anyone adds to the store
    mine = pending[world.rank :: world.size]
    if mine:
        _score_entries(session, mine, world)
    world.barrier()
    return [e if e.reward is not None else _rewarded(session, e) for e in entries]


def _score_entries(session: Session, mine: list[Entry], world: World) -> None:
    """Score this process's share on fold A, with a progress bar showing the best reward so far."""
    docs = session.folds["A"]
    best = -np.inf
    with task("scoring population" + (f" (rank {world.rank}/{world.size})" if world.size > 1 else ""), len(mine)) as advance:
        for entry in mine:
            scores = session.scorer.scores(
                entry_subject(entry), "A", docs, entry_update(entry), {"seed": entry.seed, "sigma": entry.sigma}
            )
            best = max(best, float(ordered(scores, docs, "value").mean()))
            advance(status=f"best reward {best:.3f}")


def _rewarded(session: Session, entry: Entry) -> Entry:
    docs = session.folds["A"]
    reward = float(ordered(session.store.load(entry_subject(entry), "A"), docs, "value").mean())
    return Entry(entry.seed, entry.sigma, reward)


def ensemble_recipe(recipe: Recipe, top_k: list[int]) -> dict[str, Any]:
    """RandOpt top-K votes vs the base (and the merged model, when the output folder holds one) on the evaluate split."""
    recipe = recipe if recipe.evaluate else recipe.model_copy(update={"evaluate": EvaluateSpec()})
    checked = check_recipe(recipe, needs_rewards=False)
    session = open_session(recipe)
    try:
        entries = score_population(session, checked.entries)
        ranked = sorted(entries, key=lambda e: -e.reward)
        subjects: dict[str, tuple[str, Any]] = {"base": ("base", None)}
        lineage = Path(recipe.output.path) / "corpmerge.yaml"
        if lineage.is_file():
            table = yaml.safe_load(lineage.read_text()).get("lineage") or []
            if table:
                amps = Amplitudes(np.array([r["seed"] for r in table]), np.array([r["amplitude"] for r in table], dtype=float))
                subjects["merged"] = (subject_of(amps), amps)
        return {"base_model": recipe.base_model, "method": recipe.merge_method,
                "evaluation": evaluate_held_out(session, subjects, ranked, top_k)}
    finally:
        session.close()


def diagnose_recipe(recipe: Recipe, top: int = 64, coords: int = 32, k: int = 8, splits: int = 20) -> dict[str, Any]:
    """Split-half statistics of the top-``top`` elites, printed as a table and plotted to ``diagnose.png``."""
    checked = check_recipe(recipe, needs_rewards=recipe.scoring is None)
    if recipe.scoring is not None:
        session = open_session(recipe)
        try:
            entries = score_population(session, checked.entries)
            params = session.scorer.params
            sizes = {name: p.numel() for name, p in params.items()}
        finally:
            session.close()
    else:
        entries = checked.entries
        model = load_base(ensure_checkpoint(resolve_base(recipe.base_model)))
        sizes = {name: dict(model.named_parameters())[name].numel() for name in perturbed_names(model, recipe.perturb)}
    elites = sorted(entries, key=lambda e: -e.reward)[:top]
    if len(elites) < 4:
        raise CorpmergeError(f"population: the split-half diagnostic needs at least 4 entries (got {len(elites)})")
    matrix = sketch(elites, list(sizes), coords, sizes)
    stats = split_half(matrix, k=k, splits=splits)
    path = recipe.output.work_path / "diagnose.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plot(str(path), entries, matrix, stats)
    return {
        "elites": len(elites), "sketch_dims": int(matrix.shape[1]), "k": k, "splits": splits, "plot": str(path),
        "statistics": {name: {"mean": st.mean, "lower95": st.lower, "stable": st.stable} for name, st in stats.items()},
    }


def score_recipe(recipe: Recipe) -> dict[str, Any] | None:
    """Score every entry (and the base) on fold A; write ``rewards.yaml`` into the work folder.

    Returns None on the non-main processes of a launched run.
    """
    checked = check_recipe(recipe, needs_rewards=False)
    world = current_world()
    session = open_session(recipe, world.device)
    try:
        entries = score_population(session, checked.entries, world)
        if not world.is_main:
            return None
        base = accuracy(session.scorer.scores("base", "A", session.folds["A"]), session.folds["A"])
    finally:
        session.close()
    path = recipe.output.work_path / "rewards.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"seed": e.seed, "sigma": e.sigma, "reward": e.reward} for e in entries]
    path.write_text(yaml.safe_dump({"noise": recipe.noise, "base_accuracy_A": base, "population": rows}, sort_keys=False))
    return {"entries": entries, "base_accuracy_A": base, "rewards_path": str(path)}


def run_recipe(recipe: Recipe, out_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any] | None:
    """The whole job. Returns the report (also written as report.json); None on non-main processes."""
    timer = PhaseTimer()
    recipe = recipe.with_output(out_dir)
    checked = check_recipe(recipe, needs_rewards=recipe.scoring is None)
    out = Path(recipe.output.path)
    world = current_world()
    with timer("load"):
        session = open_session(recipe, world.device)
    try:
        with timer("score"):
            entries = score_population(session, checked.entries, world)
        if not world.is_main:
            return None  # only scoring is distributed; the gate and the merge run once, on rank 0
        cloud = Cloud.from_entries(entries)
        with timer("gate"):
            if recipe.gate.enabled:
                decision = run_gate(session, checked, cloud)
            else:
                result = checked.method(cloud, checked.grid[0])
                decision = GateDecision(Candidate(checked.grid[0].model_dump(by_alias=True), result, subject_of_result(result)), 1.0, [], "gate disabled")
        final = decision.result
        stage2 = None
        if final is not None and recipe.iterate is not None:
            with timer("stage2"):
                final, stage2 = iterate(session, checked, cloud, decision)
        report = _report(session, entries, checked, decision)
        if stage2 is not None:
            report["stage2"] = {"rounds": stage2, "accepted": sum(r["accepted"] for r in stage2)}
            subject = subject_of_result(final)
            report["chosen"] = {f: accuracy(session.scorer.scores(subject, f, session.folds[f], final), session.folds[f]) for f in report["chosen"]}
        best_index = int(np.argmax([e.reward for e in entries]))
        if recipe.evaluate is not None:
            with timer("evaluate"):
                subjects = {"base": ("base", None), "best_entry": (entry_subject(entries[best_index]), entry_update(entries[best_index]))}
                if final is not None:
                    subjects["merged"] = (subject_of_result(final), final)
                ranked = sorted(entries, key=lambda e: -e.reward)
                report["evaluation"] = evaluate_held_out(session, subjects, ranked, recipe.evaluate.ensemble_k)
        report["evaluations"] = session.scorer.evaluations
        written = final is not None or recipe.output.write_on_abstain
        report["output"] = str(out) if written else None
        with timer("write"):
            if written:
                write_output(
                    out, recipe=recipe, entries=entries, result=final, model=session.model, tokenizer=session.tokenizer,
                    ref=session.ref, report=report, overwrite=overwrite,
                )
        if final is not None and recipe.output.push_to_hub:
            with timer("push"):
                report["pushed"] = push_folder(out, recipe.output.push_to_hub, private=recipe.output.private)
        report["timings_s"] = timer.seconds
        report_dir = out if written else recipe.output.work_path
        _write_json_atomic(report_dir / "report.json", report)
        report["report_path"] = str(report_dir / "report.json")
        return report
    finally:
        session.close()


def _report(session: Session, entries: list[Entry], checked: Checked, decision: GateDecision) -> dict[str, Any]:
    """Base vs chosen on the folds, the gate's numbers and every candidate tried."""
    folds, scorer = session.folds, session.scorer
    used = ("A", "B", "C") if session.recipe.gate.enabled else ("A",)
    report: dict[str, Any] = {
        "base_model": session.recipe.base_model,
        "method": checked.method.name,
        "population": population_summary(entries),
        "folds": {f: count(d) for f, d in folds.items()},
        "base": {f: accuracy(scorer.scores("base", f, folds[f]), folds[f]) for f in used},
        "candidates_tried": len(decision.candidates),
        "gate": {"enabled": session.recipe.gate.enabled, "accepted": decision.accepted is not None, "reason": decision.reason},
    }
    if decision.candidates:
        report["candidates"] = [{"params": c.params, "validate": c.validate.as_dict()} for c in decision.candidates]
    final, cand = decision.result, decision.accepted
    if final is None:
        return report
    report["gate"].update(params=cand.params, multiplier=decision.multiplier)
    if cand.validate is not None:
        probe = cand.probe[decision.multiplier]
        report["gate"].update(
            fixes=cand.validate.fixes, regressions=cand.validate.regressions,
            constructive_score=cand.validate.constructive_score, lcb=cand.validate.lcb,
            probe_lcb=probe.lcb, probe={str(m): s.as_dict() for m, s in cand.probe.items()},
        )
    subject = subject_of_result(final)
    report["chosen"] = {f: accuracy(scorer.scores(subject, f, folds[f], final), folds[f]) for f in used}
    return report


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)
