"""Populations in O(N): single-seed entries stay a vector of σ through methods, stage-2 proposals and the writer.

The dense N×N elite matrix of a 100,000-entry population would be 75 GiB; every method must give
the dense cloud's numbers from σ alone.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import yaml
from conftest import given_rewards_recipe, run_cli, write_recipe

from corpmerge.amplitudes import Cloud
from corpmerge.methods import get_method
from corpmerge.methods.ties import TiesDelta

METHODS = {
    "corp": {"quantile": 0.5, "beta": 7, "alpha": 2, "gamma": 0.8, "lambda": 1.3},
    "reward_avg": {"quantile": 0.3, "beta": 4},
    "topk_subspace": {"quantile": 0.2, "beta": 5, "k": 3},
    "best": {},
    "ties": {"quantile": 0.5, "density": 0.3},
}


def clouds(n: int, seed: int, tied: bool = False) -> tuple[Cloud, Cloud]:
    """The same population as a single-seed cloud (σ only) and as the dense diag(σ) cloud."""
    rng = np.random.default_rng(seed)
    seeds = rng.choice(10**6, n, replace=False).astype(np.int64)
    sigmas = rng.choice([1e-3, 2e-3, 3e-3], n) if tied else rng.uniform(1e-3, 3e-3, n)
    rewards = rng.integers(0, 6, n) / 5 if tied else rng.uniform(size=n)
    return Cloud.single_seed(seeds, sigmas, rewards), Cloud(seeds, np.diag(sigmas), rewards)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_single_seed_cloud_gives_the_dense_clouds_numbers(method, tied):
    m = get_method(method)
    params = m.params.model_validate(METHODS[method])
    for seed in range(3):
        small, dense = clouds(40, seed, tied)
        a, b = m(small, params), m(dense, params)
        assert np.array_equal(a.elites, b.elites) and np.array_equal(a.weights, b.weights)
        if method == "ties":
            assert a.tensor_delta.key == b.tensor_delta.key
            assert torch.equal(a.delta("w", torch.Size([7, 9])), b.delta("w", torch.Size([7, 9])))
        elif method == "topk_subspace":  # the dense SVD carries round-off; the σ path is exact
            va, vb = a.final_amplitudes().values, b.final_amplitudes().values
            assert np.array_equal(np.flatnonzero(va), np.flatnonzero(np.abs(vb) > 1e-15)) and np.allclose(va, vb, rtol=1e-12, atol=0)
        else:  # bit for bit: every sum over a single-seed row has one non-zero term
            assert np.array_equal(a.final_amplitudes().values, b.final_amplitudes().values)


def test_a_100k_population_is_merged_by_every_method_in_bounded_memory():
    rng = np.random.default_rng(0)
    n = 100_000
    cloud = Cloud.single_seed(np.arange(n, dtype=np.int64), rng.uniform(1e-3, 3e-3, n), rng.integers(0, 101, n) / 100)
    tracemalloc.start()
    try:
        for method, params in METHODS.items():
            m = get_method(method)
            result = m(cloud, m.params.model_validate({**params, **({"quantile": 0.7} if "quantile" in params else {})}))
            if result.amplitudes is not None:
                assert result.final_amplitudes().values.size == n
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB"  # the dense elite matrix alone would be 22 GiB


def test_ties_with_more_elites_than_a_stacked_chunk_holds_reduces_row_by_row(monkeypatch):
    import corpmerge.methods.ties as ties_mod

    rng = np.random.default_rng(3)
    seeds = np.arange(40, dtype=np.int64)
    vectors = np.diag(rng.uniform(0.01, 0.03, 40))
    vectors[3, 7] = 0.02  # one multi-seed row
    shape = torch.Size([300, 500])
    stacked = TiesDelta(seeds, vectors, 0.3)("w", shape)
    monkeypatch.setattr(ties_mod, "_CHUNK_BUDGET", 1 << 16)  # 40 rows × 64K > budget: the row-by-row path
    rowwise = TiesDelta(seeds, vectors, 0.3)("w", shape)
    assert torch.allclose(stacked, rowwise, rtol=1e-6, atol=1e-9)
    assert torch.equal(stacked != 0, rowwise != 0)


@pytest.mark.parametrize("tied", [False, True])
def test_stage_2_directions_of_many_single_seed_elites_match_the_dense_decomposition(monkeypatch, tied):
    import corpmerge.gate.proposals as proposals

    small, dense = clouds(300, 5, tied)
    rows = np.sort(np.random.default_rng(1).choice(300, 200, replace=False))
    weights = np.exp(5 * small.rewards[rows])
    reference = proposals.principal_directions(dense, rows, weights, 8)
    monkeypatch.setattr(proposals, "DENSE_ROWS", 0)
    found = proposals.principal_directions(small, rows, weights, 8)
    assert np.allclose(found.eigenvalues, reference.eigenvalues, rtol=1e-10, atol=0)
    assert np.allclose(found.vectors @ found.vectors.T, np.eye(8), atol=1e-12)
    outside = np.setdiff1d(np.arange(300), rows)
    assert np.all(found.vectors[:, outside] == 0)
    w = weights / weights.sum()
    a, mu = w * small.sigmas[rows] ** 2, w * small.sigmas[rows]
    for u, lam in zip(found.vectors[:, rows], found.eigenvalues):  # M u = λu with M = diag(wσ²) − μμᵀ
        assert np.linalg.norm(a * u - mu * (mu @ u) - lam * u) <= 1e-12 * lam
    if not tied:  # distinct eigenvalues: the same subspace (tied ones may choose another basis of it)
        assert np.allclose(found.vectors.T @ found.vectors, reference.vectors.T @ reference.vectors, atol=1e-9)


def test_stage_2_directions_of_30k_single_seed_elites_need_no_dense_matrix():
    from corpmerge.gate.proposals import principal_directions

    rng = np.random.default_rng(2)
    n = 100_000
    cloud = Cloud.single_seed(np.arange(n, dtype=np.int64), rng.choice([1e-3, 2e-3, 3e-3], n), rng.integers(0, 101, n) / 100)
    rows = np.flatnonzero(cloud.rewards >= np.quantile(cloud.rewards, 0.7))
    tracemalloc.start()
    try:
        directions = principal_directions(cloud, rows, np.exp(10 * cloud.rewards[rows]), 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert directions.vectors.shape == (8, n) and peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_merge_of_a_100k_entry_recipe_through_the_cli(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    recipe = given_rewards_recipe(tiny_model, tmp_path / "out", parameters={"quantile": 0.999, "beta": 10})
    del recipe["population"]
    path = write_recipe(tmp_path, recipe)
    rows = zip(rng.choice([0.01, 0.02], 100_000), rng.permutation(100_000) / 100_000)
    path.write_text(path.read_text() + "population:\n" + "".join(f"- {{seed: {i}, sigma: {s}, reward: {r}}}\n" for i, (s, r) in enumerate(rows)))
    result = run_cli("-q", "merge", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "100 elites" in result.stdout
    lineage = yaml.safe_load((tmp_path / "out" / "corpmerge.yaml").read_text())
    assert len(lineage["lineage"]) == 100 and len(lineage["recipe"]["population"]) == 100_000
