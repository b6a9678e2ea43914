"""What a task declares in its YAML that corpmerge acts on.

- ``unsafe_code: true`` (lm-eval's own flag): its reward runs model-written code. corpmerge then
  checks up front that the OS sandbox can be set up (``corpmerge.rewards.sandbox``) and refuses
  the run in one line where it cannot, unless the recipe opts out
  (``scoring.allow_unsandboxed_code``); the reward must run programs through
  ``corpmerge.rewards.sandbox`` (``run_tests`` / ``run_python``) to be isolated.
- ``metadata.answer``: the answer the RandOpt vote counts on a generation task — the name of one
  of corpmerge's extractors (``corpmerge.scoring.answers.ANSWERS``) or ``!function module.fn``
  (a function of the completion returning the answer, or None for no answer).
- ``metadata.dataset``: the Hub dataset the task's examples come from (the model card's ``datasets``).

The code flag is read from lm-eval's task index (includes resolved, nothing built or imported),
so a run is refused before the model loads; the others from a loaded task's config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corpmerge.errors import CorpmergeError
from corpmerge.scoring.answers import ANSWERS, Extractor


def runs_code(config: Mapping[str, Any]) -> bool:
    """Whether a task config declares ``unsafe_code`` (as lm-eval reads it: anything but false)."""
    return config.get("unsafe_code", False) is not False


def leaf_configs(index: Mapping[str, Any], names: Iterable[str]) -> dict[str, Mapping[str, Any]]:
    """The raw configs of the tasks that ``names`` stand for in lm-eval's task index, groups and tags expanded.

    Names the index does not know are left out (loading the tasks reports them).
    """
    found: dict[str, Mapping[str, Any]] = {}
    todo: list[Any] = list(names)
    seen: set[str] = set()
    while todo:
        item = todo.pop()
        if isinstance(item, Mapping):  # a group member given inline: {task: name, ...overrides}
            name = item.get("task")
            if isinstance(name, str):
                entry = index.get(name)
                found[name] = {**((entry.cfg or {}) if entry is not None else {}), **item}
            continue
        if not isinstance(item, str) or item in seen:
            continue
        seen.add(item)
        entry = index.get(item)
        if entry is None:
            continue
        if entry.kind.name == "GROUP":
            members = (entry.cfg or {}).get("task") or []
            todo.extend(members if isinstance(members, list) else [members])
        elif entry.kind.name == "TAG":
            todo.extend(sorted(entry.tags))
        elif entry.cfg is not None:
            found[item] = entry.cfg
    return found


def answer_extractor(task: str, metadata: Mapping[str, Any] | None) -> Extractor | None:
    """The extractor a task names in ``metadata.answer`` (None: the vote counts the stripped completion)."""
    declared = (metadata or {}).get("answer")
    if declared is None or callable(declared):
        return declared
    if isinstance(declared, str) and declared in ANSWERS:
        return ANSWERS[declared]
    raise CorpmergeError(
        f"task '{task}': metadata.answer {declared!r} is not an answer extractor; name one of {', '.join(ANSWERS)} "
        "or give `!function module.fn` in the task YAML"
    )


def declared_dataset(metadata: Mapping[str, Any] | None) -> str | None:
    """The Hub dataset a task names in ``metadata.dataset``, if any."""
    dataset = (metadata or {}).get("dataset")
    return dataset if isinstance(dataset, str) and dataset else None


def declared_cluster(task: str, metadata: Mapping[str, Any] | None) -> str | None:
    """The document field a task names in ``metadata.cluster_by``: examples sharing its value are one cluster
    (e.g. a question asked again with other choices), so held-out intervals treat them as dependent."""
    field = (metadata or {}).get("cluster_by")
    if field is None:
        return None
    if not isinstance(field, str) or not field:
        raise CorpmergeError(f"task '{task}': metadata.cluster_by must name a field of the task's documents (got {field!r})")
    return field
