"""The next entry's noise is drawn while the current one evaluates: same bits, only when the budget allows,
and by default not when the scoring device is the CPU (the draw and the evaluation would share its cores)."""

from __future__ import annotations

import torch
from conftest import scoring_recipe

from corpmerge.noise import DEFAULT_SCHEME, LEGACY_SCHEME
from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session, use_prefetch


def test_a_prefetched_entry_is_the_same_bits_as_a_drawn_one(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"].update(memory_budget="1GB", prefetch=True)
    data["noise"] = LEGACY_SCHEME  # drawn on the host (the portable scheme's entries are written by the fused kernel: nothing to prefetch)
    session = open_session(parse_recipe(data))
    try:
        scorer, docs = session.scorer, {t: d[:4] for t, d in session.folds["A"].items()}
        params = {n: p for n, p in session.model.named_parameters() if n in scorer.theta0}
        original = {n: p.detach().clone() for n, p in params.items()}
        first, second = entry_update(Entry(21, 0.03)), entry_update(Entry(22, 0.05))
        taken = []
        take = scorer.prefetch.take
        scorer.prefetch.take = lambda amps: taken.append(result := take(amps)) or result
        scorer.evaluate(first, docs, then=second)
        scorer.evaluate(second, docs)
        assert taken[-1] is not None  # the second entry came from the background draw
        for name, param in params.items():
            assert torch.equal(param, original[name] + second.delta(name, param.shape, scheme=LEGACY_SCHEME)), name
        scorer.evaluate(first, docs, then=entry_update(Entry(23, 0.01)))  # a prefetch that is not used next
        scorer.evaluate(second, docs)
        assert taken[-1] is None
        for name, param in params.items():
            assert torch.equal(param, original[name] + second.delta(name, param.shape, scheme=LEGACY_SCHEME)), name
    finally:
        session.close()


def test_no_prefetch_slot_when_the_budget_holds_one_model(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"].update(memory_budget="1", prefetch=True)
    session = open_session(parse_recipe(data))
    try:
        assert session.scorer.prefetch is None
    finally:
        session.close()


def test_no_prefetch_by_default_when_scoring_on_the_cpu(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["memory_budget"] = "1GB"
    session = open_session(parse_recipe(data))
    try:
        assert session.backend.device_type == "cpu" and session.scorer.prefetch is None
    finally:
        session.close()


def test_the_default_is_on_for_an_accelerator_and_off_for_the_cpu_and_a_setting_wins():
    assert use_prefetch(None, "cuda", LEGACY_SCHEME) and not use_prefetch(None, "cpu", LEGACY_SCHEME)
    assert not use_prefetch(None, "cuda", DEFAULT_SCHEME)  # the portable scheme draws on the device itself
    assert use_prefetch(True, "cpu", DEFAULT_SCHEME) and not use_prefetch(False, "cuda", LEGACY_SCHEME)
