"""Engine lifecycle and the one-line errors of a bad engine configuration."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch
from lm_eval.api.instance import Instance
from tiny import build_tiny_model
from vllm_tiny import ENGINE_ARGS, VLLM_TINY, checkpoint_state, vllm_model  # noqa: F401 (fixture)

from corpmerge.errors import CorpmergeError
from corpmerge.scoring.backends.vllm import VLLMBackend

CPU = torch.device("cpu")
GREEDY = [Instance("generate_until", {}, (f"{k}+1=", {"until": ["\n"], "do_sample": False, "max_gen_toks": 4}), 0) for k in range(4)]
LL = [Instance("loglikelihood", {}, (f"{k}+1=", f" {k + 1}"), 0) for k in range(4)]


def open_backend(folder, **model_args):
    from transformers import AutoTokenizer

    return VLLMBackend(checkpoint=folder, tokenizer=AutoTokenizer.from_pretrained(folder), device=CPU, dtype=torch.float32, model_args=model_args)


def test_engine_errors_name_the_field(vllm_model):
    with pytest.raises(CorpmergeError, match=r"^scoring.model_args: .*unexpected keyword argument 'no_such_option'"):
        open_backend(vllm_model, no_such_option=1)
    with pytest.raises(CorpmergeError, match=r"^scoring.model_args: dtype is set by corpmerge"):
        open_backend(vllm_model, dtype="float16")
    with pytest.raises(CorpmergeError, match=r"^scoring.backend: the installed vllm runs on 'cpu' but scoring runs on 'cuda'"):
        VLLMBackend(checkpoint=vllm_model, tokenizer=None, device=torch.device("cuda"), dtype=torch.float32, model_args={})
    with pytest.raises(CorpmergeError) as info:
        open_backend(vllm_model, **{**ENGINE_ARGS, "max_model_len": 10**7})
    assert str(info.value).startswith("scoring.model_args: ") and "\n" not in str(info.value)


def test_one_engine_at_a_time_and_a_closed_one_frees_the_process(vllm_model, tmp_path):
    first = open_backend(vllm_model, **ENGINE_ARGS)
    with pytest.raises(RuntimeError, match="one vllm engine per process"):
        open_backend(vllm_model, **ENGINE_ARGS)
    text = first.lm.generate_until(GREEDY)
    first.close()
    first.close()  # idempotent
    other = build_tiny_model(tmp_path / "other", seed=5, **VLLM_TINY)
    second = open_backend(other, **ENGINE_ARGS)
    try:
        assert second.lm.generate_until(GREEDY) != text  # another model: the new engine, not a leftover
    finally:
        second.close()


def test_folder_lm_runs_the_written_folder_on_a_fresh_engine(vllm_model, tmp_path):
    """What the shipped check sees: the folder as `vllm.LLM(model=folder)` runs it, equal to the same tensors loaded in place."""
    import shutil

    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from corpmerge.scoring.backends import make_backend

    theta0 = checkpoint_state(vllm_model)
    g = torch.Generator().manual_seed(7)
    moved = {name: t + 0.05 * torch.randn(t.shape, generator=g) for name, t in theta0.items()}
    folder = tmp_path / "written"
    shutil.copytree(vllm_model, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
    save_file(moved, folder / "model.safetensors", metadata={"format": "pt"})
    backend = make_backend(
        "vllm",
        checkpoint=vllm_model,
        tokenizer=AutoTokenizer.from_pretrained(vllm_model),
        device=CPU,
        dtype=torch.float32,
        model_args=ENGINE_ARGS,
        batch_size=8,
    )
    try:
        base = backend.lm.generate_until(GREEDY)
        backend.load(iter(moved.items()))
        in_place = backend.lm.generate_until(GREEDY), backend.lm.loglikelihood(LL)
        with backend.folder_lm(folder) as lm:
            assert (lm.generate_until(GREEDY), lm.loglikelihood(LL)) == in_place
        assert backend.lm.generate_until(GREEDY) == base  # the scoring engine is back, at θ₀
    finally:
        backend.close()


def test_at_most_one_engine_is_alive_during_the_shipped_check(vllm_model, tmp_path):
    """On a GPU two engines do not fit (each takes gpu_memory_utilization of it): the scoring engine must be
    freed, not merely shut down, before the written folder's engine starts, and that one freed before the scoring
    engine starts again, even while the caller still holds the folder's LM."""
    import gc
    import shutil
    import weakref

    folder = tmp_path / "written"
    shutil.copytree(vllm_model, folder)
    backend = open_backend(vllm_model, **ENGINE_ARGS)
    scoring = weakref.ref(backend.engine)
    try:
        with backend.folder_lm(folder) as lm:
            gc.collect()
            assert scoring() is None
            checking = weakref.ref(lm.engine)
            text = lm.generate_until(GREEDY)
        gc.collect()
        assert checking() is None and lm.engine is None
        assert backend.lm.generate_until(GREEDY) == text  # the same weights, on the scoring engine started again
    finally:
        backend.close()


def test_a_model_whose_layout_cannot_be_derived_is_refused_in_one_line(tmp_path):
    """GPT-2 stores its projections transposed (Conv1D) and vLLM's loader transposes them: no window of
    ``noise.write_update`` writes that, so in-place updates are refused (``load`` still works)."""
    from tiny import VOCAB, byte_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=256, n_layer=1, n_head=4, n_positions=512, eos_token_id=256, bos_token_id=256)).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    backend = open_backend(folder, **ENGINE_ARGS)
    try:
        with pytest.raises(CorpmergeError) as info:
            backend.track(checkpoint_state(folder))
        message = str(info.value)
        assert message.startswith("scoring.backend: vllm cannot write this model's weights in place (") and message.endswith("; use backend: hf")
        assert "\n" not in message and "not in row-major order" in message
    finally:
        backend.close()
