"""The Hugging Face backend: one transformers model on the scoring device, edited in place, evaluated by lm-eval's HFLM.

After ``use_adapters`` (``output.format: peft``) the weights stay θ₀ and a rank-r update is set as low-rank adapters
(``backends.lora``): y = W·x + B·(A·x), the arithmetic of PEFT's LoRA layer at scaling 1, which the written adapter
is loaded into. A written folder that holds an adapter (``adapter_config.json``) is loaded as PEFT loads it."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from corpmerge import noise
from corpmerge.dtypes import DTYPE_NAMES
from corpmerge.errors import CorpmergeError
from corpmerge.model_io import BaseRef, load_base
from corpmerge.scoring.backends.lora import LowRankAdapters
from corpmerge.scoring.lmeval import make_lm

ADAPTER_CONFIG = "adapter_config.json"  # what makes a written folder a PEFT adapter

log = logging.getLogger(__name__)


class HFBackend:
    """The model in the scoring dtype on ``device`` (one copy; θ₀ is the scorer's, on the device or the host), written in place."""

    kind = "hf"
    in_place = True

    def __init__(
        self,
        *,
        checkpoint: Path,
        tokenizer: Any,
        device: torch.device,
        dtype: torch.dtype,
        model_args: dict[str, Any],
        batch_size: int | str,
    ):
        self.adapters, self._adapters = False, None  # ``use_adapters``: updates set as low-rank adapters on θ₀
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

    def use_adapters(self) -> None:
        """From now on ``write`` sets an update as low-rank adapters on the frozen θ₀ and ``restore`` removes them
        (``output.format: peft``: the gate scores the adapter that ships); called once, before the scorer's ``track``."""
        self.adapters = True

    def track(self, theta0: Mapping[str, torch.Tensor]) -> None:
        """θ₀ of the perturbed parameters (the scorer's tensors, on this device or on the host)."""
        self._theta0 = dict(theta0)

    @torch.no_grad()
    def write(self, seeds: Sequence[int], amplitudes: Sequence[float], scheme: str, rank: int | None = None) -> None:
        """Each tracked parameter ← round(θ₀ + Σₖ aₖ·ε(sₖ)) in place, by the fused kernel (one read of θ₀, one write);
        with ``rank``, ε is each matrix's rank-r noise ε_r (``noise.lowrank``). With adapters: the weights stay θ₀ and
        each tracked layer computes W·x + B·(A·x) with B·A = Σₖ aₖ·ε_r(sₖ)."""
        if self.adapters:
            self._low_rank(scheme, rank).set(seeds, amplitudes)
            return
        for name, theta in self._theta0.items():
            theta = theta.to(self.device, non_blocking=True)
            low = {"rank": rank, "shape": tuple(theta.shape)} if rank is not None else {}
            noise.write_update(self.params[name].view(-1), theta.view(-1), name, seeds, amplitudes, scheme_name=scheme, **low)

    def _low_rank(self, scheme: str, rank: int | None) -> LowRankAdapters:
        """The adapters on the tracked layers for this scheme and rank (made on first use)."""
        if rank is None:
            raise CorpmergeError("output.format: peft scores rank-r updates through adapters, and this update is full rank; set population.rank")
        if self._adapters is None or (self._adapters.scheme, self._adapters.rank) != (scheme, rank):
            if self._adapters is not None:
                self._adapters.close()
            self._adapters = LowRankAdapters(self.model, list(self._theta0), rank, scheme)
        return self._adapters

    def restore(self) -> None:
        if self.adapters:
            if self._adapters is not None:
                self._adapters.clear()
            return
        self.write([], [], noise.DEFAULT_SCHEME)

    @property
    def lm(self) -> Any:
        return self._lm

    @contextmanager
    def folder_lm(self, folder: Path) -> Iterator[Any]:
        """``AutoModelForCausalLM.from_pretrained(folder)`` in the folder's own dtype on the scoring device, as an HFLM; an
        adapter folder: its ``base_model_name_or_path`` in the scoring dtype, then ``PeftModel.from_pretrained(base, folder)``."""
        device = next(self.model.parameters()).device
        if (Path(folder) / ADAPTER_CONFIG).is_file():
            from peft import PeftModel

            base = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
            model = PeftModel.from_pretrained(load_base(BaseRef(base), DTYPE_NAMES[self.dtype], device, **self.model_args), str(folder)).eval()
        else:
            model = load_base(BaseRef(str(folder)), "auto", device, **self.model_args)
        try:
            yield make_lm(model, self.tokenizer, self.batch_size)
        finally:
            del model

    def close(self) -> None:
        if self._adapters is not None:
            self._adapters.close()
        self.params.clear()
