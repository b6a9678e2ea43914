"""The seam between "what Δ is" (the scorer) and "how a model with these weights is evaluated" (a backend).

The scorer computes θ₀ + Δ per Hugging Face parameter name on the backend's device (Δ in float32,
one rounding to the scoring dtype) and hands the tensors to the backend; restore hands θ₀ back. A
backend owns the model's layout (an HF module in place, a vLLM engine with fused, sharded or
pre-packed weights) and the lm-eval LM that evaluates it.

A backend with ``in_place = True`` also writes an amplitude update itself (``InPlace``): the scorer
calls ``track`` once with the perturbed tensors' θ₀, then ``write(seeds, amplitudes, scheme)`` per
update and ``restore()`` for θ₀ — a few numbers per update instead of model-sized tensors; the
written values are ``noise.write_update``'s, so the same bits as ``load`` of the scorer's θ₀ + Δ.
Updates that are not amplitudes (a tensor-by-tensor ``ties`` update) still go through ``load``.

A backend that scores several rank-r updates in one batch says so with ``max_loras`` > 0 (``lora_slots``) and a method
``lora(matrices, rank, scheme)`` whose ``batch([(seeds, amplitudes), …])`` yields one lm-eval LM per update, each scoring
y = W·x + B·(A·x) with Δ = B·A on the base weights (``vllm_lora``); the engine takes ``engine_options`` for it.
"""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, get_args

import torch

from corpmerge.errors import CorpmergeError
from corpmerge.recipe import BackendName

# a backend's name is the recipe's choice; its class, ``<NAME>Backend`` in ``corpmerge.scoring.backends.<name>``
BACKENDS = {name: f"{__name__}.{name}:{name.upper()}Backend" for name in get_args(BackendName)}
RANK_ON_VLLM_WORKERS = (
    "scoring.workers: population.rank with the vllm backend is scored in this process (LoRA batches on its one engine) in this "
    "version; leave scoring.workers out, or use scoring.backend: hf"
)
LORA_ENTRIES = 8  # rank-r updates per vLLM batch (max_loras) unless scoring.model_args sets it


class Backend(Protocol):
    """A model that scores with lm-eval and whose perturbed parameters can be set by HF name."""

    kind: str  # part of the store identity: stores of different backends are never mixed
    device: torch.device  # where the model lives; the scorer forms θ₀ + Δ there
    device_type: str  # "cpu", "cuda", …: part of the store identity
    dtype: torch.dtype  # the scoring dtype; every tensor given to ``load`` has it

    def load(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Set these HF-named parameters to exactly these values (tensors in ``dtype``, on ``device`` or the host; read, not kept);
        all others stay as they are; every cache that depends on the weights is dropped. The iterator is lazy."""

    @property
    def lm(self) -> Any:
        """The lm-eval ``LM`` that evaluates the current weights."""

    def folder_lm(self, folder: Path) -> AbstractContextManager[Any]:
        """An lm-eval ``LM`` for a written model folder, loaded the way a user of this backend loads it."""

    def close(self) -> None: ...


class InPlace(Protocol):
    """What a backend with ``in_place = True`` adds: amplitude updates written where the model holds its weights.

    Backends without it have no ``in_place`` attribute (or ``in_place = False``); read it with
    ``getattr(backend, "in_place", False)``. ``load`` keeps working beside it (the fallback path)."""

    in_place: bool

    def track(self, theta0: Mapping[str, torch.Tensor]) -> None:
        """Called once, before any ``write``: these HF-named tensors (θ₀ in stored precision, the scorer's) are the
        perturbed set. The backend keeps θ₀ of each where it writes it (it may read its own copy of the same bits
        from the checkpoint); a model it cannot write in place is a ``CorpmergeError`` here (one line)."""

    def write(self, seeds: Sequence[int], amplitudes: Sequence[float], scheme: str, rank: int | None = None) -> None:
        """Set every tracked parameter to round(θ₀ + Σₖ aₖ·ε(sₖ)) — ``noise.write_update``'s arithmetic, one rounding to
        ``dtype`` — and every other parameter to θ₀; drop every cache that depends on the weights. No seeds: θ₀.
        ``rank``: ε is each matrix's rank-r noise ε_r (``population.rank``); a backend that cannot write it refuses it."""

    def restore(self) -> None:
        """Every tracked parameter back to θ₀, bit-exactly (``write([], [], scheme)``)."""


def make_backend(
    kind: str,
    *,
    checkpoint: Path,
    tokenizer: Any,
    device: torch.device,
    dtype: torch.dtype,
    model_args: dict[str, Any],
    batch_size: int | str,
) -> Backend:
    """Build the named backend (its engine is imported only when it is asked for)."""
    module, _, name = BACKENDS[kind].partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise CorpmergeError(f"scoring.backend: '{kind}' needs a package that is not installed ({exc.name}); see docs/backends.md") from None
    return cls(checkpoint=checkpoint, tokenizer=tokenizer, device=device, dtype=dtype, model_args=model_args, batch_size=batch_size)


def lora_slots(backend: Any) -> int:
    """How many rank-r updates ``backend`` scores in one batch through LoRA adapters (its ``lora`` method); 0: none."""
    return int(getattr(backend, "max_loras", 0)) if callable(getattr(backend, "lora", None)) else 0


def engine_options(kind: str, names: Sequence[str], rank: int | None) -> dict[str, Any]:
    """The engine settings a run at ``population.rank`` r needs from backend ``kind``: on vllm, LoRA batches of
    ``LORA_ENTRIES`` adapters of rank r on the matrices ``names`` (``vllm_lora.engine_args``; scoring.model_args
    override them); nothing otherwise."""
    if rank is None or kind != "vllm":
        return {}
    from corpmerge.scoring.backends.vllm_lora import engine_args  # imports vllm: only when it is the backend

    return engine_args(names, rank, LORA_ENTRIES)
