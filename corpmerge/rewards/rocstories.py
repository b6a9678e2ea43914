"""ROCStories sentence ordering: five shuffled sentences labelled A–E; answer the story order."""

from __future__ import annotations

import random
import re

LETTERS = "ABCDE"
_LETTER = re.compile(r"\b([A-E])\b")
PROMPT = (
    "The five sentences of a short story are shuffled below. Put them back in order.\n\n{sentences}\n\n"
    "Answer with the five letters in the story's order inside <answer></answer> tags, e.g. <answer>C A E B D</answer>."
)


def shuffle_story(sentences: list[str], seed: int) -> dict:
    """Shuffle deterministically; ``gold`` is the letter order that restores the story."""
    order = list(range(5))
    random.Random(seed).shuffle(order)
    shown = [sentences[i] for i in order]  # letter k shows original sentence order[k]
    gold = "".join(LETTERS[order.index(i)] for i in range(5))
    text = "\n".join(f"{LETTERS[k]}. {s}" for k, s in enumerate(shown))
    return {"prompt": PROMPT.format(sentences=text), "gold": gold}


def parse_order(completion: str) -> str | None:
    """The five letters of the last <answer> block (or the last line), each used once.

    The last block is the last opening tag with a closing tag after it (found in linear time);
    reading stops at a sixth letter.
    """
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, end) if end >= 0 else -1
    if start >= 0:
        text = completion[start + len("<answer>") : completion.index("</answer>", start)]
    else:
        text = (completion.strip().splitlines() or [""])[-1]
    letters: list[str] = []
    for match in _LETTER.finditer(text.upper()):
        letters.append(match.group(1))
        if len(letters) > len(LETTERS):
            return None
    return "".join(letters) if sorted(letters) == list(LETTERS) else None


def score(completion: str, gold: str) -> tuple[float, bool]:
    """Reward = 0.6·(positions right)/5 + 0.4·(gold adjacent pairs kept in order)/4; correct = exact order."""
    order = parse_order(completion)
    if order is None:
        return 0.0, False
    positions = sum(a == b for a, b in zip(order, gold)) / 5
    predicted_pairs = {order[i : i + 2] for i in range(4)}
    pairs = sum(gold[i : i + 2] in predicted_pairs for i in range(4)) / 4
    return 0.6 * positions + 0.4 * pairs, order == gold
