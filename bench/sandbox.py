"""Per-program cost of the code sandbox vs a bare `python -c pass`, side by side in one run.

Variants, interleaved round by round so that machine noise hits all of them alike:
  bare python -c pass             the floor: one interpreter start (site and the venv included)
  bare python -I -S -c pass       the same interpreter without site (how the sandbox starts it)
  exit-status run (no isolation)  an MBPP program plus its asserts in one plain process, judged by
                                  exit status: what the sandbox replaces (and what a program can fake)
  sandbox run_python('pass')      namespaces + read-only chroot + uid 65534 + rlimits, no judging
  sandbox run_tests (MBPP)        the same, plus the probe/check split and the judge
  unisolated run_tests            the opt-in path (scoring.allow_unsandboxed_code): same judge, no namespaces

Usage: python bench/sandbox.py [--rounds 40]   (needs root for the isolated variants)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from corpmerge.rewards import sandbox

SETUP = ""
CODE = "def add(a, b):\n    return a + b"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]


def _bare(*flags: str):
    return lambda: subprocess.run([sys.executable, *flags, "-c", "pass"], check=True)


def _exit_status():
    program = "\n".join([SETUP, CODE, *TESTS])
    return subprocess.run([sys.executable, "-I", "-B", "-c", program], check=True, stdin=subprocess.DEVNULL)


def _checked(result: sandbox.SandboxResult) -> None:
    assert result.passed, result.reason


def _unisolated():
    problem = sandbox.isolation_problem
    sandbox.isolation_problem = lambda: "benchmark of the unisolated path"
    sandbox.allow_unsandboxed(True)
    try:
        _checked(sandbox.run_tests(SETUP, CODE, TESTS))
    finally:
        sandbox.isolation_problem = problem
        sandbox.allow_unsandboxed(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)
    problem = sandbox.isolation_problem()
    variants = {
        "bare python -c pass": _bare(),
        "bare python -I -S -c pass": _bare("-I", "-S"),
        "exit-status run (no isolation)": _exit_status,
        "unisolated run_tests": _unisolated,
    }
    if problem is None:
        variants["sandbox run_python('pass')"] = lambda: _checked(sandbox.run_python("pass"))
        variants["sandbox run_tests (MBPP)"] = lambda: _checked(sandbox.run_tests(SETUP, CODE, TESTS))
    else:
        print(f"isolated variants skipped: {problem}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up: caches, the isolation self-test
        run()
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(times["bare python -c pass"])
    print(f"{args.rounds} rounds, python {sys.version.split()[0]}, median ms per program (ratio to bare python -c pass)")
    for name, samples in times.items():
        med = statistics.median(samples)
        q = statistics.quantiles(samples, n=10)
        print(f"  {name:34s} {med:7.1f} ms  (p10 {q[0]:6.1f}, p90 {q[-1]:6.1f})  {med / base:5.2f}x")


if __name__ == "__main__":
    main()
