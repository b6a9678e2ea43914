"""corpmerge's lm-eval tasks (YAML + small reward modules), usable by recipes and by `lm_eval`.

Recipes name them directly (`tasks: [corpmerge_arith]`); for `lm_eval` itself pass
`--include_path $(python -c "import corpmerge.tasks as t; print(t.tasks_dir())")`.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def tasks_dir() -> Path:
    """The include path holding every corpmerge task."""
    return Path(__file__).parent


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def list_tasks() -> dict[str, str]:
    """{task name: first line of its description} for every shipped task."""
    found = {}
    for path in sorted(tasks_dir().glob("*/*.yaml")):
        config = yaml.load(path.read_text(), Loader=_Loader) or {}
        if "task" in config:
            found[config["task"]] = (config.get("metadata") or {}).get("summary", "")
    return found
