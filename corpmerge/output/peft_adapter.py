"""The merged rank-r update as a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors), published atomically.

On each perturbed matrix W (m × n, an nn.Linear's weight), Δ = Σₖ aₖ·ε_r(sₖ) over the K seeds with a non-zero amplitude
is B·A of rank K·r (``noise.lowrank.stacked``): A = [V₁; …; V_K] (K·r × n), B = [a₁·c·U₁ᵀ | … | a_K·c·U_Kᵀ] (m × K·r),
c = float32(1/√r). PEFT's LoRA computes W·x + (α/R)·B·(A·x) with R = K·r; the adapter sets α = R, so the scaling is 1
and the amplitudes and c live in B. Tensors are float32: 4·K·r·(m + n) bytes per matrix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import save_file

from corpmerge.amplitudes import Amplitudes
from corpmerge.errors import CorpmergeError
from corpmerge.model_io import BaseRef
from corpmerge.noise import lowrank
from corpmerge.output.safetensors_writer import staging_dir

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel's prefix before the base model's own module names


def module_name(name: str) -> str:
    """The nn.Linear module of the parameter ``name`` (``<module>.weight``)."""
    if not name.endswith(".weight"):
        raise CorpmergeError(f"output: '{name}' is not a Linear layer's weight, so a LoRA adapter cannot carry its update")
    return name.removesuffix(".weight")


def adapter_config(base: str, modules: Sequence[str], adapter_rank: int) -> dict[str, Any]:
    """PEFT's LoraConfig for rank R = ``adapter_rank`` on ``modules`` (full module names), scaling α/R = 1."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": adapter_rank,
        "lora_alpha": adapter_rank,
        "target_modules": list(modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }


def adapter_tensors(matrices: Mapping[str, Sequence[int]], rank: int, scheme: str, update: Amplitudes) -> dict[str, torch.Tensor]:
    """PEFT's tensors of Δ = Σₖ aₖ·ε_r(sₖ) on each matrix (name → (m, n)): ``<PREFIX><module>.lora_A.weight`` = A and
    ``….lora_B.weight`` = B, float32, over the non-zero amplitudes in seed order."""
    nz = update.nonzero()
    seeds, amps = nz.seeds.tolist(), nz.values.tolist()
    tensors = {}
    for name, shape in matrices.items():
        module = module_name(name)
        factors = [lowrank.factors(int(seed), name, shape, rank, scheme=scheme) for seed in seeds]
        a, b = lowrank.stacked(factors, amps, rank)
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.contiguous()
    return tensors


def adapter_base(base_model: str, base: BaseRef, ref: BaseRef) -> str:
    """The adapter's ``base_model_name_or_path``: what ``AutoModelForCausalLM.from_pretrained`` loads θ₀ from. A Hub id
    as the recipe names it; a local base as an absolute path: its folder, or for a GGUF file (or an embedded alias) the
    float32 checkpoint corpmerge converted it to (``ref``), since ``from_pretrained`` does not load a GGUF file alone."""
    return str(Path(ref.source).resolve()) if base.is_local or base.gguf_file is not None else base_model


def save_adapter(folder: Path, *, base: str, matrices: Mapping[str, Sequence[int]], rank: int, scheme: str, update: Amplitudes) -> dict[str, Any]:
    """Write ``update`` on ``matrices`` (parameter name → (m, n)) as a PEFT LoRA adapter of rank K·``rank`` for the base
    model ``base`` (``adapter_base``) into the existing ``folder``; returns its config."""
    k = int((update.values != 0).sum())
    if k == 0:
        raise CorpmergeError("output: the merged update is zero, so there is no adapter to write")
    if not matrices:
        raise CorpmergeError("output: no perturbed matrix, so there is no adapter to write")
    tensors = adapter_tensors(matrices, rank, scheme, update)
    config = adapter_config(base, [module_name(name) for name in matrices], k * rank)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    log.info("LoRA adapter of rank %d (%d seeds × rank %d) on %d matrices", k * rank, k, rank, len(matrices))
    return config


def write_adapter(
    out_dir: Path, *, base: str, matrices: Mapping[str, Sequence[int]], rank: int, scheme: str, update: Amplitudes, overwrite: bool = False
) -> tuple[Path, int]:
    """``save_adapter`` into ``out_dir``, published atomically; returns the folder and its size in bytes."""
    with staging_dir(Path(out_dir), overwrite) as tmp:
        save_adapter(tmp, base=base, matrices=matrices, rank=rank, scheme=scheme, update=update)
    size = sum(f.stat().st_size for f in Path(out_dir).iterdir() if f.is_file())
    log.info("wrote %s (%d bytes)", out_dir, size)
    return Path(out_dir), size
