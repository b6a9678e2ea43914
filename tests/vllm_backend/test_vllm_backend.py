"""The vLLM backend on one engine: agreement with HFLM, weight changes, exact restore, partial loads."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch
from lm_eval.api.instance import Instance
from vllm_tiny import ENGINE_ARGS, checkpoint_state, vllm_model, vllm_tasks  # noqa: F401 (fixtures)

from corpmerge.recipe import ScoringSpec
from corpmerge.scoring.backends.vllm import VLLMBackend
from corpmerge.scoring.lmeval import TaskSuite, make_lm

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer(vllm_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(vllm_model)


@pytest.fixture(scope="module")
def backend(vllm_model, tokenizer):
    backend = VLLMBackend(checkpoint=vllm_model, tokenizer=tokenizer, device=CPU, dtype=torch.float32, model_args=ENGINE_ARGS)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def suite(vllm_tasks):
    return TaskSuite(ScoringSpec(tasks=["tiny_mc", "tiny_gen"], include_path=str(vllm_tasks)), split="test")


DOCS = {"tiny_mc": list(range(16)), "tiny_gen": list(range(24))}
LOGLIKELIHOOD = [Instance("loglikelihood", {}, (f"{a}+{b}=", f" {a + b}"), 0) for a in range(6) for b in range(4)]
GENERATE = [Instance("generate_until", {}, (f"{a}*{b}=", {"until": ["\n"], "do_sample": False, "max_gen_toks": 12}), 0) for a in range(6) for b in range(4)]
ROLLING = [Instance("loglikelihood_rolling", {}, ("the quick brown fox jumps over the lazy dog " * k,), 0) for k in (1, 4)]


def raw(lm) -> tuple:
    """Every kind of request's raw answers."""
    return lm.loglikelihood(LOGLIKELIHOOD), lm.generate_until(GENERATE), lm.loglikelihood_rolling(ROLLING)


def noisy(state: dict[str, torch.Tensor], sigma: float, seed: int, only: str = "") -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(name, t + sigma * torch.randn(t.shape, generator=g)) for name, t in state.items() if only in name]


def test_requests_agree_with_hflm(backend, vllm_model, tokenizer):
    from transformers import AutoModelForCausalLM

    hf = make_lm(AutoModelForCausalLM.from_pretrained(vllm_model, dtype=torch.float32).eval(), tokenizer, batch_size=8)
    (h_ll, h_gen, h_roll), (v_ll, v_gen, v_roll) = raw(hf), raw(backend.lm)
    assert [g for _, g in h_ll] == [g for _, g in v_ll]
    assert [lp for lp, _ in v_ll] == pytest.approx([lp for lp, _ in h_ll], abs=1e-4)
    assert v_gen == h_gen
    assert v_roll == pytest.approx(h_roll, rel=1e-5)


def test_per_example_scores_agree_with_hflm(backend, vllm_model, tokenizer, suite):
    from transformers import AutoModelForCausalLM

    hf = make_lm(AutoModelForCausalLM.from_pretrained(vllm_model, dtype=torch.float32).eval(), tokenizer, batch_size=8)
    assert suite.evaluate(backend.lm, DOCS) == suite.evaluate(hf, DOCS)


def test_loaded_weights_are_the_weights_evaluated(backend, vllm_model, tokenizer):
    """After a load the engine answers as an HF model holding those weights, the tied lm_head included."""
    from transformers import AutoModelForCausalLM

    theta0 = checkpoint_state(vllm_model)
    for only in ("embed_tokens", ""):  # the tied embedding alone (CPU pre-packs the lm_head's copy), then everything
        moved = dict(noisy(theta0, 0.05, seed=4, only=only))
        model = AutoModelForCausalLM.from_pretrained(vllm_model, dtype=torch.float32).eval()
        model.load_state_dict({**theta0, **moved}, strict=False)
        backend.load(iter(moved.items()))
        (h_ll, h_gen, _), (v_ll, v_gen, _) = raw(make_lm(model, tokenizer, batch_size=8)), raw(backend.lm)
        assert [lp for lp, _ in v_ll] == pytest.approx([lp for lp, _ in h_ll], abs=1e-4) and v_gen == h_gen
    backend.load(iter(theta0.items()))


def test_chat_formatted_prompts_score_as_with_hflm(backend, vllm_model, vllm_tasks):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vllm_model)
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    chat = TaskSuite(ScoringSpec(tasks=["tiny_mc", "tiny_gen"], include_path=str(vllm_tasks), apply_chat_template=True), split="test")
    hf = make_lm(AutoModelForCausalLM.from_pretrained(vllm_model, dtype=torch.float32).eval(), tokenizer, batch_size=8)
    vllm_lm = type(backend.lm)(backend.engine, tokenizer)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2="}]
    assert vllm_lm.apply_chat_template(messages) == hf.apply_chat_template(messages) == "<system>be brief\n<user>2+2=\n<assistant>"
    assert chat.evaluate(vllm_lm, DOCS) == chat.evaluate(hf, DOCS)


def test_a_perturbation_changes_outputs_and_restore_is_exact(backend, vllm_model, suite):
    theta0 = checkpoint_state(vllm_model)
    base_raw, base_scores = raw(backend.lm), suite.evaluate(backend.lm, DOCS)
    backend.load(iter(noisy(theta0, 0.05, seed=1)))
    moved = raw(backend.lm)
    assert moved[0] != base_raw[0] and moved[1] != base_raw[1] and moved[2] != base_raw[2]
    backend.load(iter(theta0.items()))
    assert raw(backend.lm) == base_raw  # bit for bit: log-probs, texts and rolling sums
    assert suite.evaluate(backend.lm, DOCS) == base_scores


def test_a_partial_load_leaves_the_rest_at_theta0(backend, vllm_model):
    """Only q_proj given: vLLM's fused qkv_proj is rebuilt from the new q and θ₀'s k and v."""
    theta0 = checkpoint_state(vllm_model)
    q = noisy(theta0, 0.05, seed=2, only="q_proj")
    backend.load(iter(q))
    partial = raw(backend.lm)
    backend.load(iter([*q, *((n, t) for n, t in theta0.items() if "q_proj" not in n)]))
    assert raw(backend.lm) == partial
    backend.load(iter(theta0.items()))
    assert raw(backend.lm) != partial


def test_the_prefix_cache_is_reset_after_a_load(backend, vllm_model):
    """Prompts sharing a prefix cached under θ₀ are evaluated with the new weights, not with stale KV blocks."""
    assert backend.engine.llm_engine.vllm_config.cache_config.enable_prefix_caching
    theta0 = checkpoint_state(vllm_model)
    shared = [Instance("generate_until", {}, ("0123456789" * 20 + f"{k}", {"until": ["\n"], "do_sample": False, "max_gen_toks": 6}), 0) for k in range(4)]
    backend.lm.generate_until(shared)  # caches the prefix's blocks under θ₀
    backend.load(iter(noisy(theta0, 0.05, seed=3)))
    after = backend.lm.generate_until(shared)
    backend.engine.reset_prefix_cache()
    assert backend.lm.generate_until(shared) == after
    backend.load(iter(theta0.items()))
