"""The evaluator's LoRA batches: population entries with the same examples and suite scored together (up to the scorer's
``batch_limit``), every other unit alone; progress and store commits per unit, so an interrupted batch resumes."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from corpmerge import progress
from corpmerge.amplitudes import Amplitudes
from corpmerge.population import Entry
from corpmerge.scoring.evaluator import LocalEvaluator, Request, Unit, batches
from corpmerge.scoring.lmeval import ExampleScore
from corpmerge.scoring.scorer import Scorer, entry_update
from corpmerge.scoring.store import ScoreStore
from corpmerge.scoring.subjects import entry_subject, update_subject

DOCS, FEWER = {"t": [0, 1, 2]}, {"t": [0, 1]}


class FakeScorer:
    """Scores an example by the update's first seed; records each call as ("many", n) or ("one", subject-ish)."""

    def __init__(self, limit: int):
        self.batch_limit, self.calls = limit, []

    def evaluate(self, update, docs, suite=None, then=None):
        self.calls.append(("one", None if update is None else int(update.nonzero().seeds[0])))
        return scored(update, docs)

    def evaluate_many(self, updates, docs, suite=None):
        assert len(updates) <= self.batch_limit
        self.calls.append(("many", [int(u.nonzero().seeds[0]) for u in updates]))
        return [scored(u, docs) for u in updates]


def scored(update, docs):
    seed = 0 if update is None else int(update.nonzero().seeds[0])
    return {(task, doc): ExampleScore(float(seed + doc), True, "") for task in docs for doc in docs[task]}


def entry_request(seed: int, docs=DOCS, suite: str = "support") -> Request:
    entry = Entry(seed, 0.1)
    return Request(entry_subject(entry), "A", docs, entry_update(entry), suite=suite)


def unit(request: Request) -> Unit:
    return Unit(0, request.subject, request.fold, request.docs, request.update, request.suite)


def test_entries_with_the_same_examples_and_suite_are_batched_and_everything_else_is_alone():
    single_seed_merge = Amplitudes(np.array([1]), np.array([0.2]))  # a candidate of one seed: not an entry, so not batched
    units = [unit(r) for r in [entry_request(1), Request("base", "A", DOCS), entry_request(2), entry_request(3, FEWER), entry_request(4)]]
    units += [unit(Request(update_subject(single_seed_merge), "B", DOCS, single_seed_merge)), unit(entry_request(5, suite="evaluate"))]
    got = [(lora, [u.subject.split(":")[1] if u.subject.startswith("entry:") else u.subject[:6] for u in group]) for lora, group in batches(units, 2)]
    assert got == [(True, ["1", "2"]), (False, ["base"]), (True, ["3"]), (True, ["4"]), (False, ["update"]), (True, ["5"])]
    assert all(not lora and len(group) == 1 for lora, group in batches(units, 0))  # a scorer without LoRA: one at a time


def test_the_evaluator_commits_and_reports_each_unit_and_an_interrupted_batch_resumes(tmp_path):
    store = ScoreStore(tmp_path / "s.sqlite", {"k": "v"})
    requests = [Request("base", "A", DOCS)] + [entry_request(seed) for seed in range(1, 6)]
    steps: list[int] = []

    @contextmanager
    def reporter(description, total):
        steps.append(total)
        yield lambda: steps.append(0)

    progress.set_reporter(reporter)
    try:
        scorer = FakeScorer(limit=3)
        evaluator = LocalEvaluator(scorer, store, lambda key: None)
        save, saved = store.save, []

        def failing_save(subject, *args):
            if len(saved) == 3:
                raise KeyboardInterrupt
            saved.append(subject)
            save(subject, *args)

        store.save = failing_save
        with pytest.raises(KeyboardInterrupt):
            evaluator.run(requests, "scoring")
        assert scorer.calls == [("one", None), ("many", [1, 2, 3])] and steps == [6, 0, 0, 0]  # base, then two of the batch
        store.save, scorer.calls, steps[:] = save, [], []
        results = evaluator.run(requests, "scoring")
        assert scorer.calls == [("many", [3, 4, 5])] and steps == [3, 0, 0, 0]  # only what was not committed
        assert [r[("t", 2)].value for r in results] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    finally:
        progress.set_reporter(None)
        store.close()


def test_an_update_whose_amplitudes_all_cancel_is_loaded_as_theta0():
    """Without in-place writes (vLLM at rank r), a merge of a mirrored pair with equal weights goes through ``load``: θ₀."""

    class Loads:
        device, dtype = torch.device("cpu"), torch.bfloat16

        def load(self, tensors):
            self.loaded = dict(tensors)

    backend, theta0 = Loads(), {"w": torch.randn(4, 3)}
    Scorer(backend, theta0, suite=None, rank=1).apply(Amplitudes(np.array([5]), np.array([0.0])))
    assert backend.loaded.keys() == {"w"} and torch.equal(backend.loaded["w"], theta0["w"].to(torch.bfloat16))
