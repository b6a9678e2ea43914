"""Adapter to lm-evaluation-harness: tasks built once, evaluated on chosen examples of a live model."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import torch

from corpmerge.errors import CorpmergeError, first_line, log_traceback
from corpmerge.recipe import ScoringSpec
from corpmerge.scoring.answers import prediction
from corpmerge.scoring.declarations import answer_extractor, declared_cluster, declared_dataset, leaf_configs, runs_code
from corpmerge.tasks import tasks_dir

log = logging.getLogger(__name__)


def quiet_third_party(verbose: bool = False) -> None:
    """Silence lm-eval/datasets/transformers progress bars and INFO chatter (corpmerge shows its own)."""
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


@dataclass(frozen=True)
class ExampleScore:
    """One example's score: the reward metric's value and whether it counts as correct."""

    value: float
    correct: bool
    prediction: str | None = None


def include_paths(spec: ScoringSpec) -> list[str]:
    """corpmerge's task folder, then the recipe's ``scoring.include_path`` (checked to exist)."""
    if spec.include_path and not os.path.exists(spec.include_path):
        raise CorpmergeError(f"scoring.include_path: '{spec.include_path}' not found")
    return [str(tasks_dir())] + ([spec.include_path] if spec.include_path else [])


def task_manager(names: list[str], include: list[str], metadata: dict[str, Any]) -> Any:
    """An lm-eval TaskManager over corpmerge's tasks and the include path; lm-eval's own index only if
    a name needs it (~10 s). Built once per process for the same arguments."""
    manager = _manager(tuple(include), False, json.dumps(metadata, sort_keys=True, default=str))
    if not all(name in manager.all_tasks for name in names):
        manager = _manager(tuple(include), True, json.dumps(metadata, sort_keys=True, default=str))
    return manager


@functools.lru_cache(maxsize=8)
def _manager(include: tuple[str, ...], defaults: bool, metadata: str) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=defaults, include_path=list(include), metadata=json.loads(metadata) or None)


def code_tasks(spec: ScoringSpec, names: list[str]) -> list[str]:
    """The tasks among ``names`` (groups and tags expanded) whose YAML declares ``unsafe_code: true``,
    read from the task index: nothing is built and no task code is imported."""
    index = task_manager(names, include_paths(spec), spec.task_args).task_index
    return sorted(name for name, config in leaf_configs(index, names).items() if runs_code(config))


def _load_tasks(names: list[str], include: list[str], metadata: dict[str, Any]) -> dict[str, Any]:
    """Load from corpmerge's tasks and the include path (lm-eval's own only when needed)."""
    manager = task_manager(names, include, metadata)
    missing = [name for name in names if name not in manager.all_tasks]
    if missing:
        raise CorpmergeError(
            f"scoring.tasks: unknown task(s) {', '.join(missing)}; see `corpmerge tasks`, or set scoring.include_path to your task YAML folder"
        )
    try:
        return manager.load(names)
    except Exception as exc:  # lm-eval raises many types for broken task files; the traceback says where
        log_traceback(f"loading tasks {', '.join(names)}", exc)
        raise CorpmergeError(f"scoring.tasks: cannot load {', '.join(names)}: {first_line(exc)}") from None


def _leaf_tasks(loaded: dict[str, Any]) -> dict[str, Any]:
    return dict(loaded["tasks"]) if "tasks" in loaded else dict(loaded)


class TaskSuite:
    """The recipe's lm-eval tasks, loaded once, with a chosen split as the evaluated one."""

    def __init__(self, spec: ScoringSpec, tasks: list[str] | None = None, split: str | None = None):
        self.spec = spec
        names = list(tasks or spec.tasks)
        self.loaded = _load_tasks(names, include_paths(spec), spec.task_args)
        self.tasks = _leaf_tasks(self.loaded)
        if not self.tasks:
            raise CorpmergeError(f"scoring.tasks: {names} contain no task")
        self.answers = {name: answer_extractor(name, task.config.metadata) for name, task in self.tasks.items()}
        declared = {name: declared_dataset(task.config.metadata) for name, task in self.tasks.items()}
        self.datasets = {name: dataset for name, dataset in declared.items() if dataset}  # {task: Hub dataset}
        clustered = {name: declared_cluster(name, task.config.metadata) for name, task in self.tasks.items()}
        self.cluster_by = {name: field for name, field in clustered.items() if field}  # {task: document field}
        self.split = {name: self._use_split(name, task, split) for name, task in self.tasks.items()}
        for name, field in self.cluster_by.items():
            docs = self.tasks[name].eval_docs
            if len(docs) and field not in docs[0]:
                raise CorpmergeError(f"task '{name}': metadata.cluster_by '{field}' is not a field of its documents (they have {', '.join(docs[0])})")
        if spec.num_fewshot is not None:  # once here, not on every evaluation
            for task in self.tasks.values():
                task.set_config(key="num_fewshot", value=spec.num_fewshot)
        for name, task in self.tasks.items():
            _fewshot_per_document(name, task)

    def _use_split(self, name: str, task: Any, split: str | None) -> str:
        """Point the task's evaluated split at ``split`` (support: training split by default)."""
        config = task.config
        if split is None:  # support set: never the test split
            split = self.spec.support.split or config.training_split or config.validation_split
            if split is None:
                raise CorpmergeError(f"scoring.support.split: task '{name}' has no training or validation split to draw support examples from; name one")
            if split == config.test_split:
                raise CorpmergeError(f"scoring.support.split: '{split}' is task '{name}''s test split; the support set must not use it")
        available = list(task.dataset.keys()) if getattr(task, "dataset", None) is not None else []
        if available and split not in available:
            raise CorpmergeError(f"split '{split}' not found in task '{name}' (it has {', '.join(available)})")
        config.test_split = split
        return split

    def doc_count(self, name: str) -> int:
        return len(self.tasks[name].eval_docs)

    def clusters(self, keys: list[tuple[str, int]]) -> list[str] | None:
        """The cluster of each (task, doc_id): ``task:value`` of the task's ``cluster_by`` field, the example itself
        for a task that declares none; None when no task declares one."""
        if not self.cluster_by:
            return None
        out = []
        for name, doc in keys:
            field = self.cluster_by.get(name)
            if field is None:
                out.append(f"{name}#{doc}")
                continue
            out.append(f"{name}:{self.tasks[name].eval_docs[doc][field]}")
        return out

    def cluster_labels(self) -> dict[str, list[Any]]:
        """{task: its ``cluster_by`` value for each doc, by doc id} for the tasks that declare one (how folds are cut)."""
        return {name: [doc[field] for doc in self.tasks[name].eval_docs] for name, field in self.cluster_by.items()}

    def fingerprint(self) -> str:
        """Hash of the task configs, evaluated splits and scoring options; not of where the task YAML lies
        (lm-eval's ``metadata.config_source``), so a store stays valid when corpmerge is installed elsewhere,
        nor of ``metadata.cluster_by``, which groups examples in the report and changes no score."""
        configs = {name: scored_config(task.dump_config()) for name, task in sorted(self.tasks.items())}
        options = {
            "split": self.split,
            "chat": self.spec.apply_chat_template,
            "fewshot": self.spec.num_fewshot,
            "metric": self.spec.metric,
        }
        if self.spec.num_fewshot:  # few-shot examples per document (stores made before drew them per evaluation)
            options["fewshot_sampling"] = "per-document"
        blob = json.dumps([configs, options], sort_keys=True, default=_stable)
        return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()

    def evaluate(self, lm: Any, docs: dict[str, list[int]]) -> dict[tuple[str, int], ExampleScore]:
        """Evaluate the live model on ``docs`` ({task: doc ids}); one score per example."""
        from lm_eval import evaluator

        wanted = {name: sorted(ids) for name, ids in docs.items() if ids}
        if not wanted:
            return {}
        subset = {"tasks": {n: self.tasks[n] for n in wanted}, "groups": {}, "group_map": {}}
        with torch.inference_mode():
            result = evaluator.evaluate(  # code rewards were allowed up front (session.check_code_isolation)
                lm,
                subset,
                samples=wanted,
                bootstrap_iters=0,
                log_samples=True,
                apply_chat_template=self.spec.apply_chat_template,
                verbosity="ERROR",
                confirm_run_unsafe_code=True,
            )
        metric, _, wanted_filter = (self.spec.metric or "").partition(",")
        scores: dict[tuple[str, int], ExampleScore] = {}
        for name in wanted:
            for sample in result["samples"][name]:
                key = (name, int(sample["doc_id"]))
                if key in scores or (wanted_filter and sample["filter"] != wanted_filter):
                    continue  # one filter per example: the named one, else the first reported
                scores[key] = self._score(name, sample, metric)
            if wanted_filter and not any(k[0] == name for k in scores):
                raise CorpmergeError(f"scoring.metric: task '{name}' has no filter '{wanted_filter}'")
        return scores

    def _score(self, name: str, sample: dict[str, Any], metric: str) -> ExampleScore:
        metric = metric or sample["metrics"][0]
        if metric not in sample:
            raise CorpmergeError(f"scoring.metric: task '{name}' reports {sample['metrics']}, not '{metric}'")
        value = float(sample[metric])
        correct = bool(sample["correct"]) if "correct" in sample else value >= 1.0 - 1e-9
        task = self.tasks[name]
        if task.OUTPUT_TYPE == "multiple_choice":  # the option the reward metric picks, not always the raw argmax
            vote = prediction(task.OUTPUT_TYPE, sample["filtered_resps"], metric, task.doc_to_choice(sample["doc"]))
        else:
            vote = prediction(task.OUTPUT_TYPE, sample["filtered_resps"][0], extract=self.answers[name])
        return ExampleScore(value, correct, vote)


def _fewshot_per_document(name: str, task: Any) -> None:
    """Each document's few-shot examples chosen by a generator seeded from (task, document): lm-eval's sampler keeps one
    generator per task that advances with every prompt, so the same example got other few-shot examples in every
    evaluation (a racing stage, a gate fold, the same weights twice) and a paired difference measured the prompts."""
    sampler = getattr(task, "sampler", None)
    if sampler is None:
        return
    context = task.fewshot_context

    def fewshot_context(doc: Any, *args: Any, **kwargs: Any) -> Any:
        text = json.dumps(doc, sort_keys=True, default=str)
        sampler.rnd = random.Random(int.from_bytes(hashlib.blake2b(f"{name}\0{text}".encode(), digest_size=8).digest(), "little"))
        return context(doc, *args, **kwargs)

    task.fewshot_context = fewshot_context


UNSCORED_METADATA = ("config_source", "cluster_by")  # where the YAML lies; how the report groups examples


def scored_config(config: dict[str, Any]) -> dict[str, Any]:
    """A task config without the metadata that changes no score (``UNSCORED_METADATA``)."""
    metadata = config.get("metadata")
    if not isinstance(metadata, dict) or not any(k in metadata for k in UNSCORED_METADATA):
        return config
    return {**config, "metadata": {k: v for k, v in metadata.items() if k not in UNSCORED_METADATA}}


def _stable(value: Any) -> str:
    """A JSON stand-in that is the same in every process (a function by its name, not its address)."""
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return str(value)


def make_lm(model: torch.nn.Module, tokenizer: Any, batch_size: int | str) -> Any:
    """An lm-eval HFLM around the live model object (sees in-place weight edits), without tqdm bars."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):  # type: ignore[override]
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):  # type: ignore[override]
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):  # type: ignore[override]
            return super().generate_until(requests, disable_tqdm=True)

    device = str(next(model.parameters()).device)
    return QuietHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
