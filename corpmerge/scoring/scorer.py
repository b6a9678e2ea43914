"""Scores the base, population entries and candidate updates on the live model.

Each evaluation sets the perturbed parameters to θ₀ + Δ (float32, computed exactly as the
writer computes it, so the scored model is the written model), runs lm-eval, and restores
θ₀ by copying from a float32 snapshot (bit-exact; subtracting noise again would drift).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any, Callable, Protocol

import numpy as np
import torch

from corpmerge.amplitudes import Amplitudes
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.lmeval import TaskSuite, make_lm
from corpmerge.noise import NOISE_BATCH, fill_many
from corpmerge.population import Entry
from corpmerge.scoring.store import Scores

log = logging.getLogger(__name__)


class Update(Protocol):
    def delta(self, name: str, shape: torch.Size, scratch: torch.Tensor | None = None) -> torch.Tensor: ...


def entry_update(entry: Entry) -> Amplitudes:
    """A population entry as an update: σ·ε(seed)."""
    return Amplitudes(np.array([entry.seed], dtype=np.int64), np.array([entry.sigma], dtype=np.float64))


def base_fingerprint(model: torch.nn.Module, names: list[str]) -> str:
    """Hash of the perturbed parameters' names, shapes and float32 values."""
    digest = hashlib.blake2b(digest_size=12)
    params = dict(model.named_parameters())
    for name in names:
        tensor = params[name].detach().to(torch.float32).contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


class Scorer:
    """Perturb in place → lm-eval on chosen examples → restore by copy (the store is the evaluator's business).

    Amplitude updates (population entries, candidates, stage-2 proposals) are materialised
    through a per-(seed, tensor) noise cache bounded by ``memory_budget`` bytes, with exactly
    the arithmetic of ``Amplitudes.delta`` (Δ = ε₁·a₁, then Δ += aⱼ·εⱼ in seed order), so a
    cached evaluation scores the same bits as a regenerated one. The last materialised Δ is
    kept too: an update whose amplitudes are 2ᵏ times it (a probe multiplier, a grid α) is
    2ᵏ·Δ, which is exact in floating point. A tensor-by-tensor update (``ties``) keeps its
    unscaled Δ₁ instead, so every probe multiplier m costs one product Δ₁·m (the bits ``delta``
    computes). One model-sized slot holds either, when the budget allows it.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, names: list[str], suite: TaskSuite, batch_size: int | str, memory_budget: int = 0,
    ):
        self.model, self.suite = model, suite
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in names}
        self.snapshot = {name: p.detach().to(torch.float32, copy=True) for name, p in self.params.items()}
        largest = max(p.numel() for p in self.params.values())
        self.scratch = torch.empty(largest, dtype=torch.float32)
        self.noise_buffer = torch.empty(max(largest, min(sum(p.numel() for p in self.params.values()), NOISE_BATCH)))
        self._on_cpu_f32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in self.params.values())
        self.model_bytes = 4 * sum(p.numel() for p in self.params.values())
        self.noise_cache = NoiseCache(max(0, memory_budget - self.model_bytes))
        self._last: tuple[Amplitudes, dict[str, torch.Tensor]] | None = None
        self._unscaled: tuple[str, dict[str, torch.Tensor]] | None = None
        self._keep_last = memory_budget >= self.model_bytes
        self.lm = make_lm(model, tokenizer, batch_size)
        self.evaluations = 0
        self.examples_evaluated = 0

    @torch.no_grad()
    def apply(self, update: Update) -> None:
        """Set every perturbed parameter to θ₀ + Δ."""
        amps = update.final_amplitudes() if hasattr(update, "final_amplitudes") else update
        if isinstance(amps, Amplitudes) and self._on_cpu_f32:
            nz = amps.nonzero()
            if nz.seeds.size == 1 and not self.noise_cache.has_seed(int(nz.seeds[0])):
                self._apply_single_seed(int(nz.seeds[0]), float(nz.values[0]))
            else:
                self._apply_amplitudes(nz)
            return
        streamed = update.streamed() if hasattr(update, "streamed") else None
        if streamed is not None and self._keep_last:
            self._apply_streamed(*streamed)
            return
        for name, param in self.params.items():
            self._set(name, param, update.delta(name, param.shape, self.scratch))

    def _set(self, name: str, param: torch.nn.Parameter, delta: torch.Tensor) -> None:
        """param ← θ₀ + Δ."""
        if self._on_cpu_f32:
            torch.add(self.snapshot[name], delta, out=param.data)
        else:
            param.copy_(self.snapshot[name] + delta.to(param.device))

    def _apply_streamed(self, key: str, unscaled: Callable[[str, torch.Size], torch.Tensor], multiplier: float) -> None:
        """θ₀ + Δ₁·m, with Δ₁ computed once per key and kept."""
        if self._unscaled is None or self._unscaled[0] != key:
            self._last = self._unscaled = None  # one model-sized slot
            self._unscaled = (key, {name: unscaled(name, param.shape) for name, param in self.params.items()})
        for name, param in self.params.items():
            base = self._unscaled[1][name]
            self._set(name, param, base if multiplier == 1.0 else base * multiplier)

    def _apply_amplitudes(self, nz: Amplitudes) -> None:
        """θ₀ + Σ aⱼ·εⱼ per tensor, from the last Δ (2ᵏ multiple), the noise cache, or fresh draws."""
        factor = self._power_of_two_multiple(nz)
        if factor is not None:
            for name, param in self.params.items():
                torch.add(self.snapshot[name], self._last[1][name], alpha=factor, out=param.data)
            return
        kept: dict[str, torch.Tensor] = {}
        if self._keep_last and nz.seeds.size > 1:
            self._unscaled = None  # one model-sized slot
        pairs = list(zip(nz.seeds.tolist(), nz.values.tolist()))
        for name, param in self.params.items():
            acc = self._delta(name, param.numel(), pairs)
            torch.add(self.snapshot[name].view(-1), acc, out=param.data.view(-1))
            if self._keep_last and len(pairs) > 1:
                kept[name] = acc.view(param.shape)
        self._last = (nz, kept) if kept else None

    def _power_of_two_multiple(self, nz: Amplitudes) -> float | None:
        if self._last is None or self._last[0].seeds.shape != nz.seeds.shape or not np.array_equal(self._last[0].seeds, nz.seeds):
            return None
        ratio = nz.values[0] / self._last[0].values[0]
        exponent = math.frexp(ratio)[0]
        if ratio <= 0 or exponent != 0.5 or not np.array_equal(self._last[0].values * ratio, nz.values):
            return None
        return float(ratio)

    def _delta(self, name: str, numel: int, pairs: list[tuple[int, float]]) -> torch.Tensor:
        """Δ for one tensor with ``Amplitudes.delta``'s arithmetic; noises not in the cache drawn in parallel batches."""
        per_batch = max(1, self.noise_buffer.numel() // max(1, numel))
        acc: torch.Tensor | None = None
        for start in range(0, len(pairs), per_batch):
            batch = pairs[start : start + per_batch]
            noises = [self.noise_cache.get(seed, name) for seed, _ in batch]
            draw = [(k, seed) for k, ((seed, _), noise) in enumerate(zip(batch, noises)) if noise is None]
            views = [self.noise_buffer[j * numel : (j + 1) * numel] for j in range(len(draw))]
            fill_many([(view.numpy(), seed, name) for view, (_, seed) in zip(views, draw)])
            for view, (k, seed) in zip(views, draw):
                kept = self.noise_cache.put(seed, name, view)
                noises[k] = view if kept is None else kept
            for noise, (_, amp) in zip(noises, batch):
                if acc is None:
                    acc = torch.mul(noise, amp)
                else:
                    acc.add_(noise, alpha=amp)
        return acc

    def _apply_single_seed(self, seed: int, amplitude: float) -> None:
        """Fast path for population entries: noise for many tensors drawn in one parallel batch.

        Same arithmetic as ``Amplitudes.delta`` + the writer (Δ = ε·a, then θ₀ + Δ), so the same bits.
        """
        group: list[tuple[str, torch.nn.Parameter]] = []
        used = 0
        for name, param in list(self.params.items()) + [("", None)]:
            if param is None or (group and used + param.numel() > self.noise_buffer.numel()):
                views, offset = [], 0
                for gname, gparam in group:
                    views.append((self.noise_buffer[offset : offset + gparam.numel()], gname, gparam))
                    offset += gparam.numel()
                fill_many([(view.numpy(), seed, gname) for view, gname, _ in views])
                for view, gname, gparam in views:
                    delta = torch.mul(view, amplitude, out=self.scratch[: view.numel()])
                    torch.add(self.snapshot[gname].view(-1), delta, out=gparam.data.view(-1))
                group, used = [], 0
            if param is not None:
                group.append((name, param))
                used += param.numel()

    @torch.no_grad()
    def restore(self) -> None:
        """Back to θ₀, bit-exactly."""
        for name, param in self.params.items():
            param.copy_(self.snapshot[name])

    def evaluate(self, update: Update | None, docs: Docs, suite: TaskSuite | None = None) -> Scores:
        """Evaluate θ₀ + Δ on ``docs`` now (no store); θ₀ is restored afterwards."""
        if update is not None:
            self.apply(update)
        try:
            scores = (suite or self.suite).evaluate(self.lm, docs)
        finally:
            if update is not None:
                self.restore()
        self.evaluations += 1
        self.examples_evaluated += len(scores)
        return scores


class NoiseCache:
    """ε(seed)[tensor] kept in float32 up to ``budget`` bytes; first come, never evicted (no LRU thrash on cycles)."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self._store: dict[tuple[int, str], torch.Tensor] = {}
        self._seeds: set[int] = set()

    def get(self, seed: int, name: str) -> torch.Tensor | None:
        return self._store.get((seed, name))

    def has_seed(self, seed: int) -> bool:
        return seed in self._seeds

    def put(self, seed: int, name: str, noise: torch.Tensor) -> torch.Tensor | None:
        """Keep a copy when it fits; returns the kept tensor or None."""
        size = 4 * noise.numel()
        if self.used + size > self.budget:
            return None
        kept = noise.clone()
        self._store[(seed, name)] = kept
        self._seeds.add(seed)
        self.used += size
        return kept

    def clear(self) -> None:
        self._store.clear()
        self._seeds.clear()
        self.used = 0


def as_docs(keys: list[tuple[str, int]]) -> Docs:
    """[(task, doc)] → {task: [doc, …]}."""
    docs: Docs = {}
    for task, doc in keys:
        docs.setdefault(task, []).append(doc)
    return docs


def ordered(scores: Scores, docs: Docs, field: str = "correct") -> np.ndarray:
    """Scores as a vector in the canonical example order of ``docs``."""
    return in_order(scores, [(task, doc) for task in sorted(docs) for doc in docs[task]], field)


def in_order(scores: Scores, keys: list[tuple[str, int]], field: str = "correct") -> np.ndarray:
    """Scores as a vector in the order of ``keys``."""
    return np.array([getattr(scores[k], field) for k in keys], dtype=float)
