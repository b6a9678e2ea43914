"""ROCStories sentence ordering: five shuffled sentences labelled A–E; answer the story order."""

from __future__ import annotations

import random
import re

LETTERS = "ABCDE"
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
    """The five letters of the last <answer> block (or the last line), each used once."""
    blocks = re.findall(r"<answer>(.*?)</answer>", completion, re.DOTALL)
    text = blocks[-1] if blocks else (completion.strip().splitlines() or [""])[-1]
    letters = re.findall(r"\b([A-E])\b", text.upper())
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
