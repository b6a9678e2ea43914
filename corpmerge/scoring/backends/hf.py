"""The Hugging Face backend: one transformers model on the scoring device, edited in place, evaluated by lm-eval's HFLM."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from corpmerge import noise
from corpmerge.dtypes import DTYPE_NAMES
from corpmerge.model_io import BaseRef, load_base
from corpmerge.scoring.lmeval import make_lm

log = logging.getLogger(__name__)


class HFBackend:
    """The model in the scoring dtype on ``device`` (one copy; θ₀ is the scorer's, on the device or the host), written in place."""

    kind = "hf"
    in_place = True

    def __init__(self, *, checkpoint: Path, tokenizer: Any, device: torch.device, dtype: torch.dtype, model_args: dict[str, Any], batch_size: int | str):
        self.dtype, self.device = dtype, torch.device(device)
        self.device_type = self.device.type
        self.tokenizer, self.batch_size, self.model_args = tokenizer, batch_size, model_args
        self.model = load_base(BaseRef(str(checkpoint)), DTYPE_NAMES[dtype], device, **model_args)
        self.params = dict(self.model.named_parameters())
        self._theta0: dict[str, torch.Tensor] = {}
        self._lm = make_lm(self.model, tokenizer, batch_size)

    @torch.no_grad()
    def load(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, value in tensors:
            self.params[name].copy_(value)

    def track(self, theta0: Mapping[str, torch.Tensor]) -> None:
        """θ₀ of the perturbed parameters (the scorer's tensors, on this device or on the host)."""
        self._theta0 = dict(theta0)

    @torch.no_grad()
    def write(self, seeds: Sequence[int], amplitudes: Sequence[float], scheme: str, rank: int | None = None) -> None:
        """Each tracked parameter ← round(θ₀ + Σₖ aₖ·ε(sₖ)) in place, by the fused kernel (one read of θ₀, one write);
        with ``rank``, ε is each matrix's rank-r noise ε_r (``noise.lowrank``)."""
        for name, theta in self._theta0.items():
            theta = theta.to(self.device, non_blocking=True)
            low = {"rank": rank, "shape": tuple(theta.shape)} if rank is not None else {}
            noise.write_update(self.params[name].view(-1), theta.view(-1), name, seeds, amplitudes, scheme_name=scheme, **low)

    def restore(self) -> None:
        self.write([], [], noise.DEFAULT_SCHEME)

    @property
    def lm(self) -> Any:
        return self._lm

    @contextmanager
    def folder_lm(self, folder: Path) -> Iterator[Any]:
        """``AutoModelForCausalLM.from_pretrained(folder)`` in the folder's own dtype on the scoring device, as an HFLM."""
        device = next(self.model.parameters()).device
        model = load_base(BaseRef(str(folder)), "auto", device, **self.model_args)
        try:
            yield make_lm(model, self.tokenizer, self.batch_size)
        finally:
            del model

    def close(self) -> None:
        self.params.clear()
