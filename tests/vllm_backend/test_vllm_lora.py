"""Rank-r updates scored through vLLM's LoRA (``vllm_lora``): as their full weights, several in one engine batch, the base untouched.

One engine for the module: the tiny Llama in float32 with LoRA on its projections (max_loras 4, max_lora_rank 16). The full-weight
reference is the same engine after ``load`` of round(θ₀ + Δ) (``noise.write_update`` with ``rank``), then back to θ₀.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch
from lm_eval.api.instance import Instance
from vllm_tiny import ENGINE_ARGS, checkpoint_state, vllm_model, vllm_tasks  # noqa: F401 (fixtures)

from corpmerge import noise
from corpmerge.errors import CorpmergeError
from corpmerge.recipe import ScoringSpec
from corpmerge.scoring.backends.vllm import VLLMBackend
from corpmerge.scoring.backends.vllm_lora import engine_args
from corpmerge.scoring.lmeval import TaskSuite

CPU, RANK, ENTRIES = torch.device("cpu"), 4, 4
LL = [Instance("loglikelihood", {}, (f"{a}+{b}=", f" {a + b}"), 0) for a in range(4) for b in range(4)]
GEN = [Instance("generate_until", {}, (f"{a}*3=", {"until": ["\n"], "do_sample": False, "max_gen_toks": 6}), 0) for a in range(4)]
DOCS = {"tiny_mc": list(range(16)), "tiny_gen": list(range(12))}
# an antithetic pair, a 3-seed update (adapter rank 12) and the base (no amplitude): amplitudes large enough to move every score
UPDATES = [([11], [0.3]), ([11], [-0.3]), ([12, 13, 14], [0.2, -0.1, 0.15]), ([], [])]
LORA_TOLERANCE = 1e-4  # |Δ log-likelihood| per example, float32: vLLM adds B·(A·x) to W·x, the reference multiplies round(W + B·A)


@pytest.fixture(scope="module")
def engine(vllm_model):
    """(backend, its VllmLoRA, θ₀, base answers)."""
    from transformers import AutoTokenizer

    theta0 = checkpoint_state(vllm_model)
    matrices = {name: tuple(t.shape) for name, t in theta0.items() if name.endswith("_proj.weight")}
    args = {**ENGINE_ARGS, **engine_args(matrices, 3 * RANK, ENTRIES)}
    backend = VLLMBackend(checkpoint=vllm_model, tokenizer=AutoTokenizer.from_pretrained(vllm_model), device=CPU, dtype=torch.float32, model_args=args)
    lora = backend.lora(matrices, RANK, noise.DEFAULT_SCHEME)
    yield backend, lora, theta0, answers(backend.lm)
    lora.close()
    backend.close()


@pytest.fixture(scope="module")
def suite(vllm_tasks):
    return TaskSuite(ScoringSpec(tasks=["tiny_mc", "tiny_gen"], include_path=str(vllm_tasks)), split="test")


def answers(lm) -> tuple:
    return lm.loglikelihood(LL), lm.generate_until(GEN)


def full_weights(backend, lora, theta0, seeds, amplitudes) -> tuple:
    """The answers of the engine holding round(θ₀ + Σₖ aₖ·ε_r(sₖ)) in its weights (then θ₀ again)."""
    tensors = []
    for name, shape in lora.matrices.items():
        dest = torch.empty_like(theta0[name])
        noise.write_update(dest.view(-1), theta0[name].view(-1), name, seeds, amplitudes, rank=RANK, shape=shape)
        tensors.append((name, dest))
    backend.load(tensors)
    try:
        return answers(backend.lm)
    finally:
        backend.load([])


def assert_close(got: tuple, want: tuple, tolerance: float) -> None:
    (got_ll, got_gen), (want_ll, want_gen) = got, want
    assert [greedy for _, greedy in got_ll] == [greedy for _, greedy in want_ll]
    assert [lp for lp, _ in got_ll] == pytest.approx([lp for lp, _ in want_ll], abs=tolerance)
    assert got_gen == want_gen


@pytest.mark.parametrize("update", UPDATES[::2], ids=["one-seed", "three-seeds"])
def test_an_update_through_lora_scores_as_its_full_weights(engine, update):
    backend, lora, theta0, base = engine
    with lora.batch([update]) as (lm,):
        got = answers(lm)
    assert_close(got, full_weights(backend, lora, theta0, *update), LORA_TOLERANCE)
    assert max(abs(g - b) for (g, _), (b, _) in zip(got[0], base[0])) > 0.1  # the update moved the scores


def test_updates_in_one_batch_score_as_each_alone_in_one_engine_call_per_request_type(engine, suite, monkeypatch):
    backend, lora, _, base = engine
    alone = []
    for update in UPDATES:
        with lora.batch([update]) as (lm,):
            alone.append((answers(lm), suite.evaluate(lm, DOCS)))
    calls: list[set] = []
    generate = backend.engine.generate
    monkeypatch.setattr(backend.engine, "generate", lambda *a, **kw: calls.append({r and r.lora_name for r in kw["lora_request"]}) or generate(*a, **kw))
    with lora.batch(UPDATES) as lms:
        together = [(answers(lm), suite.evaluate(lm, DOCS)) for lm in lms]
    assert len(calls) == 4 and all(len(loras) == len(UPDATES) for loras in calls)  # LL, GEN, then the suite's two request types
    for (got, got_scores), (want, want_scores) in zip(together, alone):
        assert_close(got, want, 1e-5)
        assert got_scores == want_scores
    assert together[-1][0] == base and together[0][0] != together[1][0]


def test_the_base_is_untouched_and_the_adapters_are_gone(engine):
    backend, lora, _, base = engine
    with lora.batch(UPDATES[:2]) as lms:
        answers(lms[0])
        assert len(backend.engine.llm_engine.list_loras()) == 2 and len(list(lora.folder.iterdir())) == 2
    assert answers(backend.lm) == base
    assert not backend.engine.llm_engine.list_loras() and not list(lora.folder.iterdir())
    assert all(lm.engine is None for lm in lms)  # a kept LM holds no engine


def test_what_the_engine_cannot_hold_is_refused(engine):
    _, lora, _, _ = engine
    with pytest.raises(ValueError, match="max_loras is 4"):
        with lora.batch(UPDATES + UPDATES[:1]):
            pass
    with pytest.raises(CorpmergeError, match="max_lora_rank 16"):
        with lora.batch([([1, 2, 3, 4, 5], [0.1] * 5)]):
            pass
    with pytest.raises(CorpmergeError, match="largest max_lora_rank"):
        engine_args(lora.matrices, 1024, 8)
