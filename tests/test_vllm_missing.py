"""Without vllm installed, asking for the vLLM backend is one line naming the field (its own tests run in .venv-vllm)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from corpmerge.errors import CorpmergeError
from corpmerge.scoring.backends import make_backend


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_the_vllm_backend_without_vllm_is_one_line(tiny_model):
    with pytest.raises(CorpmergeError, match=r"^scoring.backend: 'vllm' needs a package that is not installed \(vllm\)"):
        make_backend(
            "vllm",
            checkpoint=tiny_model,
            tokenizer=None,
            device=torch.device("cpu"),
            dtype=torch.float32,
            model_args={},
            batch_size=8,
        )
