"""Scoring a rank-r update through low-rank adapters (scoring.backends.lora) equals scoring the model whose weights are
θ₀ + Σₖ aₖ·ε_r(sₖ), to float tolerance; cleared, the model is the base bit for bit."""

from __future__ import annotations

import pytest
import torch
from tiny import build_tiny_model
from transformers import AutoModelForCausalLM

from corpmerge import noise
from corpmerge.noise import lowrank
from corpmerge.scoring.backends.lora import LowRankAdapters

RANK = 4
SCHEME = noise.DEFAULT_SCHEME
TOKENS = torch.tensor([[5, 71, 200, 33, 9, 140, 18, 77, 3, 250], [12, 12, 99, 180, 44, 1, 6, 230, 101, 64]])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("lora") / "base")


def load(folder) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def matrices(model: torch.nn.Module) -> list[str]:
    """Every Linear weight of the decoder layers (attention and MLP)."""
    return [n for n, p in model.named_parameters() if n.startswith("model.layers.") and p.dim() == 2]


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    return model(TOKENS).logits


def loglikelihoods(out: torch.Tensor) -> torch.Tensor:
    """Per example: Σ log p(token t+1 | tokens ≤ t)."""
    logp = torch.log_softmax(out[:, :-1].double(), dim=-1)
    return logp.gather(-1, TOKENS[:, 1:, None]).squeeze(-1).sum(-1)


@torch.no_grad()
def full_weights(folder, names: list[str], seeds: list[int], amps: list[float]) -> torch.nn.Module:
    """The reference: the base with every named matrix rewritten to θ₀ + Σₖ aₖ·ε_r(sₖ)."""
    model = load(folder)
    params = dict(model.named_parameters())
    for name in names:
        w = params[name]
        noise.write_update(w, w.clone(), name, seeds, amps, scheme_name=SCHEME, rank=RANK, shape=w.shape)
    return model


def test_stacked_factors_are_the_update():
    seeds, amps, shape = [3, 8, 21], [0.5, -1.25, 2.0], (6, 9)
    factors = [lowrank.factors(s, "w", shape, RANK, scheme=SCHEME) for s in seeds]
    a, b = lowrank.stacked(factors, amps, RANK)
    assert a.shape == (3 * RANK, 9) and b.shape == (6, 3 * RANK)
    want = sum(amp * lowrank.matrix(s, "w", shape, RANK, scheme=SCHEME) for s, amp in zip(seeds, amps))
    torch.testing.assert_close(b @ a, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seeds, amps", [([17], [0.03]), ([4, 2**40 + 5, 99], [0.02, -0.035, 0.015])], ids=["one seed", "three seeds"])
def test_adapters_score_the_update_as_the_full_weights_do(base, seeds, amps):
    model = load(base)
    names = matrices(model)
    before = logits(model)
    want = logits(full_weights(base, names, seeds, amps))
    assert (want - before).abs().max() > 1e-2  # the update changes the scores
    with LowRankAdapters(model, names, RANK, SCHEME) as adapters:
        adapters.set(seeds, amps)
        got = logits(model)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()
        torch.testing.assert_close(loglikelihoods(got), loglikelihoods(want), rtol=0, atol=1e-4)
        adapters.clear()
        assert torch.equal(logits(model), before)
        adapters.set(seeds[:1], amps[:1])  # a next update reuses the kept factors of its seeds
        assert (logits(model) - logits(full_weights(base, names, seeds[:1], amps[:1]))).abs().max() <= 1e-4 * want.abs().max()
    assert torch.equal(logits(model), before)  # closed: no hook is left
    assert all(not layer._forward_hooks for layer in adapters.layers.values())


def test_zero_amplitudes_leave_the_base(base):
    model = load(base)
    before = logits(model)
    adapters = LowRankAdapters(model, matrices(model), RANK, SCHEME)
    adapters.set([1, 2], [0.0, 0.0])
    assert torch.equal(logits(model), before) and not adapters._handles


def test_only_linear_weights_are_adapted(base):
    model = load(base)
    with pytest.raises(ValueError, match="Embedding, not an nn.Linear"):
        LowRankAdapters(model, ["model.embed_tokens.weight"], RANK, SCHEME)
    with pytest.raises(ValueError, match="not a Linear layer's weight"):
        LowRankAdapters(model, ["model.norm"], RANK, SCHEME)
    with pytest.raises(ValueError, match="seeds and"):
        LowRankAdapters(model, matrices(model), RANK, SCHEME).set([1, 2], [0.1])
