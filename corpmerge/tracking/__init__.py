"""Experiment tracking: what ``corpmerge run`` logs while it goes, to the trackers ``tracking.report_to`` names.

One seam: a ``Tracker`` (one module per tracker, ``corpmerge.tracking.<name>``, its library imported only when
it is asked for) takes a config, scalar points, text points and artifact files. ``Tracking`` fans a run's
records out to its trackers. The records are the ones ``report.json`` holds, flattened so that a tag is the
record's JSON path and a list index is the step: ``gate/lcb`` is ``report["gate"]["lcb"]`` at step 0,
``candidates/validate/lcb`` at step k is ``report["candidates"][k]["validate"]["lcb"]``. So what a tracker
shows equals the report. Each tag is logged once: the phases log their sections as they finish, and
``finish`` logs the rest of the report and its files. A tracker that fails is logged (traceback in the run's
log) and dropped; the run goes on.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import importlib.util
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, get_args

from pydantic import BaseModel

from corpmerge import __version__, progress
from corpmerge.errors import CorpmergeError, first_line, log_traceback
from corpmerge.population import Entry
from corpmerge.recipe import Recipe, TrackerName, TrackingSpec

log = logging.getLogger(__name__)

TRACKERS: tuple[str, ...] = get_args(TrackerName)
PROGRESS_EVERY_S = 10.0  # at most one progress point per task this often (and one when it ends)
CONFIG_ENTRIES = 1000  # a listed population longer than this goes to the config as its size
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker → the package it needs (its corpmerge extra has the same name)


@dataclass(frozen=True)
class Point:
    """One logged value: ``tag`` at ``step``; ``axis`` names the list the step indexes (None: a single value)."""

    tag: str
    step: int
    value: Any
    axis: str | None = None


@dataclass(frozen=True)
class RunInfo:
    """What a tracker needs to open a run."""

    name: str
    project: str
    work_dir: Path
    logging_dir: Path


class Tracker(Protocol):
    """One experiment tracker. Every method may raise: ``Tracking`` drops a tracker that does."""

    name: str

    def config(self, values: dict[str, Any]) -> None: ...

    def scalars(self, points: list[Point]) -> None: ...

    def texts(self, points: list[Point]) -> None: ...

    def artifact(self, path: Path) -> None: ...

    def close(self) -> None: ...


def require(spec: TrackingSpec | None) -> None:
    """One line naming the pip command when a tracker the recipe asks for is not installed (before any weights load)."""
    for name in spec.report_to if spec else []:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise CorpmergeError(f"tracking.report_to: {name} is not installed; pip install {PACKAGES[name]} (the corpmerge[{name}] extra)")


def flatten(prefix: str, value: Any) -> list[Point]:
    """A record as points: numbers (bools as 0/1) and strings under their JSON path; a list's items at steps 0, 1, …
    (lists inside a list item are left out: a step can index one list). Missing values (None) are left out."""
    points: list[Point] = []

    def walk(tag: str, item: Any, step: int, axis: str | None) -> None:
        item = plain(item)
        if isinstance(item, dict):
            for key, sub in item.items():
                walk(f"{tag}/{key}", sub, step, axis)
        elif isinstance(item, (list, tuple)):
            if axis is None:
                for i, sub in enumerate(item):
                    walk(tag, sub, i, tag)
        elif isinstance(item, str):
            points.append(Point(tag, step, item, axis))
        elif isinstance(item, (bool, int, float)) or hasattr(item, "__float__"):
            points.append(Point(tag, step, float(item), axis))

    walk(prefix, value, 0, None)
    return points


def plain(value: Any) -> Any:
    """A report record as JSON-shaped data, the way ``RunReport.as_json`` writes it (set fields only, aliases)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python", by_alias=True, exclude_unset=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


class Tracking:
    """The trackers of one run; every call reaches each tracker, and a failing one is dropped with a warning."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = list(trackers)
        self.logged: set[str] = set()
        self.start, self.units, self.lock = time.monotonic(), 0, threading.Lock()
        self.reporter: progress.Reporter | None = None
        if self.trackers:
            self.reporter = progress.current()  # long work (evaluation units, weight files) reaches the trackers as it goes
            progress.set_reporter(progress.tee(self.reporter, self._progress))
        atexit.register(self.close)  # a run that stops with an exception still flushes what it logged

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # a tracker never stops the run
                log_traceback(f"tracker {tracker.name}, {what}", exc)
                log.warning("tracking: %s failed while logging %s (%s); the run goes on without it", tracker.name, what, first_line(exc))
                if tracker in self.trackers:  # progress may reach a tracker from another thread
                    self.trackers.remove(tracker)
                try:
                    tracker.close()
                except Exception:
                    pass

    def config(self, values: dict[str, Any]) -> None:
        self._each("the config", lambda t: t.config(values))

    def log(self, **sections: Any) -> None:
        """Each section (a report record, a list of them, or plain data) under its report.json key; tags already logged are skipped."""
        points = [p for name, record in sections.items() for p in flatten(name, record) if p.tag not in self.logged]
        if not points or not self.trackers:
            return
        self.logged |= {p.tag for p in points}
        numbers = [p for p in points if not isinstance(p.value, str)]
        texts = [p for p in points if isinstance(p.value, str)]
        self._each(", ".join(sections), lambda t: (t.scalars(numbers), t.texts(texts)))

    @contextmanager
    def _progress(self, description: str, total: int) -> Iterator[progress.Advance]:
        """Progress while a phase runs (not report.json's): ``progress/task`` (the task's label) when it starts, then
        ``progress/fraction`` (of this task) and ``progress/units`` (done in the run so far) at most every
        ``PROGRESS_EVERY_S`` and when it ends; the step is the run's elapsed seconds."""
        done, last = 0, time.monotonic()
        self._live([Point("progress/task", self._elapsed(), description, "progress")])

        def advance(steps: int = 1, *, status: str | None = None) -> None:
            nonlocal done, last
            with self.lock:
                done, self.units = done + steps, self.units + steps
                if done < total and time.monotonic() - last < PROGRESS_EVERY_S:
                    return
                last, step = time.monotonic(), self._elapsed()
                points = [Point("progress/fraction", step, done / max(total, 1), "progress"), Point("progress/units", step, float(self.units), "progress")]
            self._live(points)

        yield advance

    def _elapsed(self) -> int:
        return int(time.monotonic() - self.start)

    def _live(self, points: list[Point]) -> None:
        self._each("progress", lambda t: t.texts(points) if isinstance(points[0].value, str) else t.scalars(points))

    def scored(self, entries: list[Entry], race: dict[str, Any]) -> None:
        """The population's fold-A rewards and its race (report.json's ``population/rewards`` and ``racing``), and
        ``racing/stage``: the racing stage (1-based) each entry reached."""
        stages = race["stages"]
        reached = [stages.index(m) + 1 if m in stages else len(stages) for m in race["examples"]]
        self.log(population={"rewards": [e.reward for e in entries]}, racing={**race, "stage": reached})

    def finish(self, report: dict[str, Any], artifacts: Iterable[Path]) -> None:
        """What the report holds that the phases did not log, then its files (report.json, report.png, the card); closes."""
        self.log(**report)
        for path in artifacts:
            if path.is_file():
                self._each(f"artifact {path.name}", lambda t, path=path: t.artifact(path))
        self.close()

    def close(self) -> None:
        if self.reporter is not None:
            progress.set_reporter(self.reporter)
            self.reporter = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close()
            except Exception as exc:
                log_traceback(f"tracker {tracker.name}, closing", exc)
                log.warning("tracking: %s failed while closing (%s)", tracker.name, first_line(exc))
        atexit.unregister(self.close)


def open_run(recipe: Recipe) -> Tracking:
    """The trackers ``recipe.tracking`` names, opened, with the resolved recipe as their config (a listed population
    of more than ``CONFIG_ENTRIES`` entries as its size). A tracker that cannot start is a warning and the run goes on
    without it; one that is not installed is refused by ``require``, which the command calls before anything loads.
    """
    spec = recipe.tracking
    if spec is None or not spec.report_to:
        return Tracking([])
    require(spec)
    name = spec.run_name or Path(recipe.output.path).name or "corpmerge"
    work = recipe.output.work_path
    started = time.strftime("%Y%m%d-%H%M%S")  # a resumed run is a new TensorBoard run beside the killed one, as transformers names them
    info = RunInfo(name, spec.project, work, Path(spec.logging_dir) if spec.logging_dir else work / "runs" / f"{started}_{name}")
    trackers: list[Tracker] = []
    for tracker_name in spec.report_to:
        try:
            trackers.append(importlib.import_module(f"corpmerge.tracking.{tracker_name}").open_tracker(info))
        except Exception as exc:
            log_traceback(f"tracker {tracker_name}, opening", exc)
            log.warning("tracking: %s could not start (%s); the run goes on without it", tracker_name, first_line(exc))
    config = recipe.dump()
    listed = recipe.listed()
    if len(listed) > CONFIG_ENTRIES:
        config["population"] = f"{len(listed)} listed entries" + (f" at rank {recipe.rank}" if recipe.rank is not None else "")
    tracking = Tracking(trackers)
    tracking.config({"corpmerge_version": __version__, **config})
    return tracking
