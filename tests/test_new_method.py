"""Adding a method is one file: a parameter model, a function and its declarations; plan, gate, probe, stage 2 and the
report need nothing else (no method or parameter names outside ``corpmerge/methods``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import scoring_recipe
from pydantic import Field

from corpmerge.amplitudes import Cloud
from corpmerge.errors import CorpmergeError
from corpmerge.gate.paired import PairedStats
from corpmerge.methods import MergeResult, MethodParams, merge_method, registry
from corpmerge.methods.weights import elite_indices
from corpmerge.plan import check_recipe
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.racing import entries_to_keep


class EvenParams(MethodParams):
    top: float = Field(default=0.5, ge=0, lt=1, description="elites: rewards ≥ this quantile")
    scale: float = Field(default=1.0, gt=0, description="step")


def even_mean(cloud: Cloud, p: EvenParams) -> MergeResult:
    """Δ = scale · the plain mean of the elites (fixed, equal weights)."""
    elite = elite_indices(cloud.rewards, p.top)
    weights = np.full(elite.size, 1.0 / elite.size)
    return MergeResult("even_mean", p.model_dump(), elite, weights, cloud.combine(elite, weights).scaled(p.scale))


@pytest.fixture
def methods(monkeypatch):
    """The registry, with additions undone after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry


def test_a_new_linear_method_goes_through_racing_gate_probe_and_stage2(tmp_path, tiny_model, tiny_task, methods, monkeypatch):
    import corpmerge.gate.procedure as gating
    from corpmerge.pipeline import run_recipe

    merge_method("even_mean", EvenParams, elites="top", step="scale")(even_mean)

    def always_passes(base, candidate, z, penalty, clusters=None):
        return PairedStats(len(base), 1, 0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)

    monkeypatch.setattr(gating, "paired_stats", always_passes)  # the plumbing, not the statistics, is under test
    data = scoring_recipe(
        tiny_model,
        tiny_task,
        tmp_path / "out",
        merge_method="even_mean",
        parameters={"top": [0.5], "scale": [1, 2]},
        iterate={"rounds": 1, "local_size": 4, "rank": 2},
    )
    report = run_recipe(parse_recipe(data))
    assert report["racing"]["keep"] == entries_to_keep(6, 0.5, 1)  # racing keeps the elites the declared `top` selects
    assert [c["params"] for c in report["candidates"]] == [{"top": 0.5, "scale": 1.0}, {"top": 0.5, "scale": 2.0}]
    assert report["gate"]["accepted"] and report["gate"]["multiplier"] == 4.0 and set(report["gate"]["probe"]) == {"0.5", "1.0", "2.0", "4.0"}
    assert report["population"]["elite_threshold"] == pytest.approx(np.quantile(report["population"]["rewards"], 0.5))
    assert report["candidates"][0]["ess"] == pytest.approx(report["candidates"][0]["elites"])  # equal weights
    assert report["stage2"]["accepted"] == 1 and len(report["stage2"]["rounds"][0]["candidates"]) == 2


def test_declarations_are_checked_and_a_tensorwise_method_cannot_be_a_stage2_step(tmp_path, tiny_model, tiny_task, methods):
    with pytest.raises(TypeError, match="elites='quantile' is not a field of EvenParams"):
        merge_method("bad", EvenParams, elites="quantile")(even_mean)
    merge_method("claims_tensorwise", EvenParams, linear=False, elites="top", step="scale")(even_mean)
    point = registry.get_method("claims_tensorwise").point({})
    cloud = Cloud(np.arange(3), np.eye(3), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(TypeError, match="declared to return a tensor-wise update"):
        registry.get_method("claims_tensorwise")(cloud, point)
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", merge_method="claims_tensorwise", parameters={"top": 0.5}, iterate={"rounds": 1})
    with pytest.raises(CorpmergeError, match="iterate: stage 2 needs .* amplitude table") as err:
        check_recipe(parse_recipe(data), needs_rewards=False)
    assert "claims_tensorwise" not in str(err.value) and "corp" in str(err.value)


def test_a_small_local_population_is_noted_with_the_size_that_gives_ten_elites(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", iterate={"local_size": 10}, parameters={"quantile": [0.5, 0.7], "beta": 1, "alpha": 1})
    notes = check_recipe(parse_recipe(data), needs_rewards=False).notes
    assert any("iterate.local_size: 10 local perturbations give 3 elites at quantile 0.7" in n and "at least 31" in n for n in notes)
    data["iterate"] = {"local_size": 31}
    assert not any("local_size" in n for n in check_recipe(parse_recipe(data), needs_rewards=False).notes)
