"""Where the paper tasks' data comes from: a local folder when one is configured, else the Hub.

A task looks for ``data_dir`` in its metadata (a recipe's ``scoring.task_args`` or
``lm_eval --metadata '{"data_dir": ...}'``), then in ``CORPMERGE_<TASK>_DIR``. A local folder
holds ``<split>.jsonl`` files; without one the task loads its Hub dataset (needs network).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def local_dir(task: str, metadata: dict[str, Any]) -> Path | None:
    value = metadata.get("data_dir") or os.environ.get(f"CORPMERGE_{task.upper()}_DIR")
    return Path(value).expanduser() if value else None


def load_splits(task: str, metadata: dict[str, Any], splits: list[str], hub: Callable[[], Any]) -> Any:
    """A DatasetDict of ``splits`` from ``<data_dir>/<split>.jsonl``, else from ``hub()``."""
    import datasets

    folder = local_dir(task, metadata)
    if folder is None:
        return hub()
    files = {split: str(folder / f"{split}.jsonl") for split in splits if (folder / f"{split}.jsonl").is_file()}
    if not files:
        raise FileNotFoundError(f"{task}: no {'/'.join(s + '.jsonl' for s in splits)} in {folder}")
    return datasets.load_dataset("json", data_files=files)


def map_splits(data: Any, fn: Callable[[dict, int], dict]) -> Any:
    """Apply ``fn(row, index)`` to every split."""
    import datasets

    return datasets.DatasetDict({name: split.map(fn, with_indices=True) for name, split in data.items()})
