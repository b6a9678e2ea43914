"""The gate as the paper defines it (§4.2, App. C.3/C.5), racing, and materialised candidates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import given_rewards_recipe, run_cli, scoring_recipe, write_recipe

from corpmerge.amplitudes import Amplitudes
from corpmerge.gate.paired import paired_stats
from corpmerge.gate.procedure import Candidate, rank_key, select
from corpmerge.methods import MergeResult
from corpmerge.noise import DEFAULT_SCHEME
from corpmerge.plan import check_recipe
from corpmerge.recipe import parse_recipe
from corpmerge.scoring.racing import dominated, entries_to_keep, race_cut, standing, survivors, wilson_upper
from corpmerge.scoring.session import open_session


def _vector(n: int, fixes: int, regressions: int) -> tuple[np.ndarray, np.ndarray]:
    """Base and candidate correctness on n examples with the given fixes and regressions."""
    base = np.zeros(n)
    base[fixes : fixes + regressions] = 1
    cand = np.zeros(n)
    cand[:fixes] = 1
    return base, cand


def _candidate(name: str, fixes: int, regressions: int, n: int = 40, step: float = 1.0) -> Candidate:
    result = MergeResult("corp", {"name": name}, np.array([0]), np.array([1.0]), Amplitudes(np.array([1]), np.array([step])))
    cand = Candidate({"name": name}, result, name)
    cand.validate = paired_stats(*_vector(n, fixes, regressions), z=1.645, regression_penalty=2.0)
    return cand


def test_hand_computed_case_where_ranking_by_lcb_ships_and_the_paper_abstains():
    # n = 40, z = 1.645, λ_reg = 2.
    # X: 2 fixes, 0 regressions: S = 2/40 = 0.050; mean 0.05, sd 0.2207 → LCB = 0.05 − 1.645·0.2207/√40 = −0.0074 (fails)
    # Y: 15 fixes, 7 regressions: S = (15 − 14)/40 = 0.025; mean 0.2, sd 0.7232 → LCB = 0.2 − 0.1881 = +0.0119 (passes)
    x, y = _candidate("X", 2, 0), _candidate("Y", 15, 7)
    assert x.validate.constructive_score == pytest.approx(0.05) and x.validate.lcb == pytest.approx(-0.0074, abs=1e-4)
    assert y.validate.constructive_score == pytest.approx(0.025) and y.validate.lcb == pytest.approx(0.0119, abs=1e-4)
    ranked = sorted([y, x], key=rank_key)
    assert [c.params["name"] for c in ranked] == ["X", "Y"]  # ranked by S on fold B
    probed = []
    chosen, multiplier, count = select(ranked, lambda c: probed.append(c.params["name"]) or 4.0)
    assert chosen is None and multiplier is None and count == 0 and probed == []  # the top one fails: abstain
    # ranking by LCB first (the old procedure) would have put Y on top and shipped it
    by_lcb = sorted([x, y], key=lambda c: (c.validate.lcb, c.validate.constructive_score), reverse=True)
    assert by_lcb[0].params["name"] == "Y" and by_lcb[0].validate.passes


def test_only_the_top_candidate_sees_the_probe_fold_unless_fallback():
    top, second = _candidate("top", 10, 0), _candidate("second", 8, 0)
    ranked = sorted([second, top], key=rank_key)
    seen = []

    def probe(c):
        seen.append(c.params["name"])
        return None if c.params["name"] == "top" else 2.0

    assert select(ranked, probe) == (None, None, 1) and seen == ["top"]  # paper: abstain, fold C used once
    seen.clear()
    chosen, multiplier, count = select(ranked, probe, fallback=True)
    assert chosen is second and multiplier == 2.0 and count == 2 and seen == ["top", "second"]


def test_ties_in_s_go_to_the_higher_lcb_then_the_smaller_step():
    a, b = _candidate("a", 4, 0), _candidate("b", 6, 1)  # S = 0.1 both; b has more variance → lower LCB
    assert a.validate.constructive_score == b.validate.constructive_score
    assert sorted([b, a], key=rank_key)[0] is a
    small, big = _candidate("small", 4, 0, step=0.5), _candidate("big", 4, 0, step=2.0)
    assert sorted([big, small], key=rank_key)[0] is small


def test_gate_folds_below_twenty_examples_are_refused_at_validate(tmp_path, tiny_model, tiny_task):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["support"]["limit"] = 60  # folds 30 / 15 / 15
    result = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "scoring.support.limit" in line and "at least 20" in line


def test_given_rewards_are_fold_a_rewards_and_the_gate_is_warned_about(tmp_path, tiny_model, tiny_task):
    data = given_rewards_recipe(tiny_model, tmp_path / "out")
    data["scoring"] = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")["scoring"]
    data["gate"] = {"enabled": True}
    notes = check_recipe(parse_recipe(data), needs_rewards=False).notes
    assert any("fold-A" in n for n in notes) and any("biases the gate" in n for n in notes)


# --- racing -------------------------------------------------------------------------------------


def test_wilson_upper_bound_is_conservative_and_shrinks_with_evidence():
    assert wilson_upper(0, 0, 2.0) == 1.0
    assert 0.1 < wilson_upper(0, 25, 2.0) < 0.16
    assert wilson_upper(0, 400, 2.0) < wilson_upper(0, 25, 2.0)
    assert wilson_upper(5, 10, 2.0) > 0.5


def test_planted_population_stopped_entries_are_provably_not_elites():
    rng = np.random.default_rng(0)
    n, m = 200, 100  # after half the fold (the default's second stage)
    base = (rng.random(n) < 0.5).astype(float)
    entries = []
    for i in range(30):  # 20 near-base entries (a flip or two) and 10 harmful ones (many down-flips)
        values = base.copy()
        flips = rng.choice(n, 2 if i < 20 else 60, replace=False)
        values[flips] = 0.0 if i >= 20 else 1 - values[flips]
        entries.append(values)
    standings = {i: standing(v[:m], base, z=2.0) for i, v in enumerate(entries)}
    keep = entries_to_keep(len(entries), 0.5, 1)
    alive = survivors(standings, keep)
    stopped = set(range(30)) - alive
    assert stopped and stopped <= set(range(20, 30))  # only harmful entries are stopped
    full = np.array([v.mean() for v in entries])
    threshold = np.quantile(full, 0.5)
    assert all(full[i] < threshold for i in stopped)  # and none of them is an elite of the full evaluation
    for i, s in standings.items():  # the bounds hold the full-fold reward
        assert s.lower - 1e-12 <= full[i] <= s.upper + 1e-12
    # pairwise comparisons separate the harmful entries already after a quarter of the fold
    early = np.array([v[:50] for v in entries])
    cut = race_cut(early, n, 1.645, keep, [standing(v[:50], base, 1.645) for v in entries])
    early_stops = set(np.flatnonzero(cut).tolist())
    assert len(early_stops) >= 5 and early_stops <= set(range(20, 30))


def test_pairwise_domination_needs_disagreement_and_never_separates_identical_entries():
    same = np.tile(np.array([1.0, 0.0, 1.0, 0.0]), (3, 1))
    assert not dominated(same, 100, 1.645).any()
    full = np.array([[1.0] * 10, [0.0] * 10])
    assert dominated(full, 10, 1.645).tolist() == [[False, True], [False, False]]  # whole fold seen: plain comparison


def test_racing_off_scores_every_entry_on_the_whole_fold_and_on_gives_the_same_gate_decision(tmp_path, tiny_model, tiny_task):
    from corpmerge.pipeline import run_recipe

    reports = {}
    for racing in (False, True):
        data = scoring_recipe(tiny_model, tiny_task, tmp_path / f"out-{racing}", population={"size": 12, "sigmas": [0.02, 0.3], "seed": 5})
        data["scoring"]["racing"] = {"enabled": racing}
        data["gate"]["racing"] = racing
        reports[racing] = run_recipe(parse_recipe(data))
    off, on = reports[False], reports[True]
    assert off["racing"]["example_evaluations"] == off["racing"]["example_evaluations_without_racing"] == 12 * 40
    assert off["racing"]["stopped"] == 0 and set(off["racing"]["examples"]) == {40}
    assert on["racing"]["example_evaluations"] <= off["racing"]["example_evaluations"]
    assert on["gate"]["accepted"] == off["gate"]["accepted"]
    assert on["gate"].get("params") == off["gate"].get("params") and on["gate"].get("multiplier") == off["gate"].get("multiplier")
    # entries that finished the race carry exactly their full-fold reward
    rewards_off, rewards_on = off["population"]["rewards"], on["population"]["rewards"]
    for n_examples, r_on, r_off in zip(on["racing"]["examples"], rewards_on, rewards_off):
        if n_examples == 40:
            assert r_on == r_off


# --- materialised candidates -----------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["1GB", "1"])
def test_cached_and_rescaled_updates_are_the_same_bits_as_regeneration(tmp_path, tiny_model, tiny_task, budget):
    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["memory_budget"] = budget
    session = open_session(parse_recipe(data))
    try:
        scorer = session.scorer
        params = {n: p for n, p in session.model.named_parameters() if n in scorer.theta0}
        original = {n: p.detach().clone() for n, p in params.items()}
        update = Amplitudes(np.array([11, 12, 13, 14], dtype=np.int64), np.array([0.01, -0.02, 0.005, 0.03]))
        for amps in (update, update.scaled(4.0), update.scaled(0.5), update.scaled(3.0), update):
            scorer.apply(amps)
            for name, param in params.items():
                expected = original[name] + amps.delta(name, param.shape)
                assert torch.equal(param, expected), (name, amps.values)
            scorer.restore()
        if budget == "1":
            assert scorer.noise_cache.used == 0  # over the budget: every noise is regenerated
        else:
            assert scorer.noise_cache.used > 0
    finally:
        session.close()
    assert scorer.noise_cache.used == 0 and scorer._last is None  # a closed session holds no model-sized memory


def test_the_noise_cache_keeps_a_noise_from_its_second_request_and_within_its_budget():
    from corpmerge.scoring.scorer import NoiseCache

    cache, noise = NoiseCache(budget=2 * 4 * 8), torch.arange(8, dtype=torch.float32)
    assert cache.put(1, "w", noise) is None and cache.get(1, "w") is None  # asked once: a one-off, not kept
    kept = cache.put(1, "w", noise)
    assert kept is not None and torch.equal(cache.get(1, "w"), noise) and cache.has_seed(1) and cache.used == 32
    noise.add_(1.0)  # the caller's buffer is reused: the cache holds its own copy
    assert torch.equal(cache.get(1, "w"), torch.arange(8, dtype=torch.float32))
    for seed in (2, 3):
        cache.put(seed, "w", noise)
    assert cache.put(2, "w", noise) is not None and cache.put(3, "w", noise) is None  # the budget holds two
    assert cache.used == 64 and not cache.has_seed(3)


def test_a_ties_update_is_computed_once_and_rescaled_to_the_same_bits(tmp_path, tiny_model, tiny_task):
    from corpmerge.methods.ties import TiesDelta

    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out")
    data["scoring"]["memory_budget"] = "1GB"
    session = open_session(parse_recipe(data))
    try:
        scorer = session.scorer
        params = {n: p for n, p in session.model.named_parameters() if n in scorer.theta0}
        original = {n: p.detach().clone() for n, p in params.items()}
        vectors = np.array([[0.01, 0.0, -0.02], [0.0, 0.03, 0.01]])
        computed = []

        class Counted(TiesDelta):
            def __call__(self, name, shape, scheme=DEFAULT_SCHEME, rank=None):
                computed.append(name)
                return super().__call__(name, shape, scheme, rank)

        ties = Counted(np.array([5, 6, 7], dtype=np.int64), vectors, 0.5)
        result = MergeResult("ties", {}, np.arange(2), np.full(2, 0.5), tensor_delta=ties, multiplier=2.0)
        for update in (result, result.scaled(0.5), result.scaled(3.0), result):
            scorer.apply(update)
            for name, param in params.items():
                assert torch.equal(param, original[name] + update.delta(name, param.shape)), (name, update.multiplier)
            scorer.restore()
        assert len(computed) == len(params) + 4 * len(params)  # once by the scorer, once per check
        other = TiesDelta(np.array([5, 6, 7], dtype=np.int64), vectors, 0.2)
        assert other.key != ties.key and TiesDelta(np.array([5, 6, 7]), vectors.copy(), 0.5).key == ties.key
    finally:
        session.close()


def test_held_out_on_the_support_split_leaves_support_examples_out(tmp_path, tiny_model, tiny_task):
    from corpmerge.pipeline import run_recipe

    data = scoring_recipe(tiny_model, tiny_task, tmp_path / "out", evaluate={"split": "train"})
    report = run_recipe(parse_recipe(data))
    evaluation = report["evaluation"]
    assert evaluation["excluded_support"] == {"tiny_mc": 80} and evaluation["n"] == 20  # 100 train docs, 80 used for support
    assert evaluation["ranked_on"] == "fold A (40 examples)"
    shown = json.loads((tmp_path / ("out" if report["output"] else "out.work") / "report.json").read_text())
    assert shown["evaluation"]["excluded_support"] == {"tiny_mc": 80}
