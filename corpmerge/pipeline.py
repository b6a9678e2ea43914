"""`corpmerge score` and `corpmerge run`: sample → score → candidates → gate → probe → write → evaluate."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from corpmerge.amplitudes import Cloud
from corpmerge.errors import CorpmergeError
from corpmerge.gate.procedure import Candidate, GateDecision, candidate_record, run_gate
from corpmerge.gate.stage2 import iterate
from corpmerge.output.folder import population_summary, shipped_update, write_output
from corpmerge.output.hub import push_folder
from corpmerge.output.location import check_output_location, check_work_location
from corpmerge.output.report_schema import REPORT_FILE, RunReport
from corpmerge.plan import Checked, check_recipe
from corpmerge.population import Entry
from corpmerge.recipe import EvaluateSpec, Recipe, dump_yaml
from corpmerge.report.heldout import accuracy, evaluate_held_out
from corpmerge.report.plots import write_report_png
from corpmerge.scoring.evaluator import Request
from corpmerge.scoring.folds import count
from corpmerge.scoring.racing import entries_to_keep, race_population, score_population
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import Session, open_session
from corpmerge.scoring.shipped import shipped_check
from corpmerge.scoring.subjects import entry_subject, update_subject

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


def prepare(recipe: Recipe, *, needs_rewards: bool, overwrite: bool | None = None) -> Checked:
    """Check the recipe and the output/work location before anything is written.

    ``overwrite=None``: only the work folder is written (score, ensemble, diagnose).
    """
    refuse_launcher()
    check_work_location(recipe) if overwrite is None else check_output_location(recipe, overwrite)
    return check_recipe(recipe, needs_rewards=needs_rewards)


def refuse_launcher() -> None:
    """One corpmerge process drives a run; N copies started by torchrun or accelerate would each run all of it."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise CorpmergeError(
            "WORLD_SIZE: this process is one of several started by a launcher (torchrun, accelerate launch), and corpmerge "
            "runs as one process; start it once and scale out with scoring.workers (Ray workers, see the README)"
        )


def keep_for(checked: Checked, ensemble_k: list[int] | None = None) -> int:
    """How many of the best entries racing must rank exactly: the elites of any grid point, RandOpt's top K."""
    quantiles = [q for p in checked.grid if (q := checked.method.elite_quantile(p)) is not None]
    size = len(checked.entries)
    return entries_to_keep(size, min(quantiles) if quantiles else None, max(ensemble_k or [1]))


def ensemble_recipe(recipe: Recipe, top_k: list[int]) -> dict[str, Any]:
    """RandOpt top-K votes vs the base (and the merged model, when the output folder holds one) on the evaluate split."""
    recipe = recipe if recipe.evaluate else recipe.model_copy(update={"evaluate": EvaluateSpec()})
    checked = prepare(recipe, needs_rewards=False)
    with open_session(recipe, checked.base) as session:
        entries = score_population(session, checked.entries, keep=keep_for(checked, top_k))
        ranked = sorted(entries, key=lambda e: -e.reward)
        subjects: dict[str, tuple[str, Any]] = {"base": ("base", None)}
        amps = shipped_update(Path(recipe.output.path))
        if amps is not None:
            subjects["merged"] = (update_subject(amps), amps)
        return {"base_model": recipe.base_model, "method": recipe.merge_method, "evaluation": evaluate_held_out(session, subjects, ranked, top_k)}


def score_recipe(recipe: Recipe) -> dict[str, Any]:
    """Score every entry (and the base) on fold A; write ``rewards.yaml`` into the work folder."""
    checked = prepare(recipe, needs_rewards=False)
    with open_session(recipe, checked.base) as session:
        entries = score_population(session, checked.entries, keep_for(checked))
        base = accuracy(session.scores(Request("base", "A", session.folds["A"]), "the base"), session.folds["A"])
    path = recipe.output.work_path / "rewards.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"seed": e.seed, "sigma": e.sigma, "reward": e.reward} for e in entries]
    path.write_text(dump_yaml({"noise": recipe.noise, "base_accuracy_A": base, "population": rows}))
    return {"entries": entries, "base_accuracy_A": base, "rewards_path": str(path)}


def run_recipe(recipe: Recipe, out_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """The whole job. Returns the report as report.json holds it (``corpmerge.output.report_schema``),
    plus ``report_path``."""
    timer = PhaseTimer()
    recipe = recipe.with_output(out_dir)
    checked = prepare(recipe, needs_rewards=recipe.scoring is None, overwrite=overwrite)  # write_output checks again
    out = Path(recipe.output.path)
    with timer("load"):
        session = open_session(recipe, checked.base)
    with session:
        with timer("score"):
            entries, race = race_population(session, checked.entries, keep_for(checked, recipe.evaluate and recipe.evaluate.ensemble_k))
        cloud = Cloud.from_entries(entries)
        with timer("gate"):
            if recipe.gate.enabled:
                decision = run_gate(session, checked, cloud)
            else:
                result = checked.method(cloud, checked.grid[0])
                decision = GateDecision(Candidate(checked.grid[0].model_dump(by_alias=True), result, update_subject(result)), 1.0, [], "gate disabled")
        final = decision.result
        stage2 = None
        if final is not None and recipe.iterate is not None:
            with timer("stage2"):
                final, stage2 = iterate(session, checked, cloud, decision)
        report = _report(session, entries, checked, decision)
        report["racing"] = race
        if stage2 is not None:
            report["stage2"] = {
                "rounds": stage2,
                "accepted": sum(r["accepted"] for r in stage2),
                "rejected": sum(not r["accepted"] for r in stage2),
                "sigma_schedule": recipe.iterate.sigma_schedule,
            }
            subject = update_subject(final)
            report["chosen"] = fold_accuracies(session, subject, final, list(report["chosen"]))
        best_index = int(np.argmax([e.reward for e in entries]))
        if recipe.evaluate is not None:
            with timer("evaluate"):
                subjects = {"base": ("base", None), "best_entry": (entry_subject(entries[best_index]), entry_update(entries[best_index]))}
                if final is not None:
                    subjects["merged"] = (update_subject(final), final)
                pairs: tuple[tuple[str, str], ...] = ()
                if stage2 is not None and report["stage2"]["accepted"]:  # what stage 2 added, paired on the same examples
                    subjects["stage1"] = (update_subject(decision.result), decision.result)
                    pairs = (("merged", "stage1"),)
                ranked = sorted(entries, key=lambda e: -e.reward)
                report["evaluation"] = evaluate_held_out(session, subjects, ranked, recipe.evaluate.ensemble_k, pairs)
        report["evaluations"] = session.scorer.evaluations
        report["example_evaluations"] = session.scorer.examples_evaluated
        datasets = {**session.suite.datasets, **(session.suites("evaluate").datasets if recipe.evaluate else {})}
        if datasets:
            report["datasets"] = datasets  # the model card's `datasets`
        written = final is not None or recipe.output.write_on_abstain
        report["output"] = str(out) if written else None
        with timer("write"):
            if written:
                subject = update_subject(final) if final is not None else "base"
                verify = (lambda folder: verify_shipped(session, folder, subject, final)) if recipe.output.verify else None
                shipped = RunReport.of_run(report)  # the folder's copy, as the card describes it
                write_output(
                    out,
                    recipe=recipe,
                    entries=entries,
                    result=final,
                    tokenizer=session.tokenizer,
                    ref=session.ref,
                    report=shipped,
                    overwrite=overwrite,
                    picture=lambda path: write_report_png(shipped, path),
                    verify=verify,
                )
                if shipped.shipped_check is not None:
                    report["shipped_check"] = shipped.shipped_check.model_dump()
        if final is not None and recipe.output.push_to_hub:
            with timer("push"):
                report["pushed"] = push_folder(out, recipe.output.push_to_hub, private=recipe.output.private)
        report["timings_s"] = timer.seconds
        final_report = RunReport.of_run(report)
        path = final_report.write((out if written else recipe.output.work_path) / REPORT_FILE)
        write_report_png(final_report, recipe.output.work_path / "report.png")
        return {**final_report.as_json(), "report_path": str(path)}


def _report(session: Session, entries: list[Entry], checked: Checked, decision: GateDecision) -> dict[str, Any]:
    """Base vs chosen on the folds, the gate's numbers and every candidate tried."""
    folds = session.folds
    used = ("A", "B", "C") if session.recipe.gate.enabled else ("A",)
    report: dict[str, Any] = {
        "base_model": session.recipe.base_model,
        "method": checked.method.name,
        "population": population_summary(entries),
        "folds": {f: count(d) for f, d in folds.items()},
        "base": fold_accuracies(session, "base", None, used),
        "candidates_tried": len(decision.candidates),
        "gate": {
            "enabled": session.recipe.gate.enabled,
            "accepted": decision.accepted is not None,
            "reason": decision.reason,
            "candidates_probed": decision.probed,
            "fallback": session.recipe.gate.fallback,
        },
    }
    report["population"]["rewards"] = [e.reward for e in entries]
    if decision.candidates:
        report["candidates"] = [candidate_record(c) for c in decision.candidates]
    final, cand = decision.result, decision.accepted
    if final is None:
        return report
    report["gate"].update(params=cand.params, multiplier=decision.multiplier, ess=cand.result.ess, step_rms=final.step_rms)
    quantile = checked.method.elite_quantile(cand.params)
    if quantile is not None:
        report["population"]["elite_threshold"] = float(np.quantile([e.reward for e in entries], quantile))
    if cand.validate is not None:
        probe = cand.probe[decision.multiplier]
        report["gate"].update(
            fixes=cand.validate.fixes,
            regressions=cand.validate.regressions,
            constructive_score=cand.validate.constructive_score,
            lcb=cand.validate.lcb,
            probe_lcb=probe.lcb,
            probe={str(m): s.as_dict() for m, s in cand.probe.items()},
        )
    subject = update_subject(final)
    report["chosen"] = fold_accuracies(session, subject, final, used)
    return report


def verify_shipped(session: Session, folder: Path, subject: str, update: Any) -> dict[str, Any]:
    """Fold B as the gate scored it (from the store) against the written folder loaded as a user would."""
    docs = session.folds["B"]
    scored = session.scores(Request(subject, "B", docs, update), "the accepted candidate")
    result = shipped_check(session.backend, session.suite, folder, docs, scored)
    result.update(scoring_dtype=session.recipe.scoring_dtype, output_dtype=session.recipe.dtype, backend=session.backend.kind)
    return result


def fold_accuracies(session: Session, subject: str, update: Any, folds: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Accuracy of ``subject`` on each named support fold (one batch)."""
    results = session.evaluate([Request(subject, f, session.folds[f], update) for f in folds], f"{subject} on the support folds")
    return {f: accuracy(scores, session.folds[f]) for f, scores in zip(folds, results)}
