"""The scoring device's memory plan never exceeds the device: Qwen2.5-1.5B and Llama-3-8B shapes (meta tensors, no
weights) on simulated devices, both backends, with and without the fused kernel, with tensor parallelism."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from corpmerge.errors import CorpmergeError
from corpmerge.scoring.memory import ENGINE_FLOOR, MARGIN, GiB, MemoryPlan, Shapes, plan, temporaries

QWEN_1_5B = Qwen2Config(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, tie_word_embeddings=True,
)  # fmt: skip
LLAMA_8B = LlamaConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, tie_word_embeddings=False,
)  # fmt: skip


def shapes(config) -> Shapes:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = list(model.parameters())  # tied weights once
    return Shapes(
        model_params=sum(p.numel() for p in params),
        perturbed=[p.numel() for p in params],
        stored_bytes=sum(p.numel() * 2 for p in params),
        stored_element=2,
        scoring_element=2,
    )


@pytest.fixture(scope="module")
def models() -> dict[str, Shapes]:
    return {"qwen1.5b": shapes(QWEN_1_5B), "llama8b": shapes(LLAMA_8B)}


def check(p: MemoryPlan, s: Shapes, total: int, vllm: bool, tp: int, free: int | None = None) -> None:
    assert p.used() <= (total if free is None else free)
    assert p.cache >= 0 and p.temporaries > 0
    if vllm:
        assert p.theta0 == 0 and p.theta0_in_workers == -(-s.stored_bytes // tp)  # θ₀ kept where it is written
        assert p.engine_share * total >= p.weights + ENGINE_FLOOR
        assert p.engine_share * total + p.beside_engine <= (total if free is None else free)
    else:
        assert p.engine_share is None and p.used() >= p.weights + ENGINE_FLOOR + p.beside_engine  # room for the forward pass


@pytest.mark.parametrize("total_gib", [16, 24, 40, 80, 141])
@pytest.mark.parametrize("vllm,tp", [(False, 1), (True, 1), (True, 2)])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shared", [0.0, 0.3])  # the share of the device another process holds
def test_the_plan_fits_the_device_or_says_why_in_one_line(models, total_gib, vllm, fused, tp, shared):
    for s in models.values():
        total = total_gib * GiB
        free = int(total * (1 - shared))
        try:
            p = plan(s, total=total, free=free, vllm=vllm, fused=fused, tensor_parallel=tp)
        except CorpmergeError as exc:
            assert "\n" not in str(exc) and "cannot hold" in str(exc)
            in_workers = -(-s.stored_bytes // tp) if vllm else 0
            need = -(-s.model_params * 2 // tp) + ENGINE_FLOOR + in_workers + MARGIN
            assert need + temporaries(s, theta0_on_device=vllm, fused=fused, reload=vllm) > free  # refused only when even θ₀ on the host does not fit
            continue
        check(p, s, total, vllm, tp, free)


def test_qwen_1_5b_on_an_80_gb_device(models):
    s = models["qwen1.5b"]
    hf = plan(s, total=80 * GiB, vllm=False, fused=True)
    assert hf.theta0_where == "device" and hf.theta0 == s.stored_bytes
    engine = plan(s, total=80 * GiB, vllm=True, fused=True)
    # vLLM's default 0.92 would leave 6.4 GiB; the engine gets what is left after θ₀ in the workers and the temporaries
    assert engine.engine_share < 0.92 and engine.beside_engine > 0.08 * 80 * GiB
    assert any("gpu_memory_utilization" in line for line in engine.lines())


def test_a_users_share_that_leaves_too_little_is_refused(models):
    with pytest.raises(CorpmergeError, match="gpu_memory_utilization 0.92 leaves too little"):
        plan(models["qwen1.5b"], total=24 * GiB, vllm=True, fused=True, engine_share=0.92)
    with pytest.raises(CorpmergeError, match=r"gpu_memory_utilization: 0.03 gives the engine .*less than the model"):
        plan(models["qwen1.5b"], total=80 * GiB, vllm=True, fused=True, engine_share=0.03)
    ok = plan(models["qwen1.5b"], total=80 * GiB, vllm=True, fused=True, engine_share=0.5)
    assert ok.engine_share == 0.5 and ok.used() <= 80 * GiB


def test_the_noise_cache_is_what_the_user_asked_for_or_what_fits(models, caplog):
    s = models["qwen1.5b"]
    engine = plan(s, total=80 * GiB, vllm=True, fused=True, cache_setting=10 * GiB)
    assert engine.cache == 10 * GiB and engine.used() <= 80 * GiB
    assert plan(s, total=80 * GiB, vllm=True, fused=True).cache == 0  # the workers write every update in place
    hf = plan(s, total=80 * GiB, vllm=False, fused=True, cache_setting=500 * GiB)
    assert hf.used() <= 80 * GiB and hf.cache < 80 * GiB and "does not fit beside the model" in caplog.text


def test_theta0_goes_to_the_host_when_the_device_cannot_hold_it(models):
    s = models["llama8b"]
    p = plan(s, total=36 * GiB, vllm=False, fused=True)
    assert p.theta0_where == "host" and p.used() <= 36 * GiB
    assert plan(s, total=80 * GiB, vllm=False, fused=True).theta0_where == "device"


def test_the_host_needs_no_plan(models):
    p = plan(models["qwen1.5b"], total=None, vllm=False, fused=False, cache_setting=123)
    assert p.total is None and p.cache == 123 and p.lines() == ["memory: scoring on the host; θ₀ kept there"]
