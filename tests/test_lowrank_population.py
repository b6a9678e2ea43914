"""Issue 46, item 1: ``population.rank: r`` through the full-weights pipeline — recipe, scorer, methods, writer, lineage,
rebuild and the score store all use ε_r (``noise.lowrank``) on the Linear weight matrices, θ₀ everywhere else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe
from safetensors.torch import load_file

from corpmerge.amplitudes import Amplitudes
from corpmerge.errors import CorpmergeError
from corpmerge.merge import merge_recipe
from corpmerge.methods import MergeResult
from corpmerge.model_io import BaseRef, model_skeleton, perturbed_names
from corpmerge.noise import lowrank
from corpmerge.plan import check_recipe
from corpmerge.rebuild import open_lineage, rebuild
from corpmerge.recipe import PerturbSpec, parse_recipe
from corpmerge.scoring.scorer import Prefetch, entry_update
from corpmerge.scoring.session import open_session
from corpmerge.scoring.store import ScoreStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
RANK = 2
MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def listed(rank: int = RANK, **overrides) -> dict:
    """The given-rewards population as ``{rank, entries}``."""
    return {"rank": rank, "entries": given_rewards_recipe(Path("x"), Path("y"))["population"], **overrides}


def merge(tmp_path: Path, base: Path, name: str = "out", **overrides) -> Path:
    data = given_rewards_recipe(base, tmp_path / name, population=listed(), **overrides)
    return merge_recipe(parse_recipe(data))[0]


def is_matrix(name: str) -> bool:
    return name.endswith(".weight") and name.split(".")[-2] in MATRICES


def test_best_writes_theta0_plus_sigma_rank_r_noise_on_the_linear_matrices_only(tmp_path, tiny_model):
    out = merge(tmp_path, tiny_model, merge_method="best", parameters={}, dtype="bfloat16")
    written, base = load_file(out / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    assert sum(is_matrix(n) for n in written) == 14
    for name, tensor in written.items():
        if is_matrix(name):  # seed 103, σ = 0.01 has the top reward; θ₀ + Δ in float32, rounded once
            eps = lowrank.matrix(103, name, base[name].shape, RANK, scheme=parse_recipe(given_rewards_recipe(tiny_model, tmp_path)).noise)
            expected = (base[name].to(torch.float32) + eps * 0.01).to(torch.bfloat16)
        else:  # norms and the (tied) embedding stay θ₀
            expected = base[name].to(torch.bfloat16)
        assert torch.equal(tensor, expected), name
    lineage = yaml.safe_load((out / "corpmerge.yaml").read_text())
    assert lineage["recipe"]["population"]["rank"] == RANK and lineage["population_summary"]["rank"] == RANK
    assert f"rank-{RANK} noise" in (out / "README.md").read_text()


def test_the_same_rank_r_recipe_twice_is_byte_identical_and_rebuild_reproduces_it(tmp_path, tiny_model):
    a, b = merge(tmp_path, tiny_model, "a"), merge(tmp_path, tiny_model, "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    full = merge_recipe(parse_recipe(given_rewards_recipe(tiny_model, tmp_path / "full")))[0]
    assert (a / "model.safetensors").read_bytes() != (full / "model.safetensors").read_bytes()
    path, comparison = rebuild(open_lineage(a / "corpmerge.yaml"), BaseRef(str(tiny_model)), tmp_path / "again")
    assert comparison.equal and comparison.tensors > 0
    assert (path / "model.safetensors").read_bytes() == (a / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "method, params",
    [("corp", {"quantile": 0.5}), ("reward_avg", {"quantile": 0.5}), ("topk_subspace", {"quantile": 0.5}), ("es", {}), ("ties", {"quantile": 0.5})],
)
def test_every_method_merges_a_rank_r_population_and_leaves_the_rest_at_theta0(tmp_path, tiny_model, method, params):
    out = merge(tmp_path, tiny_model, merge_method=method, parameters=params)
    written, base = load_file(out / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    for name, tensor in written.items():
        assert torch.equal(tensor, base[name]) != is_matrix(name), name
        if is_matrix(name) and method != "ties":  # a sum of K rank-r terms has rank ≤ K·r < min(m, n) here (TIES trims elementwise)
            assert torch.linalg.matrix_rank((tensor - base[name]).double(), rtol=1e-6) <= 5 * RANK, name


def test_ties_with_one_elite_and_full_density_is_that_entry_at_rank_r(tmp_path, tiny_model):
    out = merge(tmp_path, tiny_model, merge_method="ties", parameters={"quantile": 0.95, "density": 1.0})
    written, base = load_file(out / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    scheme = parse_recipe(given_rewards_recipe(tiny_model, tmp_path)).noise
    for name in filter(is_matrix, written):
        assert torch.equal(written[name], base[name] + lowrank.matrix(103, name, base[name].shape, RANK, scheme=scheme) * 0.01), name


@pytest.mark.parametrize(
    "population, message",
    [
        ({"size": 4, "sigmas": [0.01], "rank": 0}, "population.rank: must be an integer in [1, 4096] (got 0)"),
        ({"size": 4, "sigmas": [0.01], "rank": 5000}, "population.rank: must be an integer in [1, 4096] (got 5000)"),
        ({"size": 4, "sigmas": [0.01], "rank": 2.5}, "population.rank: must be an integer in [1, 4096] (got 2.5)"),
        ({"size": 4, "sigmas": [0.01], "rank": "4"}, "population.rank: must be an integer in [1, 4096] (got 4)"),
        ({"entries": [{"seed": 1, "sigma": 0.01}], "rank": -1}, "population.rank: must be an integer in [1, 4096] (got -1)"),
        ({"entries": [{"seed": 1, "sigma": 0.01}], "rnak": 2}, "population.rnak: unknown key; did you mean `rank`?"),
        ({"entries": [{"seed": 1, "sigma": 0}], "rank": 2}, "population.entries[0].sigma: Input should be greater than 0"),
    ],
)
def test_a_bad_rank_is_refused_in_one_line_naming_the_field(population, message):
    with pytest.raises(CorpmergeError) as caught:
        parse_recipe({"base_model": "x", "population": population})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_rank_r_perturbs_the_linear_matrices_and_refuses_a_selection_without_one(tiny_model, tiny_untied):
    assert all(map(is_matrix, perturbed_names(model_skeleton(BaseRef(str(tiny_untied))), PerturbSpec(), RANK)))  # not lm_head
    assert len(perturbed_names(model_skeleton(BaseRef(str(tiny_untied))), PerturbSpec(), RANK)) == 14
    with pytest.raises(CorpmergeError, match="population.rank: the perturb patterns select no Linear weight matrix"):
        perturbed_names(model_skeleton(BaseRef(str(tiny_model))), PerturbSpec(include=["*norm*", "*embed*"]), RANK)


def test_the_vllm_backend_refuses_a_rank_r_population_on_ray_workers_in_one_line(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", population={"size": 4, "sigmas": [0.01], "rank": RANK})
    data["scoring"]["backend"] = "vllm"
    check_recipe(parse_recipe(data), needs_rewards=False)  # in this process: LoRA batches (tests/vllm_backend/test_vllm_rank_run.py)
    data["scoring"]["workers"] = 1
    with pytest.raises(CorpmergeError, match=r"^scoring.workers: population.rank with the vllm backend is scored in this process") as caught:
        check_recipe(parse_recipe(data), needs_rewards=False)
    assert "\n" not in str(caught.value)


def test_a_store_keeps_scores_of_one_rank_only(tmp_path):
    identity = {"base": "b", "noise": "n"}
    path = tmp_path / "full.sqlite"
    ScoreStore(path, identity).close()  # written at full rank: no `rank` row, as before this key existed
    ScoreStore(path, {"rank": "full", **identity}).close()
    with pytest.raises(CorpmergeError, match=r"different noise rank \(population.rank\) \(full ≠ 4\)"):
        ScoreStore(path, {"rank": "4", **identity})
    ranked = tmp_path / "rank4.sqlite"
    ScoreStore(ranked, {"rank": "4", **identity}).close()
    with pytest.raises(CorpmergeError, match=r"different noise rank \(population.rank\) \(4 ≠ full\)"):
        ScoreStore(ranked, {"rank": "full", **identity})


@pytest.fixture(scope="module")
def rank_run(tmp_path_factory, tiny_model, tiny_task) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("rank-run")
    data = scoring_recipe(
        tiny_model,
        tiny_task,
        folder / "out",
        population={"size": 4, "sigmas": [0.02, 0.05], "seed": 3, "rank": RANK},
        parameters={"quantile": 0.5, "beta": 10, "alpha": 2},
        dtype="bfloat16",
        gate={"enabled": False},  # the merge is written, and the shipped check compares it with what was scored
    )
    result = run_cli("-q", "run", str(write_recipe(folder, data)))
    assert result.returncode == 0, result.stderr
    return folder, data


def amplitudes(rows: list[dict]) -> Amplitudes:
    return Amplitudes(np.array([r["seed"] for r in rows], dtype=np.int64), np.array([r["amplitude"] for r in rows], dtype=float))


def test_a_rank_r_run_ships_the_bits_the_gate_scored_and_records_the_rank(rank_run):
    folder, data = rank_run
    out = folder / "out"
    report = json.loads((out / "report.json").read_text())
    lineage = yaml.safe_load((out / "corpmerge.yaml").read_text())
    assert report["population"]["rank"] == RANK and lineage["recipe"]["population"]["rank"] == RANK
    assert len(lineage["recipe"]["population"]["entries"]) == 4
    written = load_file(out / "model.safetensors")
    entries = parse_recipe(data).entries()
    pair = amplitudes([{"seed": e.seed, "amplitude": e.sigma} for e in entries[:2]])
    session = open_session(parse_recipe(data))
    try:
        scorer = session.scorer
        assert scorer.rank == RANK and set(scorer.theta0) == {n for n in written if is_matrix(n)}
        scored = dict(session.model.named_parameters())
        assert report["shipped_check"]["identical"] is True and lineage["lineage"]
        scorer.apply(MergeResult("lineage", {}, np.arange(1), np.ones(1), amplitudes=amplitudes(lineage["lineage"])))
        for name in scorer.theta0:  # the candidate, as it was scored, is what was written
            assert torch.equal(scored[name].detach(), written[name]), name
        entry, scheme = entries[0], session.recipe.noise
        single = {
            name: (t.to(torch.float32) + lowrank.matrix(entry.seed, name, t.shape, RANK, scheme=scheme) * entry.sigma) for name, t in scorer.theta0.items()
        }
        both = {name: t.to(torch.float32) + pair.delta(name, t.shape, scheme=scheme, rank=RANK) for name, t in scorer.theta0.items()}
        scorer.apply(entry_update(entry))  # the fused in-place write (hf backend: write_update with rank)
        assert all(torch.equal(scored[n].detach(), v.to(torch.bfloat16)) for n, v in single.items())
        scorer.backend.write(pair.seeds.tolist(), pair.values.tolist(), scheme, rank=RANK)
        assert all(torch.equal(scored[n].detach(), v.to(torch.bfloat16)) for n, v in both.items())
        scorer.in_place = False  # the buffer paths: one seed (fill_many in batches), several (noise cache, Δ kept)
        double = pair.scaled(2.0)  # a 2ᵏ multiple of the kept Δ
        twice = {name: t.to(torch.float32) + double.delta(name, t.shape, scheme=scheme, rank=RANK) for name, t in scorer.theta0.items()}
        for update, expected in ((entry_update(entry), single), (pair, both), (double, twice)):
            scorer.apply(update)
            assert all(torch.equal(scored[n].detach(), v.to(torch.bfloat16)) for n, v in expected.items())
        prefetch = Prefetch(scorer.theta0, scheme, RANK)  # the next entry's Δ drawn ahead
        prefetch.start(entry_update(entry))
        drawn = prefetch.take(entry_update(entry))
        assert all(torch.equal(drawn[n], lowrank.matrix(entry.seed, n, t.shape, RANK, scheme=scheme) * entry.sigma) for n, t in scorer.theta0.items())
    finally:
        session.close()


def test_a_rank_r_store_is_not_reused_at_full_rank(rank_run):
    folder, data = rank_run
    full = {**data, "population": {k: v for k, v in data["population"].items() if k != "rank"}}
    result = run_cli("-q", "score", str(write_recipe(folder, full, "full.yaml")))
    assert result.returncode == 2
    assert "different noise rank (population.rank) (2 ≠ full)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
