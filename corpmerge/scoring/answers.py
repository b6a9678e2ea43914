"""The answer a completion gives, per task: what the RandOpt ensemble votes on.

Multiple-choice tasks vote on the chosen option; generation tasks on the extracted answer
(normalised where the task compares normalised answers). ``None`` means no answer was given,
and such votes are dropped.
"""

from __future__ import annotations

from typing import Any, Callable

from corpmerge.rewards import countdown, gsm8k, math_answer, mbpp, rocstories


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.9g}"


def _math(text: str) -> str | None:
    answer = math_answer.extract(text)
    return None if answer is None else math_answer.normalise(answer)


def _expression(text: str) -> str | None:
    answer = countdown.extract_answer(text)
    return None if answer is None else "".join(answer.split())


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "corpmerge_gsm8k": lambda text: _number(gsm8k.strict_answer(text)),
    "corpmerge_countdown": _expression,
    "corpmerge_olympiadbench": _math,
    "corpmerge_rocstories": rocstories.parse_order,
    "corpmerge_mbpp": mbpp.extract_code,
}


def prediction(task: str, output_type: str, filtered_response: Any) -> str | None:
    """The vote of one model on one example."""
    if output_type == "multiple_choice":
        logliks = [r[0] if isinstance(r, (tuple, list)) else r for r in filtered_response]
        return str(max(range(len(logliks)), key=lambda i: logliks[i]))
    if output_type != "generate_until" or not isinstance(filtered_response, str):
        return None
    extract = EXTRACTORS.get(task)
    if extract is not None:
        return extract(filtered_response)
    text = filtered_response.strip()
    return text or None
