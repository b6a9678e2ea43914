"""The quantile table of scheme ``philox4x32-10-icdf-v1``: |x| as a function of the two-sided tail mass w.

For X ~ N(0, 1), P(|X| > x) = w gives x = Q(w) = √2·erfc⁻¹(w). The table covers w ∈ (0, 1] in octaves:
row k (0 ≤ k ≤ 62) holds the knots w = 2⁻ᵏ·(1 + j/2¹⁰), j = 0…1024, and

    T[k, j] = round(2⁴⁰ · Q(2⁻ᵏ·(1 + j/1024)))      (an int64: |x| in fixed point, 40 fraction bits)

rounded to nearest (halves up) from Q computed with 60 significant digits (mpmath). Row 0 has only the knot
w = 1 (x = 0); its other entries are 0. Between knots x is interpolated linearly in w, in integers
(see ``philox``), so every device computes the same bits. The table ships with the package
(``icdf_table.npy``); ``load`` checks its digest, ``build`` recomputes any rows (tests compare them).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

ROWS, KNOT_BITS, FRACTION_BITS = 63, 10, 40
KNOTS = 1 << KNOT_BITS
TABLE_FILE = Path(__file__).with_name("icdf_table.npy")
TABLE_DIGEST = "372649660c655b0e"  # blake2b-64 of the table's int64 bytes, little-endian, row-major (ROWS × (KNOTS + 1))


def build(rows: range = range(ROWS)) -> np.ndarray:
    """Recompute rows of T from the definition (slow: mpmath at 60 digits; a few ms per entry)."""
    import mpmath

    mpmath.mp.dps = 60
    scale = mpmath.mpf(2) ** FRACTION_BITS
    out = np.zeros((len(rows), KNOTS + 1), dtype=np.int64)
    for i, k in enumerate(rows):
        for j in range(KNOTS + 1):
            w = mpmath.ldexp(1 + mpmath.mpf(j) / KNOTS, -k)
            if w >= 1:
                continue  # row 0 beyond its first knot: never used
            x = mpmath.sqrt(2) * mpmath.erfinv(1 - w)
            out[i, j] = int(mpmath.floor(x * scale + mpmath.mpf(1) / 2))
    return out


def digest(table: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(table, dtype="<i8").tobytes(), digest_size=8).hexdigest()


@lru_cache(maxsize=1)
def load() -> np.ndarray:
    """T (ROWS × (KNOTS + 1), int64), checked against the recorded digest."""
    table = np.load(TABLE_FILE, allow_pickle=False)
    if table.shape != (ROWS, KNOTS + 1) or table.dtype != np.int64 or digest(table) != TABLE_DIGEST:
        raise ValueError(f"{TABLE_FILE} is not the table of scheme philox4x32-10-icdf-v1 (digest {digest(table)}); reinstall corpmerge")
    return table
