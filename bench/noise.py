"""Throughput of corpmerge.noise.gaussian vs torch.Tensor.normal_, same CPU, same run.

Usage: python bench/noise.py [--numel 33554432] [--repeats 5]
Prints M normals/s for each and the ratio, with torch's default thread count and with one thread.
"""

from __future__ import annotations

import argparse
import time

import torch

import corpmerge.noise as noise
from corpmerge.noise import fill_gaussian, gaussian


def best_rate(fn, numel: int, repeats: int) -> float:
    fn()  # warm up
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
    generator = torch.Generator().manual_seed(0)
    print(f"{args.numel:,} float32 normals, best of {args.repeats}")
    print("normal_ and fill_gaussian write into a preallocated buffer; gaussian() also allocates its result")
    print(f"{'threads':>8} {'normal_ M/s':>12} {'fill M/s':>9} {'ratio':>6} {'gaussian M/s':>13} {'ratio':>6}")
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        noise._pool.cache_clear()  # the pool is sized by torch's thread count
        ref = best_rate(lambda: buffer.normal_(generator=generator), args.numel, args.repeats)
        fill = best_rate(lambda: fill_gaussian(buffer.numpy(), 1, "bench.weight"), args.numel, args.repeats)
        alloc = best_rate(lambda: gaussian(1, "bench.weight", (args.numel,)), args.numel, args.repeats)
        print(f"{threads:>8} {ref:>12.1f} {fill:>9.1f} {fill / ref:>6.2f} {alloc:>13.1f} {alloc / ref:>6.2f}")


if __name__ == "__main__":
    main()
