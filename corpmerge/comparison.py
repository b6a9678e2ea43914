"""The records the gate computes and the report declares: a paired comparison on one fold (``PairedStats``, from which
the report's ``Paired`` is derived), a gate candidate (``CandidateRecord``) and a stage-2 round (``RoundRecord``).
``corpmerge.output.report_schema`` reuses them; the gate (``corpmerge.gate``) builds them."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model


@dataclass(frozen=True)
class PairedStats:
    """Paired candidate-vs-base statistics on one fold."""

    n: int
    fixes: int
    regressions: int
    constructive_score: float
    mean_diff: float
    sd: float
    lcb: float
    base_accuracy: float
    accuracy: float
    clusters: int | None = None  # distinct clusters among the n examples when the LCB is cluster-robust (metadata.cluster_by)
    lcb_per_example: float | None = None  # beside a clustered LCB: the one that treats the n examples as independent

    @property
    def passes(self) -> bool:
        return self.constructive_score > 0 and self.lcb > 0

    def as_dict(self) -> dict[str, Any]:
        """The fields, without the clustered-only ones when the statistics are per-example (reports as before)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class Part(BaseModel):
    """A section of ``report.json``: unknown keys refused, fields given by name or by alias."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Paired = create_model(  # candidate vs reference on one fold: the fields of the gate's record, declared there once
    "Paired",
    __base__=Part,
    __doc__=PairedStats.__doc__,
    **{f.name: (get_type_hints(PairedStats)[f.name], ... if f.default is MISSING else f.default) for f in fields(PairedStats)},
)


class CandidateRecord(Part):
    """A gate candidate as the report shows it: its grid point, validate-fold statistics and what its weights did."""

    params: dict[str, Any]
    validated: Paired | None = Field(default=None, alias="validate")  # on fold B (partial when racing stopped it)
    stopped: bool = False
    validate_examples: int | None = None
    ess: float | None = None  # effective number of elites 1/Σw²
    elites: int | None = None
    step_rms: float | None = None  # per-coordinate RMS of the step (None when tensor-wise)
    ess_without_compatibility: float | None = None  # CoRP: the ESS of softmax(β·r) alone


class RoundRecord(Part):
    """One stage-2 round: its local population, the gate's outcome on it and every candidate it tried."""

    round: int
    sigma: float | None = None  # the round's local σ
    local_size: int
    accepted: bool
    params: dict[str, Any] | None = None  # the accepted grid point of the round
    multiplier: float | None = None
    reason: str
    candidates_probed: int = 0
    local_reward_max: float
    local_reward_mean: float
    validated: Paired | None = Field(default=None, alias="validate")  # the round's top candidate on its fold B
    ess: float | None = None
    step_rms: float | None = None
    candidates: list[CandidateRecord] = []
