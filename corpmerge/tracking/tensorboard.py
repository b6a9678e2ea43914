"""TensorBoard: event files under ``tracking.logging_dir`` (default ``<work_dir>/runs/<start time>_<run_name>``).

Scalars at their steps, texts (the gate's reason, grid points) as text summaries, the config as one YAML text,
report.png as an image; every artifact is also copied into ``<logging_dir>/artifacts``. Needs ``tensorboard``
(torch's ``SummaryWriter`` writes the files)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from corpmerge.tracking import Point, RunInfo
from corpmerge.yaml_io import dump_yaml

log = logging.getLogger(__name__)


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = info.logging_dir
        self.writer = SummaryWriter(log_dir=str(self.dir))
        log.info("tracking: TensorBoard event files in %s (tensorboard --logdir %s)", self.dir, self.dir.parent)

    def config(self, values: dict[str, Any]) -> None:
        self.writer.add_text("config", "```yaml\n" + dump_yaml(values) + "```", 0)
        self.writer.flush()

    def scalars(self, points: list[Point]) -> None:
        for p in points:
            self.writer.add_scalar(p.tag, p.value, p.step)
        self.writer.flush()  # a live TensorBoard shows each phase as it ends

    def texts(self, points: list[Point]) -> None:
        for p in points:
            self.writer.add_text(p.tag, p.value, p.step)
        self.writer.flush()

    def artifact(self, path: Path) -> None:
        folder = self.dir / "artifacts"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)
        if path.suffix == ".png":
            from matplotlib.image import imread

            self.writer.add_image(path.stem, imread(path)[..., :3], 0, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tracker(info: RunInfo) -> TensorBoardTracker:
    return TensorBoardTracker(info)
