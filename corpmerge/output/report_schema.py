"""``report.json``: the schema of a run's report, written by ``corpmerge run`` and read by the model
card, the terminal tables, ``report.png`` and ``corpmerge report``.

The report is versioned (``schema_version``): a reader refuses, in one line, a file without the
version (an older corpmerge, or not a corpmerge report) or with another one, and a file that
does not match the schema, instead of guessing. ``corpmerge run`` builds it once (``RunReport.assemble``)
from the sections its phases return; fields appear in the JSON only when the run set them (an
abstained run has no ``chosen``, a run without ``evaluate:`` no ``evaluation``). It lives beside the
writer of the output folder so that both the folder (``output/``) and the report's readers
(``report/``, the CLI) can import it. The records the gate builds (``Paired``, a candidate, a
stage-2 round) are declared once in ``corpmerge.comparison`` and reused here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from corpmerge.comparison import CandidateRecord, Paired, Part, RoundRecord
from corpmerge.errors import CorpmergeError, first_line

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"
OPTIONAL = frozenset({"chosen", "candidates", "stage2", "evaluation", "datasets", "pushed", "shipped_check"})  # left out when a run has none


class Population(Part):
    rank: int | None = None  # population.rank: the rank r of every perturbed matrix's noise (absent: full rank)
    size: int
    sigmas: dict[float, int]  # σ → number of entries
    reward_min: float
    reward_mean: float
    reward_max: float
    rewards: list[float] = []  # fold-A reward of each entry, in population order
    elite_threshold: float | None = None  # the accepted candidate's reward quantile


class Gate(Part):
    enabled: bool
    accepted: bool
    reason: str
    candidates_probed: int = 0
    fallback: bool = False
    params: dict[str, Any] | None = None  # the accepted grid point
    multiplier: float | None = None  # the probe's step multiplier
    fixes: int | None = None
    regressions: int | None = None
    constructive_score: float | None = None
    lcb: float | None = None
    probe_lcb: float | None = None
    probe: dict[str, Paired] | None = None  # multiplier → fold-C statistics
    ess: float | None = None  # the accepted candidate's effective number of elites
    step_rms: float | None = None


class Racing(Part):
    enabled: bool
    stages: list[int]
    z: float
    keep: int
    scored: int
    stopped: int
    example_evaluations: int
    example_evaluations_without_racing: int
    examples: list[int]  # fold-A examples each entry was scored on


class Stage2(Part):
    rounds: list[RoundRecord]
    accepted: int
    rejected: int = 0
    sigma_schedule: str | None = None


class ShippedCheck(Part):
    """The written folder, loaded as a user would, re-scored on fold B against what the gate scored."""

    fold: str
    examples: int
    identical: bool
    differing: int
    scoring_dtype: str
    output_dtype: str
    backend: str


class Interval(Part):
    diff: float
    ci_low: float
    ci_high: float


class HeldOutRow(Part):
    accuracy: float
    n: int
    diff: float | None = None  # vs the base, with its paired 95% interval
    ci_low: float | None = None
    ci_high: float | None = None
    vs_k1: Interval | None = None  # vs RandOpt K=1
    vs_stage1: Interval | None = None  # merged vs the stage-1 model, when stage 2 moved it
    by_task: dict[str, float] = {}  # accuracy on each task's examples


class OtherTask(Part):
    """A further task of ``evaluate.tasks`` (one the support does not train), reported on its own beside the main rows."""

    n: int  # examples evaluated
    split_size: int  # examples in its evaluate split
    rows: dict[str, HeldOutRow]  # base, best_entry (RandOpt K=1), merged (stage1): vs the base, and vs K=1
    clustered_by: str | None = None  # the document field its intervals are clustered by
    clusters: int | None = None


class HeldOut(Part):
    """The held-out evaluation: accuracy of each model (base, best_entry, randopt_topK, merged) on the evaluate split."""

    split: str
    tasks: list[str]
    rows: dict[str, HeldOutRow]
    n: int
    ranked_on: str | None = None  # what the RandOpt rows were ranked on
    n_by_task: dict[str, int] = {}  # task → examples evaluated (the first evaluate.limit of those not in the support set)
    split_sizes: dict[str, int] = {}  # task → examples in its evaluate split
    excluded_support: dict[str, int] = {}  # task → support examples of this split left out
    clustered_by: dict[str, str] = {}  # task → the document field its examples share (intervals are cluster-robust)
    clusters: int | None = None  # distinct clusters among the n examples
    other_tasks: dict[str, OtherTask] = {}  # task → its own rows: the evaluate tasks the support does not train
    recovered_fraction: float | None = None  # merged gain ÷ the largest vote's gain

    def clustering_note(self) -> str:
        """How the intervals treat examples that share a declared field ('' when no task declares one)."""
        if not self.clustered_by:
            return ""
        fields = ", ".join(f"{field} ({task})" for task, field in sorted(self.clustered_by.items()))
        return f"95% intervals are clustered by {fields}: {self.clusters} distinct among {self.n} examples, which are not independent where they share one"


class RunReport(Part):
    schema_version: Literal[1] = SCHEMA_VERSION
    base_model: str
    method: str
    population: Population
    folds: dict[str, int]  # support examples per fold
    base: dict[str, float]  # the base's accuracy per fold
    chosen: dict[str, float] = {}  # the chosen model's accuracy per fold
    candidates_tried: int
    gate: Gate
    candidates: list[CandidateRecord] = []
    racing: Racing | None = None
    stage2: Stage2 | None = None
    evaluation: HeldOut | None = None
    evaluations: int = 0
    example_evaluations: int = 0
    output: str | None = None  # the model folder, None when nothing was written
    pushed: str | None = None  # the Hub commit URL
    timings_s: dict[str, float] = {}
    datasets: dict[str, str] = {}  # task → the Hub dataset its YAML declares (metadata.dataset)
    shipped_check: ShippedCheck | None = None

    @classmethod
    def assemble(cls, **sections: Any) -> "RunReport":
        """A run's report from its phases' sections; an ``OPTIONAL`` one the run did not produce (None or empty) stays out of the JSON."""
        return cls(**{k: v for k, v in sections.items() if k not in OPTIONAL or v not in (None, [], {})})

    @classmethod
    def of_run(cls, report: dict[str, Any]) -> "RunReport":
        """The report a run assembled (a dict in today's JSON shape), checked against the schema."""
        return cls.model_validate({**report, "schema_version": SCHEMA_VERSION})

    def as_json(self) -> dict[str, Any]:
        """The JSON object: today's keys (only those the run set), plus ``schema_version``."""
        data = self.model_dump(mode="python", by_alias=True, exclude_unset=True)
        return {"schema_version": self.schema_version, **{k: v for k, v in data.items() if k != "schema_version"}}

    def write(self, path: Path) -> Path:
        """Write ``report.json`` atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.as_json(), indent=2, default=float) + "\n")  # numpy scalars in params
        os.replace(tmp, path)
        return path


def read_report(path: Path) -> RunReport:
    """A report.json file checked against the schema; one-line errors for an old, foreign or broken file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpmergeError(f"report: {path} is not a readable JSON report ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise CorpmergeError(f"report: {path} does not hold a JSON object")
    version = data.get("schema_version")
    if version is None:
        raise CorpmergeError(
            f"report: {path} has no schema_version: an older corpmerge wrote it, or it is not a corpmerge report; re-run the recipe to write a current one"
        )
    if version != SCHEMA_VERSION:
        raise CorpmergeError(
            f"report: {path} has schema_version {version!r}, this corpmerge reads version {SCHEMA_VERSION}; "
            "open it with the corpmerge release that wrote it, or re-run the recipe"
        )
    try:
        return RunReport.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise CorpmergeError(f"report: {path} does not match the report schema ({where}: {err['msg']})") from None
