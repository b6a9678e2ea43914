"""The shipped check: the written folder, loaded the way a user loads it, must score what the gate scored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from corpmerge.scoring.backends import Backend
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.store import Scores

log = logging.getLogger(__name__)


def shipped_check(backend: Backend, suite: TaskSuite, folder: Path, docs: Docs, scored: Scores, fold: str = "B") -> dict[str, Any]:
    """Re-score ``docs`` with the model in ``folder`` and compare every example's (value, correct) with ``scored``.

    ``identical`` means every example agrees exactly; ``differing`` counts the ones that do not.
    """
    with backend.folder_lm(folder) as lm:
        fresh = suite.evaluate(lm, docs)
    keys = sorted(scored)
    differing = [k for k in keys if k not in fresh or (fresh[k].value, fresh[k].correct) != (scored[k].value, scored[k].correct)]
    result = {"fold": fold, "examples": len(keys), "identical": not differing, "differing": len(differing)}
    if differing:
        log.error(
            "shipped check: the written model differs from the one the gate scored on %d of %d fold-%s examples (first: %s)",
            len(differing),
            len(keys),
            fold,
            differing[0],
        )
    else:
        log.info("shipped check: the written model scores exactly what the gate scored on all %d fold-%s examples", len(keys), fold)
    return result
