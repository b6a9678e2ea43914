"""Reward functions on hand-written tricky cases."""

from collections import Counter
from fractions import Fraction

import pytest

from corpmerge.rewards import countdown, gsm8k, math_answer, mbpp, rocstories
from corpmerge.rewards.expression import ExpressionError, evaluate

# --- countdown -----------------------------------------------------------------------------


def test_expression_parser_is_exact_and_safe():
    assert evaluate("(1 + 2) / 3")[0] == 1
    assert evaluate("7 / 2 * 2")[0] == 7  # exact rationals, no float drift
    assert evaluate("-3 + 5")[1] == [3, 5]
    for bad in ["__import__('os')", "2 ** 3", "1 +", "(1", "1 / 0", "", "1.5 + 2", "a + 1"]:
        with pytest.raises(ExpressionError):
            evaluate(bad)


def test_generated_puzzles_are_solvable_and_deterministic():
    rows = countdown.make_rows(50, seed=7)
    assert rows == countdown.make_rows(50, seed=7)
    for row in rows:
        value, used = evaluate(row["solution"])
        assert value == row["target"] and Counter(used) == Counter(row["numbers"])


@pytest.mark.parametrize(
    ("completion", "reward", "correct"),
    [
        ("I think <answer>(44 - 19) * 4 + 3</answer>", 1.1, True),
        ("<answer>4 * (44 - 19) + 3 = 103</answer>", 1.1, True),  # a stated result must be the target
        ("(44 - 19) * 4 + 3", 0.0, False),  # right answer, bad format
        ("<answer>44 - 19 * 4</answer>", 0.1, False),  # wrong numbers used
        ("<answer>(44 - 19) * 4 + 3 + 0</answer>", 0.1, False),  # extra number
        ("<answer>(44 − 19) × 4 + 3</answer>", 1.1, True),  # unicode minus and times
        ("<answer>import os</answer>", 0.1, False),
        ("<answer>1</answer> then <answer>(44 - 19) * 4 + 3</answer>", 1.1, True),  # last block counts
        ("<answer>(44 - 19) * 4 + 3 = 104</answer>", 0.1, False),  # a wrong stated result is wrong
    ],
)
def test_countdown_score(completion, reward, correct):
    assert countdown.score(completion, [44, 19, 4, 3], 103) == pytest.approx((reward, correct))


# --- gsm8k ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "strict", "relaxed"),
    [
        ("so 9 + 9 = 18\n#### 18", 1, 1),
        ("#### 18.0", 1, 1),
        ("#### 1,018", 0, 0),
        ("The answer is 18", 0, 1),
        ("#### 17\nwait, 18", 0, 1),
        ("#### $18", 1, 1),
        ("#### −18", 0, 0),
        ("", 0, 0),
    ],
)
def test_gsm8k_strict_and_relaxed(completion, strict, relaxed):
    result = gsm8k.score(completion, "blah <<9+9=18>>\n#### 18")
    assert (result["correct"], result["relaxed"]) == (strict, relaxed)
    assert result["reward"] == result["correct"]


def test_gsm8k_numbers_are_exact():
    assert gsm8k.strict_value("#### 1,234.50") == Fraction(2469, 2)
    assert gsm8k.same(gsm8k.strict_value("#### −3"), -3)
    assert not gsm8k.same(gsm8k.strict_value("#### 2000001"), 2000000) and not gsm8k.same(None, None)
    assert gsm8k.strict_answer("#### 1,234.50") == 1234.5  # a float for votes
    # thousands separators, huge and hostile numbers: tests/test_parsers.py


# --- olympiadbench -------------------------------------------------------------------------


def test_boxed_is_brace_matched_and_last():
    assert math_answer.last_boxed(r"first \boxed{1}, then \boxed{\frac{1}{\sqrt{2}}}") == r"\frac{1}{\sqrt{2}}"
    assert math_answer.last_boxed(r"\boxed{a{b}c") is None
    assert math_answer.extract("So the answer is 42.") == "42"


@pytest.mark.parametrize(
    ("answer", "reference", "same"),
    [
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
        ("1/2", r"\frac12", False),  # \frac12 without braces is not normalised: stays different
        (r"\left( 1, 2 \right)", "(1,2)", True),
        ("(1, 3)", "(1,2)", False),
        ("3.0000000001", "3", True),
        ("3.001", "3", False),
        (r"90^\circ", "90", True),
        (r"\text{yes}", "yes", True),
        ("−2", "-2", True),
        ("[0, 1)", "(0, 1]", False),  # intervals keep their brackets
    ],
)
def test_math_equivalence(answer, reference, same):
    assert math_answer.equivalent(answer, reference) is same


def test_math_score_uses_any_reference():
    assert math_answer.score(r"... \boxed{\frac{2}{4}}", ["1/2", "0.5"]) == (1.0, True)
    assert math_answer.score("no answer here", ["1"]) == (0.0, False)


# --- rocstories ----------------------------------------------------------------------------


def test_rocstories_shuffle_and_gold_restore_the_story():
    sentences = ["s1.", "s2.", "s3.", "s4.", "s5."]
    doc = rocstories.shuffle_story(sentences, seed=3)
    shown = dict(line.split(". ", 1) for line in doc["prompt"].split("\n\n")[1].splitlines())
    assert [shown[letter] for letter in doc["gold"]] == ["s1.", "s2.", "s3.", "s4.", "s5."]


@pytest.mark.parametrize(
    ("completion", "reward", "correct"),
    [
        ("<answer>A B C D E</answer>", 1.0, True),
        ("<answer>ABCDE</answer>", 0.0, False),  # letters must be separate tokens
        ("<answer>B A C D E</answer>", 0.6 * 3 / 5 + 0.4 * 2 / 4, False),  # partial credit, not correct
        ("<answer>E D C B A</answer>", 0.6 * 1 / 5, False),
        ("<answer>A B C D</answer>", 0.0, False),  # not a permutation
        ("<answer>A A B C D</answer>", 0.0, False),
        ("Order: A, B, C, D, E", 1.0, True),  # last line fallback
    ],
)
def test_rocstories_score(completion, reward, correct):
    got = rocstories.score(completion, "ABCDE")
    assert got[0] == pytest.approx(reward) and got[1] is correct


# --- mbpp + sandbox ------------------------------------------------------------------------


def test_mbpp_code_extraction():
    assert mbpp.extract_code("x <answer>\ndef f():\n    return 1\n</answer>") == "def f():\n    return 1"
    assert mbpp.extract_code("<answer>```python\ndef f(): pass\n```</answer>") == "def f(): pass"
    assert mbpp.extract_code("```python\ndef g(): pass\n```") == "def g(): pass"
    assert mbpp.extract_code("no code") is None


def test_mbpp_correct_and_wrong_solutions():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert mbpp.score("<answer>def add(a, b):\n    return a + b</answer>", "", tests) == (1.0, True)
    assert mbpp.score("<answer>def add(a, b):\n    return a - b</answer>", "", tests) == (0.0, False)
    assert mbpp.score("<answer>def add(a, b) return</answer>", "", tests) == (0.0, False)


def test_mbpp_syntax_errors_and_unsupported_tests_fail_with_a_reason():
    from corpmerge.rewards.sandbox import run_tests

    assert run_tests("", "def add(a, b) return", ["assert add(1, 2) == 3"]).reason.startswith("SyntaxError")
    assert run_tests("", "def add(a, b):\n    return a + b", ["add(1, 2) == 3"]).reason.startswith("unsupported test: not an assert")
    assert mbpp.score("<answer>def add(a, b):\n    return a + b</answer>", "", ["add(1, 2) == 3"]) == (0.0, False)
    # hostile programs and the judge's semantics: tests/test_sandbox.py


def test_mbpp_task_scores_the_reference_solutions_correct():
    import json
    from pathlib import Path

    from corpmerge.tasks.mbpp.mbpp_task import process_results

    for split in ("train", "test"):
        for line in (Path(__file__).parent / "fixtures" / "mbpp" / f"{split}.jsonl").read_text().splitlines():
            doc = json.loads(line)
            assert process_results(doc, [f"<answer>{doc['code']}"]) == {"reward": 1.0, "correct": 1.0}, doc["text"]
            assert process_results(doc, ["<answer>def nothing(): pass"]) == {"reward": 0.0, "correct": 0.0}
