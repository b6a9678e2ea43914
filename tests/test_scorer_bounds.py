"""The scorer refuses, before writing anything, an update whose weights could leave the scoring dtype's finite range
(Σ|aₖ|·max|ε| beyond the room above max|θ₀|), naming the entry; in range, the weights are written as usual."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_dtype import bf16_recipe

from corpmerge.amplitudes import Amplitudes
from corpmerge.errors import CorpmergeError
from corpmerge.population import Entry
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session


def test_an_update_past_the_dtypes_range_is_refused_before_anything_is_written(tmp_path, tiny_model, tiny_task):
    session = open_session(parse_recipe(bf16_recipe(tiny_model, tiny_task, tmp_path / "out")))
    try:
        scorer = session.scorer
        params = {n: p for n, p in session.model.named_parameters() if n in scorer.theta0}
        scorer.apply(entry_update(Entry(3, 0.01)))
        before = {n: p.detach().clone() for n, p in params.items()}
        with pytest.raises(CorpmergeError, match=r"^scoring: entry seed 5, σ = 1e\+38 can move a weight by up to 1e\+39, past bfloat16's finite range"):
            scorer.apply(entry_update(Entry(5, 1e38)))
        with pytest.raises(CorpmergeError, match="an update of 2 seeds"):
            scorer.apply(Amplitudes(np.array([5, 6]), np.array([2e37, -2e37])))
        assert all(torch.equal(p, before[n]) for n, p in params.items())  # nothing was written
        scorer.apply(entry_update(Entry(5, 1e30)))  # far from the edge: written
        assert all(torch.isfinite(p).all() for p in params.values())
    finally:
        session.close()
