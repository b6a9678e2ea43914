"""Subject identity: the name under which the score store keeps what a model scored.

A subject is named by what defines its weights, never by where it sits in a population: the
base is ``base``; a population entry θ₀ + σ·ε(s) is ``entry:<seed>:<σ>``; any other update is
``update:<hash>`` of its content — the non-zero (seed, amplitude) pairs of an amplitude update
(σ is inside the amplitudes), or, for a tensor-by-tensor update (``ties``), its Δ's key (which
hashes the elites' seeds, amplitudes and the method's parameters) and its step multiplier. So
a store shared by two populations never hands one model the scores of another, and the same
model keeps its scores across runs (the entry and amplitude formats are those of earlier
stores, which stay valid).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from corpmerge.amplitudes import Amplitudes
from corpmerge.population import Entry

ENTRY = "entry:"


def entry_subject(entry: Entry) -> str:
    """A population entry, by its seed and σ."""
    return f"{ENTRY}{entry.seed}:{entry.sigma!r}"


def is_entry(subject: str) -> bool:
    """Whether ``subject`` names a population entry θ₀ + σ·ε(s) (a mirror's σ is negative)."""
    return subject.startswith(ENTRY)


def update_subject(update: Any) -> str:
    """An update (``Amplitudes``, or a merge result with ``final_amplitudes``/``streamed``), by its content."""
    amps = update if isinstance(update, Amplitudes) else update.final_amplitudes()
    if amps is not None:
        nz = amps.nonzero()
        return _hashed((nz.seeds.astype(np.int64).tobytes(), nz.values.astype(np.float64).tobytes()))
    streamed = update.streamed()
    if streamed is None:
        raise TypeError(f"{type(update).__name__} is neither an amplitude nor a tensor-by-tensor update")
    key, _, multiplier = streamed
    return _hashed(("tensorwise", key, float(multiplier)))


def _hashed(payload: Any) -> str:
    return "update:" + hashlib.blake2b(repr(payload).encode(), digest_size=10).hexdigest()
