"""The package layout is the data flow: every module imports only its own stage and the stages below it."""

from __future__ import annotations

import ast
from pathlib import Path

import corpmerge

ROOT = Path(corpmerge.__file__).parent
FOUNDATION = {"errors", "progress", "noise", "sizes", "population", "dtypes", "yaml_io", "recipe", "amplitudes", "model_io", "comparison", "tracking"}
# stage → what it may import (besides itself and the standard library / third parties)
ALLOWED = {
    "foundation": FOUNDATION,
    "rewards": set(),
    "tasks": {"rewards"},
    "scoring": FOUNDATION | {"rewards", "tasks"},
    "methods": FOUNDATION,
    "plan": FOUNDATION | {"rewards", "tasks", "scoring", "methods"},
    "gate": FOUNDATION | {"rewards", "tasks", "scoring", "methods", "plan"},
    "output": FOUNDATION | {"methods"},
    "report": FOUNDATION | {"rewards", "tasks", "scoring", "methods", "plan", "gate", "output"},
}


def _stage(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    if len(rel) > 1:
        return "foundation" if rel[0] in FOUNDATION else rel[0]
    return "foundation" if path.stem in FOUNDATION else path.stem


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("corpmerge."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "corpmerge":
            found |= {a.name for a in node.names if a.name != "__version__"}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("corpmerge.")}
    return found


def test_every_stage_imports_only_lower_stages():
    bad = []
    for path in ROOT.rglob("*.py"):
        stage = _stage(path)
        if stage not in ALLOWED:
            continue  # the top of the pipeline (merge, pipeline, cli, __main__) may import anything
        own = {path.relative_to(ROOT).parts[0].removesuffix(".py")} if stage == "foundation" else {stage}
        for target in _imports(path) - own:
            target_stage = "foundation" if target in FOUNDATION else target
            if target_stage != stage and target not in ALLOWED[stage]:
                bad.append(f"{path.relative_to(ROOT)} imports corpmerge.{target}")
    assert not bad, bad


def test_public_imports_stay_stable():
    from corpmerge.noise import gaussian  # noqa: F401
    from corpmerge.tasks import tasks_dir

    assert (tasks_dir() / "arith").is_dir()
