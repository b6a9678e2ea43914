"""The merge as a PEFT LoRA adapter (output.peft_adapter): it loads in PEFT, its merged weights are θ₀ + Σₖ aₖ·ε_r(sₖ)
to float tolerance (θ₀ exactly elsewhere), its logits are the full-weights model's, its size is 4·K·r·(m + n) per matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from tiny import build_tiny_model, byte_tokenizer
from transformers import AutoModelForCausalLM

from corpmerge import noise
from corpmerge.amplitudes import Amplitudes
from corpmerge.errors import CorpmergeError
from corpmerge.output.peft_adapter import CONFIG_FILE, WEIGHTS_FILE, write_adapter

RANK = 4
SCHEME = noise.DEFAULT_SCHEME
UPDATE = Amplitudes(np.array([4, 11, 2**40 + 5, 99]), np.array([0.02, 0.0, -0.035, 0.015]))  # K = 3 non-zero seeds
TOKENS = torch.tensor([[5, 71, 200, 33, 9, 140, 18, 77, 3, 250], [12, 12, 99, 180, 44, 1, 6, 230, 101, 64]])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny model with as many embeddings as its tokenizer has tokens: HFLM with ``peft=`` resizes them to the
    tokenizer's size, which would change the log-softmax over the vocabulary."""
    return build_tiny_model(tmp_path_factory.mktemp("peft") / "base", vocab_size=len(byte_tokenizer()))


def load(folder) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def perturbed(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Layer 0's attention and MLP matrices and layer 1's MLP: layer 1's attention stays θ₀."""
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.dim() == 2 and (n.startswith("model.layers.0.") or n.startswith("model.layers.1.mlp."))}


@torch.no_grad()
def full_weights(folder, matrices: dict[str, tuple[int, int]]) -> torch.nn.Module:
    """The full-weights output: each matrix θ₀ + Σₖ aₖ·ε_r(sₖ)."""
    model = load(folder)
    params = dict(model.named_parameters())
    for name, shape in matrices.items():
        params[name].add_(UPDATE.delta(name, torch.Size(shape), scheme=SCHEME, rank=RANK))
    return model


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    matrices = perturbed(load(base))
    folder, size = write_adapter(tmp_path_factory.mktemp("out") / "adapter", base=str(base), matrices=matrices, rank=RANK, scheme=SCHEME, update=UPDATE)
    return folder, size, matrices


def test_the_config_is_peft_lora_of_rank_k_r_with_scaling_one(adapter, base):
    folder, size, matrices = adapter
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == str(base)
    assert config["r"] == config["lora_alpha"] == 3 * RANK
    assert config["target_modules"] == [n.removesuffix(".weight") for n in matrices]
    assert (config["bias"], config["fan_in_fan_out"], config["use_rslora"], config["lora_dropout"]) == ("none", False, False, 0.0)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["adapter"]  # nothing staged is left beside it


def test_the_size_is_4_k_r_m_plus_n_per_matrix_plus_a_header(adapter):
    folder, size, matrices = adapter
    payload = sum(4 * 3 * RANK * (m + n) for m, n in matrices.values())
    weights = (folder / WEIGHTS_FILE).stat().st_size
    assert payload < weights <= payload + 200 * 2 * len(matrices)
    assert size == weights + (folder / CONFIG_FILE).stat().st_size


def test_peft_loads_it_and_merges_to_the_full_weights(adapter, base):
    folder, _, matrices = adapter
    theta0 = dict(load(base).state_dict())
    full = full_weights(base, matrices)
    peft_model = PeftModel.from_pretrained(load(base), folder).eval()
    with torch.no_grad():
        want = full(TOKENS).logits
        got = peft_model(TOKENS).logits
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    merged = peft_model.merge_and_unload().state_dict()
    expected = full.state_dict()
    assert merged.keys() == expected.keys()
    for name, value in merged.items():
        if name in matrices:
            assert not torch.equal(value, theta0[name])
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, theta0[name]), name


def test_an_existing_folder_is_kept_unless_overwritten(adapter, base):
    folder, size, matrices = adapter
    with pytest.raises(CorpmergeError, match="already exists"):
        write_adapter(folder, base=str(base), matrices=matrices, rank=RANK, scheme=SCHEME, update=UPDATE)
    assert (folder / WEIGHTS_FILE).stat().st_size + (folder / CONFIG_FILE).stat().st_size == size
    one = Amplitudes(np.array([7]), np.array([0.01]))
    again, smaller = write_adapter(folder, base=str(base), matrices=matrices, rank=RANK, scheme=SCHEME, update=one, overwrite=True)
    assert again == folder and smaller < size and json.loads((folder / CONFIG_FILE).read_text())["r"] == RANK
    write_adapter(folder, base=str(base), matrices=matrices, rank=RANK, scheme=SCHEME, update=UPDATE, overwrite=True)  # as the module fixture had it


def test_a_zero_update_or_a_non_matrix_is_refused(tmp_path, base):
    zero = Amplitudes(np.array([1]), np.array([0.0]))
    with pytest.raises(CorpmergeError, match="update is zero"):
        write_adapter(tmp_path / "a", base=str(base), matrices={"model.layers.0.mlp.up_proj.weight": (64, 32)}, rank=RANK, scheme=SCHEME, update=zero)
    with pytest.raises(CorpmergeError, match="not a Linear layer's weight"):
        write_adapter(tmp_path / "b", base=str(base), matrices={"model.norm": (32, 1)}, rank=RANK, scheme=SCHEME, update=UPDATE)
    assert not any(tmp_path.iterdir())


def per_example(lm, tasks) -> list[tuple[list[float], float]]:
    """lm-eval's per-example results on the tiny task: each choice's log-likelihood and the example's accuracy."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=lm, tasks=["tiny_mc"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True, verbosity="ERROR")
    samples = sorted(out["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    return [([float(ll) for ll, _ in s["filtered_resps"]], float(s["acc"])) for s in samples]


def test_lm_eval_with_peft_scores_as_the_full_weights_do(adapter, base, tiny_task, tmp_path):
    from lm_eval.models.huggingface import HFLM

    folder, _, matrices = adapter
    full = tmp_path / "full"
    full_weights(base, matrices).save_pretrained(full)
    byte_tokenizer().save_pretrained(full)
    with_adapter = per_example(HFLM(pretrained=str(base), peft=str(folder), dtype="float32", device="cpu", batch_size=8), tiny_task)
    with_weights = per_example(HFLM(pretrained=str(full), dtype="float32", device="cpu", batch_size=8), tiny_task)
    assert len(with_adapter) == 16 and [acc for _, acc in with_adapter] == [acc for _, acc in with_weights]
    np.testing.assert_allclose([ll for lls, _ in with_adapter for ll in lls], [ll for lls, _ in with_weights for ll in lls], rtol=0, atol=1e-4)
