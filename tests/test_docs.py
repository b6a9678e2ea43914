"""The recipe reference (docs/recipe.md) documents exactly the keys the recipe schema accepts, with the schema's defaults.

Keys are dotted paths from the top of a recipe: a field that holds a section (a pydantic model) is a key and so is
every field inside it (``scoring``, ``scoring.racing``, ``scoring.racing.z``); the fields of a list's items are
``population[].seed``; a free-form mapping (``parameters``, ``scoring.model_args``, ``scoring.task_args``) is one key.
Method parameters are keys under ``parameters.`` (``parameters.beta``), and their table names the methods that take
each one. The documented keys are the backticked names in the first column of every table in docs/recipe.md.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from corpmerge.methods import registry
from corpmerge.recipe import Recipe

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "recipe.md"


def _models(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The sections inside a field's type, each with the key suffix that leads to its fields ('.' or '[].')."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(".", annotation)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models(args[0])
    if origin in (typing.Union, types.UnionType):
        return [found for arg in args for found in _models(arg)]
    if origin is list:
        return [("[]" + suffix, model) for suffix, model in _models(args[0])]
    return []  # scalars, literals and free-form mappings (dict[str, Any]) are leaves


def schema_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every key of ``model`` (recursively) → its pydantic FieldInfo."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        fields[key] = info
        for suffix, sub in _models(info.annotation):
            fields.update(schema_fields(sub, key + suffix))
    return fields


def builtin_methods() -> dict[str, registry.MergeMethod]:
    """The methods corpmerge ships (a test may have registered one of its own in this process)."""
    return {name: m for name, m in registry._REGISTRY.items() if m.fn.__module__.startswith("corpmerge.methods.")}


def method_parameters() -> dict[str, dict[str, Any]]:
    """``parameters.<name>`` → {method: its default} over the built-in methods."""
    params: dict[str, dict[str, Any]] = {}
    for method, spec in builtin_methods().items():
        for name, info in spec.params.model_fields.items():
            params.setdefault(f"parameters.{info.alias or name}", {})[method] = info.default
    return params


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def documented_rows() -> list[tuple[list[str], list[str]]]:
    """(keys, cells) of every table row of the reference whose first cell names keys."""
    rows = []
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|?", line.strip()):
            continue
        cells = _cells(line)
        keys = re.findall(r"`([^`]+)`", cells[0])
        if keys:
            rows.append((keys, cells))
    return rows


def test_every_recipe_key_is_documented_and_every_documented_key_exists() -> None:
    schema = set(schema_fields(Recipe)) | set(method_parameters())
    documented: list[str] = [key for keys, _ in documented_rows() for key in keys]
    twice = sorted({key for key in documented if documented.count(key) > 1})
    missing = sorted(schema - set(documented))
    unknown = sorted(set(documented) - schema)
    assert not missing and not unknown and not twice, (
        f"docs/recipe.md disagrees with the recipe schema: missing from the reference {missing}; "
        f"documented but not in the schema {unknown}; documented twice {twice}"
    )


def _literal(text: str) -> Any:
    return yaml.safe_load(text)


def test_documented_defaults_are_the_schemas() -> None:
    """A default cell says `required` for a required key, else (for a concrete default) is that value in backticks."""
    fields = schema_fields(Recipe)
    wrong = []
    for keys, cells in documented_rows():
        schema_keys = [key for key in keys if key in fields]
        if not schema_keys:
            continue
        defaults = re.findall(r"`([^`]+)`", cells[1])
        for i, key in enumerate(schema_keys):
            info = fields[key]
            if info.is_required():
                if cells[1] != "required":
                    wrong.append(f"{key}: required, documented as {cells[1]!r}")
                continue
            default = info.get_default(call_default_factory=True)
            if default is None or isinstance(default, BaseModel):
                continue  # a default the meaning column describes (`<work_dir>/scores.sqlite`), or a section
            given = defaults[i] if len(defaults) == len(schema_keys) else None
            if given is None or _literal(given) != default:
                wrong.append(f"{key}: default {default!r}, documented as {cells[1]!r}")
    assert not wrong, "docs/recipe.md: " + "; ".join(wrong)


def test_method_parameter_rows_name_the_methods_that_take_them() -> None:
    params = method_parameters()
    wrong = []
    for keys, cells in documented_rows():
        for key in keys:
            if key not in params:
                continue
            named = set(re.findall(r"`([^`]+)`", cells[1]))
            if named != set(params[key]):
                wrong.append(f"{key}: taken by {sorted(params[key])}, documented for {sorted(named)}")
            for method, default in params[key].items():
                if default is PydanticUndefined:
                    continue
                shown = re.search(rf"`{re.escape(method)}`[^;]*?\((?:default )?([^)]+)\)", cells[1])
                if shown is None or _literal(shown.group(1)) != default:
                    wrong.append(f"{key}: {method}'s default is {default!r}, documented as {cells[1]!r}")
    assert not wrong, "docs/recipe.md: " + "; ".join(wrong)


def test_relative_links_resolve() -> None:
    """Every relative link of the README, CONTRIBUTING.md and docs/ names a file that exists (anchors are not checked)."""
    root = REFERENCE.parent.parent
    broken = []
    for page in [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(root)} → {target}")
    assert not broken, f"broken links: {broken}"
