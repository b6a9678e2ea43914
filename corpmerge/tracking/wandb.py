"""Weights & Biases: a run in ``tracking.project`` named ``tracking.run_name``, its files under ``<work_dir>/wandb``.

Online when W&B finds a login (``WANDB_API_KEY`` or ``wandb login``'s entry in ~/.netrc), else offline
(``wandb sync <work_dir>/wandb/offline-run-*`` uploads it later); ``WANDB_MODE`` decides when it is set.
A single value goes to the run's summary; a list's items are history rows against their own step metric
(``<list>/index``: ``candidates/index``, ``population/rewards/index``); texts go to the summary (single) or as
``<tag>`` rows; artifacts are saved with the run. Needs ``wandb``."""

from __future__ import annotations

import logging
import netrc
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from corpmerge.tracking import Point, RunInfo

HOST = "api.wandb.ai"
log = logging.getLogger(__name__)


def logged_in() -> bool:
    """Whether W&B has credentials here, without asking the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    name = "wandb"

    def __init__(self, info: RunInfo) -> None:
        import wandb

        self.dir = info.work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False, disable_git=True)
        self.run = wandb.init(project=info.project, name=info.name, dir=str(self.dir), mode=mode, settings=settings, reinit="create_new")
        where = f"offline; upload it with: wandb sync {Path(self.run.dir).parent}" if mode == "offline" else self.run.url
        log.info("tracking: W&B run %s (%s)", info.name, where)
        self.axes: set[str] = set()
        self.defined: set[str] = set()

    def config(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def scalars(self, points: list[Point]) -> None:
        self._log(points)

    def texts(self, points: list[Point]) -> None:
        self._log(points)

    def _log(self, points: list[Point]) -> None:
        single = {p.tag: p.value for p in points if p.axis is None}
        if single:
            self.run.summary.update(single)
        rows: dict[tuple[str, int], dict[str, Any]] = defaultdict(dict)
        for p in points:
            if p.axis is not None:
                rows[(p.axis, p.step)][p.tag] = p.value
        for (axis, step), row in sorted(rows.items()):
            index = f"{axis}/index"
            if axis not in self.axes:
                self.run.define_metric(index, hidden=True)
                self.axes.add(axis)
            for tag in row.keys() - self.defined:
                self.run.define_metric(tag, step_metric=index)
                self.defined.add(tag)
            self.run.log({index: step, **row})

    def artifact(self, path: Path) -> None:
        copy = Path(self.run.dir) / path.name  # a copy in the run's folder: the run keeps the file as it was at the end
        shutil.copyfile(path, copy)
        self.run.save(str(copy), base_path=self.run.dir, policy="now")

    def close(self) -> None:
        self.run.finish()


def open_tracker(info: RunInfo) -> WandbTracker:
    return WandbTracker(info)
