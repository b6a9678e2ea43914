"""Noise draw throughput, both schemes and torch's normal_, same CPU, same run.

Usage: python bench/noise.py [--numel 33554432] [--repeats 5]
Prints M normals/s into a preallocated float32 buffer for: philox4x32-10-icdf-v1 (the Numba kernel), the same
scheme through torch integer ops (the path other devices take), sfc64-zig-b64k-v1 (corpmerge ≤ 0.3) and
``Tensor.normal_``; with torch's default thread count and with one thread. The ratio column is philox / sfc64.
"""

from __future__ import annotations

import argparse
import time

import numba
import torch

from corpmerge import noise
from corpmerge.noise import philox, sfc64


def best_rate(fn, numel: int, repeats: int) -> float:
    fn()  # warm up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return numel / min(times) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1 << 25)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    buffer = torch.empty(args.numel)
    part = buffer[: args.numel // 8]
    generator = torch.Generator().manual_seed(0)
    print(f"{args.numel:,} float32 normals into a preallocated buffer, best of {args.repeats}; torch-ops path on 1/8 of them")
    print(f"{'threads':>8} {'philox M/s':>11} {'sfc64 M/s':>10} {'ratio':>6} {'philox torch-ops':>17} {'normal_ M/s':>12}")
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
        sfc64._pool.cache_clear()  # sized by the thread count
        new = best_rate(lambda: noise.fill(buffer, 1, "bench.weight"), args.numel, args.repeats)
        old = best_rate(lambda: noise.fill(buffer, 1, "bench.weight", 0, noise.LEGACY_SCHEME), args.numel, args.repeats)
        ops = best_rate(lambda: philox.draw_torch(part, 1, "bench.weight"), part.numel(), max(1, args.repeats // 2))
        ref = best_rate(lambda: buffer.normal_(generator=generator), args.numel, args.repeats)
        print(f"{threads:>8} {new:>11.1f} {old:>10.1f} {new / old:>6.2f} {ops:>17.1f} {ref:>12.1f}")


if __name__ == "__main__":
    main()
