"""A rank-r update scored through low-rank adapters on the frozen base: no weight is rewritten.

On a matrix W (m × n, an nn.Linear's weight), the update Δ = Σₖ aₖ·ε_r(sₖ) with ε_r(s) = U(s)ᵀ·V(s)·c
(``noise.lowrank``: U r × m, V r × n, c = float32(1/√r)) is itself of rank K·r:

    Δ = B·A,   B = [a₁·c·U₁ᵀ | … | a_K·c·U_Kᵀ]  (m × K·r),   A = [V₁; …; V_K]  (K·r × n)

so the layer's output for θ₀ + Δ is y = W·x + B·(A·x): a forward hook adds B·(A·x), computed in float32
and added to the layer's output before one rounding to its dtype. An update costs K·r·(m + n) numbers per
matrix; clearing it removes the hooks, so the base model computes exactly what it did before.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from corpmerge import noise
from corpmerge.noise import lowrank

log = logging.getLogger(__name__)

Factors = tuple[torch.Tensor, torch.Tensor]  # (U r × m, V r × n), float32 on the layer's device


def module_name(name: str) -> str:
    """The nn.Linear that holds the parameter ``name`` (``<module>.weight``)."""
    if not name.endswith(".weight"):
        raise ValueError(f"low-rank adapters: '{name}' is not a Linear layer's weight")
    return name.removesuffix(".weight")


class LowRankAdapters:
    """Adapters on the nn.Linear layers whose weights are ``names`` (the model's parameter names, which are the noise's
    tensor names): ``set`` makes the model compute θ₀ + Σₖ aₖ·ε_r(sₖ) on those layers, ``clear`` returns it to θ₀.

    The factors of the current update's seeds are kept, so a next update over some of the same seeds draws only the new ones.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], rank: int, scheme: str = noise.DEFAULT_SCHEME):
        self.rank, self.scheme = rank, scheme
        self.layers: dict[str, nn.Linear] = {}
        for name in names:
            layer = model.get_submodule(module_name(name))
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"low-rank adapters: '{name}' belongs to a {type(layer).__name__}, not an nn.Linear")
            lowrank.check(rank, layer.weight.shape)
            self.layers[name] = layer
        self._factors: dict[int, dict[str, Factors]] = {}
        self._updates: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list[RemovableHandle] = []

    def _draw(self, seed: int) -> dict[str, Factors]:
        """U and V of every layer's ε_r(seed), on the layer's device (kept while the seed is in the update)."""
        if seed not in self._factors:
            self._factors[seed] = {
                name: lowrank.factors(seed, name, layer.weight.shape, self.rank, device=layer.weight.device, scheme=self.scheme)
                for name, layer in self.layers.items()
            }
        return self._factors[seed]

    @torch.no_grad()
    def set(self, seeds: Sequence[int], amplitudes: Sequence[float]) -> None:
        """Every layer computes W·x + B·(A·x) for the update Σₖ aₖ·ε_r(sₖ) (zero amplitudes dropped; none left: ``clear``)."""
        if len(seeds) != len(amplitudes):
            raise ValueError(f"low-rank adapters: {len(seeds)} seeds and {len(amplitudes)} amplitudes")
        pairs = [(int(s), float(a)) for s, a in zip(seeds, amplitudes) if a != 0]
        self.clear()
        if not pairs:
            return
        drawn = {seed: self._draw(seed) for seed, _ in pairs}
        self._factors = drawn
        amps = [a for _, a in pairs]
        for name, layer in self.layers.items():
            self._updates[name] = lowrank.stacked([drawn[seed][name] for seed, _ in pairs], amps, self.rank)
            self._handles.append(layer.register_forward_hook(self._hook(name)))
        log.debug("low-rank adapters: %d seeds at rank %d on %d layers", len(pairs), self.rank, len(self.layers))

    def _hook(self, name: str):
        def add_update(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            a, b = self._updates[name]
            x = args[0]
            low = nn.functional.linear(nn.functional.linear(x.to(torch.float32), a), b)
            return (output.to(torch.float32) + low).to(output.dtype)

        return add_update

    def clear(self) -> None:
        """Remove every hook: the layers compute exactly what the base does (the current seeds' factors are kept)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._updates.clear()

    def close(self) -> None:
        """``clear`` and drop every kept factor."""
        self.clear()
        self._factors.clear()

    def __enter__(self) -> "LowRankAdapters":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
