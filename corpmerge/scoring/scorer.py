"""Scores the base, population entries and candidate updates through a backend.

Each evaluation hands the backend θ₀ + Δ for every perturbed tensor: Δ in float32, added to
θ₀ in float32 and rounded once to the scoring dtype — exactly the writer's arithmetic, so when
the scoring dtype is the output dtype the scored tensors are the written tensors, bit for bit.
All of it happens on the scoring device: θ₀ is the checkpoint's own tensors in their stored
precision, kept there when it fits (``theta0.place``); the noise is drawn there when the scheme
draws on any device (``philox4x32-10-icdf-v1``), else on the host and copied. Restoring θ₀
hands θ₀ back (bit-exact; subtracting noise drifts).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from corpmerge import noise
from corpmerge.amplitudes import Amplitudes
from corpmerge.errors import CorpmergeError
from corpmerge.population import Entry
from corpmerge.scoring.backends import Backend, lora_slots
from corpmerge.scoring.folds import Docs
from corpmerge.scoring.lmeval import TaskSuite
from corpmerge.scoring.store import Scores

log = logging.getLogger(__name__)
Values = Iterator[tuple[str, torch.Tensor]]


class Update(Protocol):
    def delta(
        self, name: str, shape: torch.Size, scratch: torch.Tensor | None = None, scheme: str = noise.DEFAULT_SCHEME, rank: int | None = None
    ) -> torch.Tensor: ...


def entry_update(entry: Entry) -> Amplitudes:
    """A population entry as an update: σ·ε(seed)."""
    return Amplitudes(np.array([entry.seed], dtype=np.int64), np.array([entry.sigma], dtype=np.float64))


def base_fingerprint(theta0: dict[str, torch.Tensor]) -> str:
    """Hash of the perturbed tensors' names, shapes, stored dtypes and bytes (host tensors)."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in theta0.items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def scratch_bytes(theta0: dict[str, torch.Tensor]) -> int:
    """Device bytes a scorer needs beside θ₀: a float32 scratch of the largest tensor and a noise batch."""
    numels = [t.numel() for t in theta0.values()]
    return 4 * (max(numels) + max(max(numels), min(sum(numels), noise.NOISE_BATCH)))


class Scorer:
    """θ₀ + Δ → backend → lm-eval on chosen examples (the store is the evaluator's business).

    Amplitude updates (population entries, candidates, stage-2 proposals) are materialised
    through a per-(seed, tensor) noise cache bounded by ``memory_budget`` bytes, with exactly
    the arithmetic of ``Amplitudes.delta`` (Δ = ε₁·a₁, then Δ += aⱼ·εⱼ in seed order), so a
    cached evaluation scores the same bits as a regenerated one. The last materialised Δ is
    kept too: an update whose amplitudes are 2ᵏ times it (a probe multiplier, a grid α) is
    2ᵏ·Δ, which is exact in floating point. A tensor-by-tensor update (``ties``) keeps its
    unscaled Δ₁ instead, so every probe multiplier m costs one product Δ₁·m (the bits ``delta``
    computes). One model-sized slot holds either, when the budget allows it.

    With ``rank`` (``population.rank``), every ε is the rank-r noise ε_r of its matrix (``noise.lowrank``) on every
    path: the fused write, fresh draws, the noise cache (it holds ε_r), the kept Δ and the prefetch slot. With a backend
    that scores through adapters (``output.format: peft``), every amplitude update goes to its ``write`` (adapters on θ₀,
    whatever the noise scheme) and ``restore`` removes them: the weights are never written. With a backend that scores
    rank-r updates in LoRA batches (``lora_slots``), ``evaluate_many`` scores up to ``batch_limit`` of them at once on the
    base weights, and every other update goes through ``load`` of round(θ₀ + Δ) (never written in place).

    Restoring θ₀ is lazy: the next update overwrites every perturbed tensor anyway, so θ₀ is
    handed back only before the base itself is evaluated (or on ``restore()``).

    Every buffer (scratch, noise, cache, kept Δ) lives on the backend's device; ``memory_budget`` is
    counted there. θ₀ may be on the device or on the host (copied tensor by tensor when used).
    """

    def __init__(
        self,
        backend: Backend,
        theta0: dict[str, torch.Tensor],
        suite: TaskSuite,
        memory_budget: int = 0,
        prefetch: bool = False,
        scheme: str = noise.DEFAULT_SCHEME,
        rank: int | None = None,
    ):
        self.backend, self.suite, self.theta0 = backend, suite, theta0
        self.rank, self.shapes = rank, {name: tuple(t.shape) for name, t in theta0.items()}
        self.dtype, self.device = backend.dtype, torch.device(backend.device)
        self.scheme, self.noise = scheme, noise.scheme(scheme)
        numels = [t.numel() for t in theta0.values()]
        self._scratch_size, self._noise_size = max(numels), max(max(numels), min(sum(numels), noise.NOISE_BATCH))
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self.model_bytes = 4 * sum(numels)
        # the portable scheme is drawn where the backend holds its weights, and written there in one pass
        self._headroom, self._bound = headroom(theta0, self.dtype), noise_bound(rank)
        self.adapters = getattr(backend, "adapters", False)  # every amplitude update set as adapters (output.format: peft)
        self.batch_limit = lora_slots(backend) if rank is not None else 0
        self.lora = backend.lora(self.shapes, rank, scheme) if self.batch_limit else None
        fused = self.adapters or (not self.batch_limit and scheme == noise.DEFAULT_SCHEME and getattr(backend, "in_place", False))
        self.in_place = fused
        if fused:
            backend.track(theta0)
        # an entry written by the fused kernel costs one pass: nothing to draw ahead
        self.prefetch = Prefetch(theta0, scheme, rank) if prefetch and not fused and memory_budget >= 2 * self.model_bytes else None
        slots = 2 if self.prefetch is not None else 1
        self.noise_cache = NoiseCache(max(0, memory_budget - slots * self.model_bytes))
        self._last: tuple[Amplitudes, dict[str, torch.Tensor]] | None = None
        self._unscaled: tuple[str, dict[str, torch.Tensor]] | None = None
        self._keep_last = memory_budget >= self.model_bytes
        self._at_base = True
        self.evaluations = 0
        self.examples_evaluated = 0

    @property
    def names(self) -> list[str]:
        return list(self.theta0)

    @property
    def scratch(self) -> torch.Tensor:
        """A float32 buffer of the largest tensor on the scoring device, allocated when the path that needs it first runs
        (the fused kernel needs none)."""
        return self._fallback_buffers()[0]

    @property
    def noise_buffer(self) -> torch.Tensor:
        """A noise batch (float32, ≥ the largest tensor) on the scoring device, allocated with ``scratch``."""
        return self._fallback_buffers()[1]

    def _fallback_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._buffers is None:
            make = lambda n: torch.empty(n, dtype=torch.float32, device=self.device)  # noqa: E731
            self._buffers = (make(self._scratch_size), make(self._noise_size))
        return self._buffers

    def value(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """θ₀ + Δ for one tensor on the scoring device: a float32 sum, rounded once to the scoring dtype (the writer's arithmetic)."""
        theta = self._theta(name)
        return torch.add(theta.to(torch.float32), delta.to(self.device).view(theta.shape)).to(self.dtype)

    def _theta(self, name: str) -> torch.Tensor:
        """θ₀ of one tensor on the scoring device (a copy when θ₀ is kept on the host)."""
        return self.theta0[name].to(self.device, non_blocking=True)

    @torch.no_grad()
    def apply(self, update: Update) -> None:
        """Set every perturbed parameter to θ₀ + Δ (refused before anything is written when Δ may not be finite there)."""
        amps = update.final_amplitudes() if hasattr(update, "final_amplitudes") else update
        if isinstance(amps, Amplitudes):
            check_bounded(amps, self._headroom, self.dtype, self._bound)
        self._at_base = False
        fused = self._fused(amps)
        if fused is not None:
            self._last = None
            self.backend.write(fused.seeds.tolist(), fused.values.tolist(), self.scheme, rank=self.rank)
            return
        self.backend.load(self._values(update))

    def _fused(self, amps: object) -> Amplitudes | None:
        """The update's amplitudes when the fused kernel writes it into the backend's parameters in place (one read of θ₀,
        one write per element): a population entry; on an accelerator also a sum of seeds that is not a 2ᵏ multiple of
        the last one (the host keeps the noise cache, whose reuse of drawn noise pays there). Through adapters: every
        amplitude update (the weights never leave θ₀)."""
        if self.adapters and not isinstance(amps, Amplitudes):
            raise CorpmergeError("output.format: peft scores updates through adapters, and a tensor-wise update is not one; use output.format: full")
        if not self.in_place or not isinstance(amps, Amplitudes):
            return None
        nz = amps.nonzero()
        if self.adapters:
            return nz
        if nz.seeds.size == 1 or (self.device.type != "cpu" and self._power_of_two_multiple(nz) is None):
            return nz
        return None

    def _values(self, update: Update) -> Values:
        amps = single_seed(update)
        if amps is not None and self.prefetch is not None:
            drawn = self.prefetch.take(amps)
            if drawn is not None:
                yield from ((name, self.value(name, delta)) for name, delta in drawn.items())
                return
        amps = update.final_amplitudes() if hasattr(update, "final_amplitudes") else update
        if isinstance(amps, Amplitudes):
            nz = amps.nonzero()
            if nz.seeds.size == 0:  # every amplitude cancelled (a mirrored pair's two halves): θ₀, as restore writes it
                yield from ((name, self._theta(name).to(self.dtype)) for name in self.theta0)
            elif nz.seeds.size == 1 and not self.noise_cache.has_seed(int(nz.seeds[0])):
                yield from self._single_seed(int(nz.seeds[0]), float(nz.values[0]))
            else:
                yield from self._amplitudes(nz)
            return
        streamed = update.streamed() if hasattr(update, "streamed") else None
        if streamed is not None and self._keep_last:
            yield from self._streamed(*streamed)
            return
        for name, theta in self.theta0.items():
            yield name, self.value(name, update.delta(name, theta.shape, scheme=self.scheme, rank=self.rank))

    def _streamed(self, key: str, unscaled: Callable[..., torch.Tensor], multiplier: float) -> Values:
        """θ₀ + Δ₁·m, with Δ₁ computed once per key and kept."""
        if self._unscaled is None or self._unscaled[0] != key:
            self._last = self._unscaled = None  # one model-sized slot
            self._unscaled = (key, {name: unscaled(name, theta.shape, self.scheme, self.rank).to(self.device) for name, theta in self.theta0.items()})
        for name in self.theta0:
            base = self._unscaled[1][name]
            yield name, self.value(name, base if multiplier == 1.0 else base * multiplier)

    def _amplitudes(self, nz: Amplitudes) -> Values:
        """θ₀ + Σ aⱼ·εⱼ per tensor, from the last Δ (2ᵏ multiple), the noise cache, or fresh draws."""
        factor = self._power_of_two_multiple(nz)
        if factor is not None:
            for name, last in self._last[1].items():
                # a 2ᵏ product is exact, so the fused add rounds once, like θ₀ + 2ᵏ·Δ on any device
                yield name, torch.add(self._theta(name).to(torch.float32), last, alpha=factor).to(self.dtype)
            return
        kept: dict[str, torch.Tensor] = {}
        if self._keep_last and nz.seeds.size > 1:
            self._unscaled = None  # one model-sized slot
        pairs = list(zip(nz.seeds.tolist(), nz.values.tolist()))
        for name, theta in self.theta0.items():
            acc = self._delta(name, theta.numel(), pairs)
            yield name, self.value(name, acc)
            if self._keep_last and len(pairs) > 1:
                kept[name] = acc.view(theta.shape)
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
            noise.fill_many([(view, seed, name, 0) for view, (_, seed) in zip(views, draw)], self.scheme, rank=self.rank, shapes=self.shapes)
            for view, (k, seed) in zip(views, draw):
                kept = self.noise_cache.put(seed, name, view)
                noises[k] = view if kept is None else kept
            for eps, (_, amp) in zip(noises, batch):
                if acc is None:
                    acc = torch.mul(eps, amp)
                else:
                    self.noise.accumulate(acc, eps, amp)
        return acc

    def _single_seed(self, seed: int, amplitude: float) -> Values:
        """Fast path for population entries: noise for many tensors drawn in one parallel batch.

        Same arithmetic as ``Amplitudes.delta`` + the writer (Δ = ε·a, then θ₀ + Δ), so the same bits.
        """
        group: list[str] = []
        used = 0
        for name in [*self.theta0, None]:
            numel = self.theta0[name].numel() if name is not None else 0
            if name is None or (group and used + numel > self.noise_buffer.numel()):
                views, offset = [], 0
                for gname in group:
                    size = self.theta0[gname].numel()
                    views.append((self.noise_buffer[offset : offset + size], gname))
                    offset += size
                noise.fill_many([(view, seed, gname, 0) for view, gname in views], self.scheme, rank=self.rank, shapes=self.shapes)
                for view, gname in views:
                    yield gname, self.value(gname, torch.mul(view, amplitude, out=self.scratch[: view.numel()]))
                group, used = [], 0
            if name is not None:
                group.append(name)
                used += numel

    def release(self) -> None:
        """Free the model-sized memory this scorer holds (noise cache, kept Δ, prefetch slot): a closed session's
        cache must not outlive it when a program opens another (up to ``memory_budget`` bytes each)."""
        if self.prefetch is not None:
            self.prefetch.wait()
            self.prefetch = None
        self.noise_cache.clear()
        self._last = self._unscaled = self._buffers = None
        if self.lora is not None:
            self.lora.close()

    @torch.no_grad()
    def restore(self) -> None:
        """Back to θ₀, bit-exactly (θ₀ rounded once to the scoring dtype, as the writer writes an unperturbed tensor)."""
        if self.in_place:
            self.backend.restore()
        else:
            self.backend.load((name, self._theta(name).to(self.dtype)) for name in self.theta0)
        self._at_base = True

    def evaluate(self, update: Update | None, docs: Docs, suite: TaskSuite | None = None, then: Update | None = None) -> Scores:
        """Evaluate θ₀ + Δ on ``docs`` now (no store); ``update=None`` evaluates θ₀.

        ``then``: the update evaluated next; a population entry's noise is drawn in the background
        while this evaluation runs (when the budget holds a second model-sized slot)."""
        if update is not None:
            self.apply(update)
        elif not self._at_base:
            self.restore()
        upcoming = single_seed(then) if then is not None else None
        if upcoming is not None and self.prefetch is not None and not self.noise_cache.has_seed(int(upcoming.seeds[0])):
            self.prefetch.start(upcoming)
        scores = (suite or self.suite).evaluate(self.backend.lm, docs)
        self.evaluations += 1
        self.examples_evaluated += len(scores)
        return scores

    def evaluate_many(self, updates: Sequence[Amplitudes], docs: Docs, suite: TaskSuite | None = None) -> list[Scores]:
        """Evaluate up to ``batch_limit`` rank-r amplitude updates θ₀ + Σₖ aₖ·ε_r(sₖ) on ``docs`` together: each a LoRA
        adapter Δ = B·A on the base weights (y = W·x + B·(A·x)), so each scores as ``evaluate`` does to the engine's float
        tolerance, not bit for bit (``evaluate`` forms round(θ₀ + Δ))."""
        if self.lora is None or len(updates) > self.batch_limit:
            raise RuntimeError(f"evaluate_many: {len(updates)} updates, and this scorer's backend takes {self.batch_limit} per batch")
        nonzero = [update.nonzero() for update in updates]
        for amps in nonzero:
            check_bounded(amps, self._headroom, self.dtype, self._bound)
        if not self._at_base:
            self.restore()  # the adapters act on the base weights
        with self.lora.batch([(amps.seeds.tolist(), amps.values.tolist()) for amps in nonzero]) as lms:
            out = [(suite or self.suite).evaluate(lm, docs) for lm in lms]
        self.evaluations += len(out)
        self.examples_evaluated += sum(map(len, out))
        return out


def headroom(theta0: dict[str, torch.Tensor], dtype: torch.dtype) -> float:
    """How far from θ₀ the scored weights may go and stay finite in ``dtype``: its largest finite value less max |θ₀|
    (one pass over θ₀); a θ₀ that is not finite is refused, naming the tensor."""
    top = 0.0
    for name, tensor in theta0.items():
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        low, high = torch.aminmax(tensor)  # no model-sized |θ₀| temporary
        largest = max(-float(low), float(high))
        if not math.isfinite(largest):
            raise CorpmergeError(f"base_model: tensor {name} has inf or NaN values; a perturbed model of it cannot be scored or written")
        top = max(top, largest)
    return float(torch.finfo(dtype).max) - top


def noise_bound(rank: int | None = None) -> float:
    """A bound on |ε|: ``noise.BOUND`` at full rank; |ε_r| ≤ Σₖ|Uₖ|·|Vₖ|/√r < BOUND²·√r at rank r."""
    return noise.BOUND if rank is None else noise.BOUND**2 * math.sqrt(rank)


def check_bounded(amps: Amplitudes, room: float, dtype: torch.dtype, bound: float = noise.BOUND) -> None:
    """Refuse an update whose Δ may leave ``dtype``'s finite range: Σ|aₖ|·``bound`` (on |ε|) ≥ the headroom above θ₀."""
    reach = float(np.abs(amps.values).sum()) * bound
    if not reach < room:
        nz = amps.nonzero()
        what = f"entry seed {int(nz.seeds[0])}, σ = {float(nz.values[0]):g}" if nz.seeds.size == 1 else f"an update of {nz.seeds.size} seeds"
        raise CorpmergeError(
            f"scoring: {what} can move a weight by up to {reach:.3g}, past {str(dtype).removeprefix('torch.')}'s finite range, so its "
            "weights would be inf or NaN; nothing was scored with it: use a smaller σ or α (docs/sizing.md: choosing σ)"
        )


def single_seed(update: Update) -> Amplitudes | None:
    """The update as one (seed, amplitude) pair when it is one (a population entry), else None."""
    amps = update.final_amplitudes() if hasattr(update, "final_amplitudes") else update
    if not isinstance(amps, Amplitudes):
        return None
    nz = amps.nonzero()
    return nz if nz.seeds.size == 1 else None


class Prefetch:
    """The next entry's Δ = a·ε(seed), drawn on a background thread into one model-sized float32 slot.

    Same arithmetic as the scorer's own path (ε drawn by ``fill_many``, then ε·a), so the same bits;
    the noise generators release the GIL, so the draw overlaps an evaluation that waits on a device.
    The slot is on the host: worth it when the scheme draws there (``sfc64-zig-b64k-v1``).
    """

    def __init__(self, theta0: dict[str, torch.Tensor], scheme: str, rank: int | None = None):
        self.shapes, self.scheme, self.rank = {name: t.shape for name, t in theta0.items()}, scheme, rank
        self._buffer: torch.Tensor | None = None
        self._thread: threading.Thread | None = None
        self._key: tuple[int, float] | None = None
        self._error: BaseException | None = None

    def start(self, amps: Amplitudes) -> None:
        self.wait()
        if self._buffer is None:
            self._buffer = torch.empty(sum(math.prod(s) for s in self.shapes.values()), dtype=torch.float32)
        self._key, self._error = (int(amps.seeds[0]), float(amps.values[0])), None
        self._thread = threading.Thread(target=self._draw, args=self._key, name="corpmerge-prefetch", daemon=True)
        self._thread.start()

    def _draw(self, seed: int, amplitude: float) -> None:
        try:
            views = self.views()
            noise.fill_many([(view.view(-1), seed, name, 0) for name, view in views.items()], self.scheme, rank=self.rank, shapes=self.shapes)
            for view in views.values():
                view.mul_(amplitude)
        except BaseException as exc:  # handed to the caller by take()
            self._error = exc

    def views(self) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            out[name] = self._buffer[offset : offset + size].view(shape)
            offset += size
        return out

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def take(self, amps: Amplitudes) -> dict[str, torch.Tensor] | None:
        """The drawn Δ when it is the one for ``amps`` (the slot is then free again), else None."""
        self.wait()
        key, self._key = self._key, None
        if key != (int(amps.seeds[0]), float(amps.values[0])):
            return None
        if self._error is not None:
            raise self._error
        return self.views()


class NoiseCache:
    """ε(seed)[tensor] kept in float32 up to ``budget`` bytes, admitted on its second request, never evicted.

    Admission on the second request keeps one-off noises out (a stage-2 proposal's fresh seed is drawn once,
    for its fold-A score), so the room goes to the noises every candidate reuses (the elites', a stage-2
    centre's); never evicting avoids LRU thrash on cycles longer than the cache.
    """

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self._store: dict[tuple[int, str], torch.Tensor] = {}
        self._seeds: set[int] = set()
        self._seen: set[tuple[int, str]] = set()

    def get(self, seed: int, name: str) -> torch.Tensor | None:
        return self._store.get((seed, name))

    def has_seed(self, seed: int) -> bool:
        return seed in self._seeds

    def put(self, seed: int, name: str, eps: torch.Tensor) -> torch.Tensor | None:
        """Keep a copy when this noise was asked for before and it fits; returns the kept tensor or None."""
        key, size = (seed, name), 4 * eps.numel()
        if self.used + size > self.budget:
            return None  # a full cache tracks nothing: it never admits again
        if key not in self._seen:
            self._seen.add(key)
            return None
        kept = eps.clone()
        self._store[key] = kept
        self._seeds.add(seed)
        self.used += size
        return kept

    def clear(self) -> None:
        self._store.clear()
        self._seeds.clear()
        self._seen.clear()
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
