"""Scores the base, population entries and candidate updates on the live model.

Each evaluation sets the perturbed parameters to θ₀ + Δ (float32, computed exactly as the
writer computes it, so the scored model is the written model), runs lm-eval, and restores
θ₀ by copying from a float32 snapshot (bit-exact; subtracting noise again would drift).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Protocol

import numpy as np
import torch

from corpmerge.amplitudes import Amplitudes
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.lmeval import TaskSuite, make_lm
from corpmerge.noise import NOISE_BATCH, fill_many
from corpmerge.population import Entry
from corpmerge.scoring.store import Scores, ScoreStore

log = logging.getLogger(__name__)


class Update(Protocol):
    def delta(self, name: str, shape: torch.Size, scratch: torch.Tensor | None = None) -> torch.Tensor: ...


def entry_update(entry: Entry) -> Amplitudes:
    """A population entry as an update: σ·ε(seed)."""
    return Amplitudes(np.array([entry.seed], dtype=np.int64), np.array([entry.sigma], dtype=np.float64))


def entry_subject(entry: Entry) -> str:
    return f"entry:{entry.seed}:{entry.sigma!r}"


def update_subject(label: str, payload: Any) -> str:
    """A stable subject id for a candidate update (hash of what defines it)."""
    return f"{label}:" + hashlib.blake2b(repr(payload).encode(), digest_size=10).hexdigest()


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
    """Perturb in place → lm-eval on chosen examples → restore by copy; results cached in the store."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, names: list[str], suite: TaskSuite, store: ScoreStore, batch_size: int | str):
        self.model, self.suite, self.store = model, suite, store
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in names}
        self.snapshot = {name: p.detach().to(torch.float32, copy=True) for name, p in self.params.items()}
        largest = max(p.numel() for p in self.params.values())
        self.scratch = torch.empty(largest, dtype=torch.float32)
        self.noise_buffer = torch.empty(max(largest, min(sum(p.numel() for p in self.params.values()), NOISE_BATCH)))
        self._on_cpu_f32 = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in self.params.values())
        self.lm = make_lm(model, tokenizer, batch_size)
        self.evaluations = 0

    @torch.no_grad()
    def apply(self, update: Update) -> None:
        """Set every perturbed parameter to θ₀ + Δ."""
        single = update.nonzero() if isinstance(update, Amplitudes) else None
        if single is not None and single.seeds.size == 1 and self._on_cpu_f32:
            self._apply_single_seed(int(single.seeds[0]), float(single.values[0]))
            return
        for name, param in self.params.items():
            delta = update.delta(name, param.shape, self.scratch)
            if self._on_cpu_f32:
                torch.add(self.snapshot[name], delta, out=param.data)
            else:
                param.copy_(self.snapshot[name] + delta.to(param.device))

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

    def scores(
        self, subject: str, fold: str, docs: Docs, update: Update | None = None,
        spec: dict[str, Any] | None = None, suite: TaskSuite | None = None,
    ) -> Scores:
        """Scores of ``subject`` on ``docs`` (from the store when already finished)."""
        if self.store.done(subject, fold):
            return self.store.load(subject, fold)
        if update is not None:
            self.apply(update)
        try:
            scores = (suite or self.suite).evaluate(self.lm, docs)
        finally:
            if update is not None:
                self.restore()
        self.evaluations += 1
        self.store.save(subject, fold, scores, spec)
        return scores


def ordered(scores: Scores, docs: Docs, field: str = "correct") -> np.ndarray:
    """Scores as a vector in the canonical example order of ``docs``."""
    keys = [(task, doc) for task in sorted(docs) for doc in docs[task]]
    return np.array([getattr(scores[k], field) for k in keys], dtype=float)
