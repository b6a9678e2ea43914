"""The record of a paired comparison on one fold, which the gate computes (``corpmerge.gate.paired``) and the report
declares (``corpmerge.output.report_schema.Paired`` is derived from it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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

    @property
    def passes(self) -> bool:
        return self.constructive_score > 0 and self.lcb > 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
