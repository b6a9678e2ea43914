"""The answer a completion gives: what the RandOpt ensemble votes on.

Multiple-choice tasks vote on the option that the reward metric picks (lm-eval's rule for that
metric, e.g. the length-normalised choice under ``acc_norm``); generation tasks on the answer
their extractor takes from the completion (normalised where the task compares normalised
answers), the one a task declares in its YAML (``metadata.answer``: ``!function module.fn``, or
the name of one in ``ANSWERS``, imported only when named; see ``corpmerge.scoring.declarations``),
else the stripped completion. ``None`` means no answer was given, and such votes are dropped.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Sequence

import numpy as np

Extractor = Callable[[str], str | None]


class NamedExtractors(Mapping[str, Extractor]):
    """Extractors by name, each imported from its ``module:function`` path when it is looked up."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def __getitem__(self, name: str) -> Extractor:
        module, _, function = self.paths[name].partition(":")
        return getattr(importlib.import_module(module), function)

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


# the extractors a task YAML may name in ``metadata.answer`` instead of giving ``!function module.fn``
ANSWERS: Mapping[str, Extractor] = NamedExtractors(
    {
        "first_number": "corpmerge.rewards.arith:first_answer",
        "gsm8k_strict": "corpmerge.rewards.gsm8k:vote_answer",
        "countdown_expression": "corpmerge.rewards.countdown:vote_answer",
        "boxed_math": "corpmerge.rewards.math_answer:vote_answer",
        "story_order": "corpmerge.rewards.rocstories:parse_order",
        "python_code": "corpmerge.rewards.mbpp:extract_code",
    }
)


def choice_prediction(logliks: Sequence[float], metric: str = "acc", choices: Sequence[str] | None = None) -> str:
    """Index of the option ``metric`` picks, as lm-eval scores it (first index on ties):
    argmax ℓᵢ/len(cᵢ) for acc_norm, ℓᵢ/bytes(cᵢ) for acc_bytes, ℓᵢ − ℓᵢ(unconditional) for
    acc_mutual_info (ℓ then holds 2n values), and argmax ℓᵢ over the n options otherwise."""
    lls = np.asarray(logliks, dtype=np.float64)
    if choices is None:
        if metric in ("acc_norm", "acc_bytes", "acc_mutual_info"):
            raise ValueError(f"metric '{metric}' needs the options' text to pick one")
        return str(int(np.argmax(lls)))
    n = len(choices)
    if metric == "acc_norm":
        scores = lls[:n] / np.array([len(c) for c in choices], dtype=np.float64)
    elif metric == "acc_bytes":
        scores = lls[:n] / np.array([len(c.encode("utf-8")) for c in choices], dtype=np.float64)
    elif metric == "acc_mutual_info" and lls.size == 2 * n:
        scores = lls[:n] - lls[n:]
    else:
        scores = lls[:n]
    return str(int(np.argmax(scores)))


def prediction(
    output_type: str,
    filtered_response: Any,
    metric: str = "acc",
    choices: Sequence[str] | None = None,
    extract: Extractor | None = None,
) -> str | None:
    """The vote of one model on one example; on multiple choice, the option ``metric`` picks
    among ``choices`` (the task's ``doc_to_choice`` of the example); on generation, what
    ``extract`` (the task's declared extractor) takes from the completion."""
    if output_type == "multiple_choice":
        logliks = [r[0] if isinstance(r, (tuple, list)) else r for r in filtered_response]
        return choice_prediction(logliks, metric, choices)
    if output_type != "generate_until" or not isinstance(filtered_response, str):
        return None
    if extract is not None:
        return extract(filtered_response)
    text = filtered_response.strip()
    return text or None
