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
from corpmerge.gate.procedure import Candidate, GateDecision, run_gate
from corpmerge.gate.stage2 import iterate
from corpmerge.methods import MergeResult
from corpmerge.model_io import BaseRef, resolve_base
from corpmerge.output.folder import shipped_update, write_output
from corpmerge.output.hub import push_folder
from corpmerge.output.location import check_output_location, check_work_location
from corpmerge.output.report_schema import REPORT_FILE, HeldOut, Racing, RunReport, Stage2
from corpmerge.plan import Checked, check_recipe, sigma_scale_warning
from corpmerge.population import Entry
from corpmerge.recipe import EvaluateSpec, Recipe
from corpmerge.report.heldout import accuracy, evaluate_held_out
from corpmerge.report.plots import write_report_png
from corpmerge.report.sections import candidates_section, gate_section, population_section, stage2_section
from corpmerge.scoring.evaluator import Request
from corpmerge.scoring.folds import count
from corpmerge.scoring.racing import entries_to_keep, race_population, score_population
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import Session, open_session
from corpmerge.scoring.shipped import shipped_check
from corpmerge.scoring.subjects import entry_subject, update_subject
from corpmerge.tracking import open_run, require
from corpmerge.yaml_io import dump_yaml

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

    ``overwrite=None``: only the work folder is written (score, ensemble, diagnose). The base is resolved here, once,
    and carried as ``Checked.base``.
    """
    refuse_launcher()
    base = resolve_base(recipe.base_model)
    check_work_location(recipe, base) if overwrite is None else check_output_location(recipe, base, overwrite)
    return check_recipe(recipe, needs_rewards=needs_rewards, base=base)


def refuse_launcher() -> None:
    """One corpmerge process drives a run; N copies started by torchrun or accelerate would each run all of it."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise CorpmergeError(
            "WORLD_SIZE: this process is one of several started by a launcher (torchrun, accelerate launch), and corpmerge "
            "runs as one process; start it once and scale out with scoring.workers (Ray workers, docs/scale-out.md)"
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
    size = len(checked.entries)
    if max(top_k) > size:  # a top-K vote takes K distinct entries
        log.warning(
            "--top-k: %s capped at %d, the population's size (a top-K vote takes K distinct entries)", ", ".join(str(k) for k in top_k if k > size), size
        )
        top_k = sorted({min(k, size) for k in top_k})
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
        entries, race = race_population(session, checked.entries, keep_for(checked))
        base = accuracy(session.scores(Request("base", "A", session.folds["A"]), "the base"), session.folds["A"])
        size = count(session.folds["A"])
    path = write_rewards(recipe, entries, base, race["examples"], size)
    return {"entries": entries, "examples": race["examples"], "fold_size": size, "base_accuracy_A": base, "rewards_path": str(path)}


def write_rewards(recipe: Recipe, entries: list[Entry], base_accuracy: float, examples: list[int], size: int) -> Path:
    """``<work_dir>/rewards.yaml``: the noise scheme, the base's fold-A accuracy and every entry's fold-A reward, in
    population order, as a recipe's ``population`` takes them (``{rank, entries}`` at ``population.rank``); an entry
    racing stopped early keeps ``examples``, the m < ``fold_A_examples`` examples behind its estimate."""
    rows = [{"seed": e.seed, "sigma": e.sigma, **({"examples": m} if m < size else {}), "reward": e.reward} for e, m in zip(entries, examples, strict=True)]
    population = rows if recipe.rank is None else {"rank": recipe.rank, "entries": rows}
    path = recipe.output.work_path / "rewards.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml({"noise": recipe.noise, "base_accuracy_A": base_accuracy, "fold_A_examples": size, "population": population}))
    return path


def run_recipe(recipe: Recipe, out_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """The whole job, phase by phase: load → score → gate → stage 2 → fold accuracies → evaluate → write → push.

    The phases' typed sections are assembled once into the report (``corpmerge.output.report_schema.RunReport``).
    Returns the report as report.json holds it, plus ``report_path``.
    """
    timer = PhaseTimer()
    recipe = recipe.with_output(out_dir)
    require(recipe.tracking)  # a tracker asked for and not installed: one line, before anything loads
    checked = prepare(recipe, needs_rewards=recipe.scoring is None, overwrite=overwrite)  # write_output checks again
    out = Path(recipe.output.path)
    track = open_run(recipe)  # the trackers of recipe.tracking (none: nothing imported), with the recipe as config
    with timer("load"):
        session = open_session(recipe, checked.base)
    with session, track:
        sigma_scale_warning(session.ref, recipe, checked.entries)
        with timer("score"):
            entries, race = race_population(session, checked.entries, keep_for(checked, recipe.evaluate and recipe.evaluate.ensemble_k))
        track.scored(entries, race)
        cloud = Cloud.from_entries(entries)
        with timer("gate"):
            decision = gate_phase(session, checked, cloud)
        track.log(candidates=candidates_section(decision), gate=gate_section(recipe.gate, decision))
        final, stage2 = decision.result, None
        if final is not None and recipe.iterate is not None:
            with timer("stage2"):
                final, rounds = iterate(session, checked, cloud, decision)
                stage2 = stage2_section(recipe.iterate, rounds)
                track.log(stage2=stage2)
        base, chosen = fold_phase(session, decision, final if stage2 is not None else None)
        write_rewards(recipe, entries, base["A"], race["examples"], count(session.folds["A"]))
        evaluation = None
        if recipe.evaluate is not None:
            with timer("evaluate"):
                evaluation = evaluate_phase(session, entries, decision, final, stage2)
                track.log(evaluation=evaluation)
        written = final is not None or recipe.output.write_on_abstain
        report = RunReport.assemble(
            base_model=recipe.base_model,
            method=checked.method.name,
            population=population_section(entries, checked.method, decision, recipe.rank),
            folds={f: count(d) for f, d in session.folds.items()},
            base=base,
            chosen=chosen,
            candidates_tried=len(decision.candidates),
            gate=gate_section(recipe.gate, decision),
            candidates=candidates_section(decision),
            racing=Racing(**race),
            stage2=stage2,
            evaluation=evaluation,
            evaluations=session.scorer.evaluations,
            example_evaluations=session.scorer.examples_evaluated,
            output=str(out) if written else None,
            datasets={**session.suite.datasets, **(session.suites("evaluate").datasets if recipe.evaluate else {})},  # the card's `datasets`
        )
        with timer("write"):
            if written:
                write_phase(session, checked.base, out, entries, final, report, overwrite)
        if final is not None and recipe.output.push_to_hub:
            with timer("push"):
                report.pushed = push_folder(out, recipe.output.push_to_hub, private=recipe.output.private)
        report.timings_s = timer.seconds
        path = report.write((out if written else recipe.output.work_path) / REPORT_FILE)
        write_report_png(report, recipe.output.work_path / "report.png")
        track.finish(report.as_json(), [path, recipe.output.work_path / "report.png", *([out / "README.md"] if written else [])])
        return {**report.as_json(), "report_path": str(path)}


def gate_phase(session: Session, checked: Checked, cloud: Cloud) -> GateDecision:
    """The gate's decision over the grid; with the gate off, the first grid point's update, taken as it is."""
    if session.recipe.gate.enabled:
        return run_gate(session, checked, cloud)
    result = checked.method(cloud, checked.grid[0])
    return GateDecision(Candidate(checked.grid[0].model_dump(by_alias=True), result, update_subject(result)), 1.0, [], "gate disabled")


def fold_phase(session: Session, decision: GateDecision, stage2: MergeResult | None) -> tuple[dict[str, float], dict[str, float]]:
    """The base's and the chosen model's accuracy on the support folds the run used (A; B and C with the gate);
    the stage-1 model first, then, when stage 2 ran, the model it ended with."""
    used = ("A", "B", "C") if session.recipe.gate.enabled else ("A",)
    base = fold_accuracies(session, "base", None, used)
    if decision.result is None:
        return base, {}
    chosen = fold_accuracies(session, update_subject(decision.result), decision.result, used)
    if stage2 is not None:
        chosen = fold_accuracies(session, update_subject(stage2), stage2, used)
    return base, chosen


def evaluate_phase(session: Session, entries: list[Entry], decision: GateDecision, final: MergeResult | None, stage2: Stage2 | None) -> HeldOut:
    """Held-out accuracy of the base, the best entry (RandOpt K=1), the top-K votes and the merged model; when stage 2
    moved the model, merged vs the stage-1 model paired on the same examples."""
    best = entries[int(np.argmax([e.reward for e in entries]))]
    subjects = {"base": ("base", None), "best_entry": (entry_subject(best), entry_update(best))}
    if final is not None:
        subjects["merged"] = (update_subject(final), final)
    pairs: tuple[tuple[str, str], ...] = ()
    if stage2 is not None and stage2.accepted:
        subjects["stage1"] = (update_subject(decision.result), decision.result)
        pairs = (("merged", "stage1"),)
    ranked = sorted(entries, key=lambda e: -e.reward)
    return HeldOut.model_validate(evaluate_held_out(session, subjects, ranked, session.recipe.evaluate.ensemble_k, pairs))


def write_phase(session: Session, base: BaseRef, out: Path, entries: list[Entry], final: MergeResult | None, report: RunReport, overwrite: bool) -> None:
    """The model folder, with ``report`` as its report.json, card and report.png; with ``output.verify`` the folder is
    re-scored and ``report.shipped_check`` set. ``base``: the recipe's base as the command resolved it."""
    recipe = session.recipe
    subject = update_subject(final) if final is not None else "base"
    verify = (lambda folder: verify_shipped(session, folder, subject, final)) if recipe.output.verify else None
    write_output(
        out,
        recipe=recipe,
        entries=entries,
        result=final,
        tokenizer=session.tokenizer,
        base=base,
        ref=session.ref,
        report=report,
        overwrite=overwrite,
        picture=lambda path: write_report_png(report, path),
        verify=verify,
        estimates={i: m for i, m in enumerate(report.racing.examples) if m < report.folds.get("A", 0)} if report.racing else None,
    )


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
