import numpy as np
import pytest
import torch

from corpmerge.amplitudes import Cloud
from corpmerge.methods import get_method
from corpmerge.methods.corp import compatibility
from corpmerge.methods.ties import TiesDelta, ties_combine, trim_threshold
from corpmerge.methods.weights import elite_indices, softmax, zscore
from corpmerge.noise import gaussian
from corpmerge.population import Entry


def cloud(rewards, sigmas=None):
    sigmas = sigmas or [0.001 * (i % 3 + 1) for i in range(len(rewards))]
    return Cloud.from_entries([Entry(100 + i, s, r) for i, (s, r) in enumerate(zip(sigmas, rewards))])


def run(name, c, **params):
    method = get_method(name)
    return method(c, method.grid(params)[0])


def test_elite_set_uses_linear_quantile_and_keeps_ties():
    r = np.array([0.1, 0.5, 0.5, 0.9, 0.3])
    assert elite_indices(r, 0.5).tolist() == [1, 2, 3]  # median 0.5, ties kept
    assert elite_indices(r, 0.9).tolist() == [3]


def test_softmax_and_zscore():
    assert np.allclose(softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])
    assert np.all(zscore(np.array([2.0, 2.0, 2.0])) == 0)
    z = zscore(np.array([1.0, 2.0, 3.0]))
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12


def test_single_seed_compatibility_closed_form():
    sig = np.array([0.001, 0.002, 0.003])
    w1 = np.array([0.2, 0.3, 0.5])
    a, d = compatibility(np.diag(sig), w1 * sig)
    expected_a = w1 * sig / np.linalg.norm(w1 * sig)
    assert np.allclose(a, expected_a)
    assert np.allclose(d, sig**2 * (1 - expected_a**2))


def test_corp_weights_follow_the_formula():
    r = np.array([0.2, 0.6, 0.7, 0.65, 0.4, 0.8])
    c = cloud(list(r))
    res = run("corp", c, quantile=0.5, beta=5, alpha=2, gamma=0.7, **{"lambda": 1.3})
    elite = elite_indices(r, 0.5)
    sig = np.diag(c.vectors)[elite]
    w1 = softmax(5 * r[elite])
    a = w1 * sig / np.linalg.norm(w1 * sig)
    d = sig**2 * (1 - a**2)
    w2 = softmax(5 * r[elite] + 0.7 * zscore(a) - 1.3 * zscore(d))
    expected = np.zeros(len(r))
    expected[elite] = 2 * w2 * sig
    assert np.allclose(res.final_amplitudes().values, expected)


def test_corp_single_elite_is_entry_times_alpha():
    c = cloud([0.1, 0.2, 0.9])
    res = run("corp", c, quantile=0.9, alpha=4)
    assert res.elites.tolist() == [2]
    assert np.allclose(res.final_amplitudes().values, [0, 0, 4 * c.vectors[2, 2]])


def test_reward_avg_with_equal_rewards_is_the_plain_mean():
    c = cloud([0.5] * 4)
    res = run("reward_avg", c, quantile=0.0, beta=7)
    assert np.allclose(res.final_amplitudes().values, np.diag(c.vectors) / 4)


def test_corp_with_zero_gamma_lambda_equals_reward_avg():
    c = cloud([0.3, 0.5, 0.6, 0.8, 0.7])
    a = run("corp", c, quantile=0.3, beta=3, gamma=0, **{"lambda": 0}).final_amplitudes().values
    b = run("reward_avg", c, quantile=0.3, beta=3).final_amplitudes().values
    assert np.allclose(a, b)


def test_best_picks_the_top_entry():
    c = cloud([0.3, 0.9, 0.9, 0.1])
    res = run("best", c)
    assert res.elites.tolist() == [1]
    assert res.final_amplitudes().values.tolist() == [0, c.vectors[1, 1], 0, 0]


def test_topk_subspace_full_rank_is_the_mean_and_low_rank_projects():
    rewards = [0.3, 0.5, 0.6, 0.8]
    c = cloud(rewards)
    full = run("topk_subspace", c, quantile=0.0, beta=2, k=8).final_amplitudes().values
    mean = run("reward_avg", c, quantile=0.0, beta=2).final_amplitudes().values
    assert np.allclose(full, mean)
    # a planted shared direction: entries are multi-seed vectors along u plus small noise
    rng = np.random.default_rng(0)
    u = rng.standard_normal(6)
    vectors = np.outer(rng.uniform(1, 2, 5), u) + 0.01 * rng.standard_normal((5, 6))
    planted = Cloud(np.arange(6), vectors, np.linspace(0.2, 0.6, 5))
    proj = run("topk_subspace", planted, quantile=0.0, beta=0, k=1).final_amplitudes().values
    cos = abs(proj @ u) / (np.linalg.norm(proj) * np.linalg.norm(u))
    assert cos > 0.999


def test_topk_subspace_is_spanned_by_the_highest_weight_elites():
    # equal σ: the unweighted elite matrix is σ·I, whose top-k subspace is arbitrary (LAPACK order)
    rewards = np.array([0.3, 0.9, 0.5, 0.8, 0.6, 0.7])
    sigmas = [0.002] * 6
    for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 3, 4]):
        r = rewards[order]
        c = cloud(list(r), sigmas)
        res = run("topk_subspace", c, quantile=0.0, beta=5, k=2)
        chosen = np.flatnonzero(res.final_amplitudes().values).tolist()
        assert chosen == sorted(np.argsort(-r)[:2].tolist())  # the two highest-reward entries
        assert res.info["subspace_rank"] == 2
        w = softmax(5 * r)
        assert np.allclose(res.final_amplitudes().values[chosen], w[chosen] * 0.002)


def test_topk_subspace_weighs_reward_against_sigma():
    # √wᵢσᵢ ranks the directions: a large-σ entry with a poor reward loses to a rewarded one
    sigmas = [0.004, 0.001, 0.001]
    low_reward_big_sigma = run("topk_subspace", cloud([0.1, 0.9, 0.2], sigmas), quantile=0.0, beta=10, k=1)
    assert np.flatnonzero(low_reward_big_sigma.final_amplitudes().values).tolist() == [1]
    permuted = run("topk_subspace", cloud([0.9, 0.1, 0.2], sigmas), quantile=0.0, beta=10, k=1)
    assert np.flatnonzero(permuted.final_amplitudes().values).tolist() == [0]


def test_ties_combine_identities():
    t = torch.randn(3000)
    copies = torch.stack([t, t, t])
    assert torch.allclose(ties_combine(copies), t)
    # sign election + disjoint mean by hand
    rows = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, -1.0], [-1.0, -2.0, 0.0]])
    assert torch.allclose(ties_combine(rows), torch.tensor([2.0, -2.0, -1.0]))


def test_trim_threshold_keeps_density_fraction():
    t = torch.randn(10_000)
    thr = trim_threshold(t, 0.2)
    assert (t.abs() >= thr).sum().item() == 2000
    assert trim_threshold(t, 1.0) == 0.0


def test_ties_trim_keeps_floor_of_density_times_n():
    # n = 7, density 0.5: ⌊3.5⌋ = 3 values survive (mergekit's int(density·n)), not ⌈3.5⌉ = 4
    t = torch.tensor([0.5, -3.0, 1.0, 2.5, -0.1, -2.0, 0.7])
    thr = trim_threshold(t, 0.5)
    assert thr == 2.0
    assert t[t.abs() >= thr].tolist() == [-3.0, 2.5, -2.0]
    assert trim_threshold(torch.tensor([1.0, -2.0, 3.0]), 0.3) == float("inf")  # ⌊0.9⌋ = 0: nothing kept
    # a single elite's TIES update is its own trimmed perturbation σ·ε, computed by hand
    sigma, shape = 0.01, torch.Size([3, 5])
    eps = sigma * gaussian(42, "w", shape).flatten()
    expected = torch.zeros(15)
    top = torch.argsort(eps.abs(), descending=True)[:4]  # ⌊0.3·15⌋ = ⌊4.5⌋ = 4
    expected[top] = eps[top]
    delta = TiesDelta(np.array([42]), np.array([[sigma]]), 0.3)("w", shape)
    assert torch.equal(delta.flatten(), expected)


def test_ties_chunked_equals_in_memory(monkeypatch):
    import corpmerge.methods.ties as ties_mod

    seeds = np.array([5, 6, 7])
    vectors = np.diag([0.01, 0.02, 0.03])
    shape = torch.Size([300, 700])
    whole = TiesDelta(seeds, vectors, 0.3)("w", shape)
    monkeypatch.setattr(ties_mod, "_CHUNK_BUDGET", 3 * 1000)
    chunked = TiesDelta(seeds, vectors, 0.3)("w", shape)
    assert torch.equal(whole, chunked)


def test_unknown_parameter_is_named():
    from corpmerge.errors import CorpmergeError

    with pytest.raises(CorpmergeError, match=r"parameters.temperature: unknown parameter for merge_method 'corp'; allowed: quantile"):
        get_method("corp").grid({"temperature": 1})
    with pytest.raises(CorpmergeError, match=r"parameters.quantile"):
        get_method("corp").grid({"quantile": [0.5, 1.5]})
    assert len(get_method("corp").grid({"beta": [1, 5], "alpha": [1, 2, 4]})) == 6
