"""MBPP: extract the model's code, run it in the sandbox and judge the task's asserts outside it."""

from __future__ import annotations

import re

from corpmerge.rewards.sandbox import run_tests

PROMPT = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}\n\n"
    "Write the complete Python solution inside <answer></answer> tags."
)
_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
MAX_COMPLETION_CHARS = 100_000  # longer completions are cut: no MBPP solution needs more


def last_answer_block(text: str) -> str | None:
    """The text between the last ``</answer>`` and the nearest ``<answer>`` before it (linear time)."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return text[start + len("<answer>") : end] if start >= 0 else None


def extract_code(completion: str) -> str | None:
    """Code from the last <answer> block, else the last fenced block (a fence inside <answer> is unwrapped)."""
    completion = completion[:MAX_COMPLETION_CHARS]
    block = last_answer_block(completion)
    if block is not None:
        inner = _FENCED.findall(block)
        return (inner[-1] if inner else block).strip("\n")
    fenced = _FENCED.findall(completion)
    return fenced[-1].strip("\n") if fenced else None


def score(completion: str, setup_code: str, tests: list[str], wall_seconds: float = 10.0) -> tuple[float, bool]:
    """Correct = every assert holds (judged outside the program's process); reward = correct.

    Raises SandboxUnavailable when code cannot run isolated here and unisolated running was not opted into.
    """
    code = extract_code(completion)
    if not code:
        return 0.0, False
    result = run_tests(setup_code or "", code, list(tests), wall_seconds=wall_seconds)
    return float(result.passed), result.passed
