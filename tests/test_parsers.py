"""Answer parsers on hostile text (issue #13): every input that once broke one, and seeded fuzz.

Each call must return (never raise) within a generous hang guard: HANG_GUARD seconds, where each
takes milliseconds. That is a check for hangs, not a benchmark.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hangguard import hang_guard

from corpmerge.rewards import arith, countdown, gsm8k, math_answer, rocstories
from corpmerge.rewards.expression import ExpressionError, evaluate

HANG_GUARD = 2.0


def bounded(function, *args):
    """``function(*args)``, interrupted (TimeoutError) if it hangs past the guard."""
    with hang_guard(HANG_GUARD):
        return function(*args)


# --- math answers (OlympiadBench) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "references", "correct"),
    [
        (r"\boxed{1e400}", ["1"], False),  # raised OverflowError (float of a huge Fraction)
        (r"\boxed{1e400}", ["1e400"], True),
        (r"\boxed{1e400}", ["1" + "0" * 399], False),  # compared exactly: 1e400 is not 1e399
        (r"\boxed{1.5e300}", ["15" + "0" * 299], True),
        (r"\boxed{-1e400}", ["1e400"], False),
        (r"\boxed{1e100000000}", ["1"], False),  # ran for minutes (10**100000000)
        (r"\boxed{1e-100000000}", ["0"], False),  # beyond the exponent cap: text, not a number
        (r"\boxed{10^{100000000}}", ["1"], False),  # powers are never evaluated
        (r"\boxed{" + "9" * 5000 + "}", ["1"], False),  # beyond the digit cap
        (r"\boxed{" + "9" * 5000 + "}", ["9" * 5000], False),  # beyond the answer length cap
        (r"\boxed{\frac{1}{0}}", ["1"], False),
        (r"\boxed{1/0}", ["1/0"], True),  # same text
    ],
)
def test_math_huge_numbers_are_bounded(completion, references, correct):
    assert bounded(math_answer.score, completion, references) == (float(correct), correct)


@pytest.mark.parametrize(
    ("answer", "reference", "same"),
    [
        ("[0,1)", "(0,1]", False),  # brackets were dropped
        ("[0,1)", "[0, 1)", True),
        ("[0,1)", "(0,1)", False),
        ("(0,1)", "[0,1]", False),
        (r"\left[ 0, \frac{1}{2} \right)", "[0,0.5)", True),
        (r"(-\infty, 0]", r"(-\infty,0]", True),
        (r"(-\infty, 0]", r"(-\infty,0)", False),
        ("1, 2", "(1,2)", True),  # a bare list is a tuple
        ("1, 2", "[1,2]", False),
        ("((1,2),(3,4))", "((1, 2), (3, 4))", True),
        ("((1,2),(3,4))", "((1,2),[3,4])", False),
        ("(1,2),(3,4)", "(1,2),(3,5)", False),
        (r"[0,1)\cup(2,3]", r"[0,1)\cup(2,3]", True),
        (r"[0,1)\cup(2,3]", r"[0,1]\cup(2,3)", False),
        (r"-\frac{1}{2}", "-0.5", True),
        (r"\frac{-1}{2}", "-0.5", True),
        ("(1/2)", "0.5", True),
        ("2e-3", "0.002", True),
        (".5", "0.5", True),
        ("1.5e3", "1500", True),
    ],
)
def test_math_intervals_keep_brackets_and_numbers_are_exact(answer, reference, same):
    assert bounded(math_answer.equivalent, answer, reference) is same


def test_math_stated_answer_keeps_decimals_and_is_linear():
    assert math_answer.extract("So the answer is 3.5.") == "3.5"  # was cut to "3" at the decimal point
    assert math_answer.extract("The final answer is: $x = 2$. Done") == "x = 2"
    assert math_answer.extract("The answer is\n42.") == "42"
    assert math_answer.extract("This answer isn't boxed") is None
    assert bounded(math_answer.extract, "answer is" + " " * 200_000 + "x") is None  # beyond the answer cap
    assert bounded(math_answer.extract, "answer is 1. " * 50_000) == "1"
    assert bounded(math_answer.extract, "the answer:" * 50_000) is None


@pytest.mark.parametrize(
    "completion",
    [
        "\\boxed{" + "{" * 1_000_000,  # deep, never closed
        "\\boxed{" * 200_000,
        "\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}",
        "\\boxed{" + "\\frac{" * 100 + "1" + "}{2}" * 100 + "}",
        "\\boxed{" + "(" * 450 + "1,2" + ")" * 450 + "}",
        "\\boxed{" + "(1," * 300 + "1" + ")" * 300 + "}",
        "\\boxed{" + "1," * 450 + "1}",
        "\\boxed{" + "\\text{" * 300 + "}" * 300 + "}",
    ],
)
def test_math_deep_nesting_and_long_inputs(completion):
    reward, correct = bounded(math_answer.score, completion, ["(1,2)", "1"])
    assert (reward, correct) == (0.0, False)


def test_math_tuples_nest_only_so_deep():
    deep = "(" * 40 + "1,2" + ")" * 40
    assert not math_answer.equivalent("(" * 40 + "1,2.0" + ")" * 40, deep)  # beyond MAX_NESTING: text only
    assert math_answer.equivalent(deep, deep)


# --- gsm8k -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "reference", "correct"),
    [
        ("#### 1999998", "#### 2000000", False),  # matched under a relative tolerance
        ("#### 2,000,000", "#### 2000000", True),
        ("#### 0.30000000000000004", "#### 0.3", False),
        ("#### 0.3", "#### 0.3", True),
        ("#### 1,8", "#### 18", False),  # read as 18
        ("#### 1,800", "#### 1800", True),
        ("#### 1,800.00", "#### 1800", True),
        ("#### 12,34,567", "#### 1234567", False),
        ("#### 1,234,5678", "#### 12345678", False),
        ("#### 18\n#### 1,8", "#### 18", False),  # the last mark decides, it is not a number
        ("#### 1.2.3", "#### 1.2", False),
        ("#### 1e5", "#### 1", False),
        ("#### 100000", "#### 1e5", False),  # a reference that is no number matches nothing
        ("#### " + "9" * 5000, "#### 1", False),
        ("#### " + "9" * 5000, "#### " + "9" * 5000, False),  # beyond MAX_CHARS: no number
        ("#### 1" + ",000" * 30, "#### 1" + "000" * 30, False),
        ("#### 1" + ",000" * 12, "#### 1" + "000" * 12, True),
    ],
)
def test_gsm8k_exact_and_grouped(completion, reference, correct):
    result = bounded(gsm8k.score, completion, reference)
    assert result["correct"] == result["reward"] == float(correct)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,234.50", Fraction(2469, 2)),
        ("$18.", 18),
        ("1,8", None),
        ("12,34,567", None),
        ("1,800", 1800),
        ("-.5", Fraction(-1, 2)),
        ("−3", -3),
        ("1e5", None),
        ("1$8", None),
        ("1,2345", None),
        ("", None),
        ("-", None),
    ],
)
def test_gsm8k_to_number(text, value):
    assert gsm8k.to_number(text) == value and (value is None) is (gsm8k.to_number(text) is None)


def test_gsm8k_relaxed_reads_only_whole_numbers():
    assert gsm8k.relaxed_value("it is 1,8 or so") is None
    assert gsm8k.relaxed_value("12,34,567") is None
    assert gsm8k.relaxed_value("3 apples, 1,800 pears, 7.") == 7
    assert gsm8k.relaxed_value("paid $1,234.") == 1234


def test_gsm8k_strict_answer_is_a_float_for_votes():
    assert gsm8k.strict_answer("#### " + "9" * 64) == 1e64 and gsm8k.strict_answer("#### x") is None


@pytest.mark.parametrize(
    "completion",
    [
        ",,," * 7_000,
        "1" + ",1" * 20_000,
        "1" + ",111" * 20_000 + ",1",
        "#### " + "," * 20_000,
        "####" + " " * 500_000,
        "#### " * 100_000,
        "9" * 500_000,
        "." * 100_000 + "5",
        "-" * 100_000 + "5",
        "1." * 100_000,
        "$ " * 100_000,
    ],
)
def test_gsm8k_long_inputs_are_linear(completion):
    result = bounded(gsm8k.score, completion, "#### 1")
    assert result == {"reward": 0.0, "correct": 0.0, "relaxed": 0.0}


@pytest.mark.parametrize(
    "completion, correct",
    [
        (" 12", True),
        (" 12\n\nQuestion: 7", True),
        (" The answer is 12.", True),
        (" 12.0", True),
        (" 1,2", False),
        (" 7 then 12", False),
        (" 12.5", False),
        (" -12", False),
        ("", False),
        (" twelve", False),
        (" " * arith.MAX_CHARS + "12", False),
        ("9" * 100_000, False),
        ("1," * 100_000, False),
    ],
)
def test_arith_first_number_is_the_answer(completion, correct):
    assert bounded(arith.score, completion, 12) == {"reward": float(correct), "correct": float(correct)}


def test_arith_votes_read_the_same_number():
    assert arith.first_answer(" 3.50 or so") == "7/2" and arith.first_answer(" 1,200") == "1200"
    assert arith.first_answer(" none") is None


def test_gsm8k_random_integers_compare_exactly():
    rng = random.Random(13)
    for _ in range(200):
        n = rng.randrange(10**30)
        gold = f"#### {n}"
        assert gsm8k.score(f"#### {n:,}", gold)["correct"] == 1.0
        assert gsm8k.score(f"#### {n + 1}", gold)["correct"] == 0.0
        assert gsm8k.score(f"#### {n}.5", gold)["correct"] == 0.0


# --- countdown ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reward", "correct"),
    [
        ("3*4*5=61", 0.1, False),  # a wrong right-hand side scored correct
        ("3*4*5=60", 1.1, True),
        ("3 * 4 * 5 = 60 = 60", 1.1, True),
        ("3*4*5 = 60 = 61", 0.1, False),
        ("3*4*5 = 50 + 10", 1.1, True),  # a right-hand side is an expression with the target's value
        ("3*4*5 =", 0.1, False),
        ("3*4*5 == 60", 0.1, False),
        ("= 60", 0.1, False),
        ("3*4*5*1 = 60", 0.1, False),  # the given numbers, each exactly once (the task's rule)
        ("3*4*5*5/5 = 60", 0.1, False),
        ("4*5*3", 1.1, True),
        ("60", 0.1, False),
        ("9" * 5000, 0.1, False),  # raised ValueError (int() of more than 4300 digits)
        ("3*4*5 = " + "9" * 5000, 0.1, False),
        ("10**(10**8)", 0.1, False),
        ("(" * 150 + "3*4*5" + ")" * 150, 0.1, False),
        ("-" * 150 + "3*4*5", 0.1, False),
        ("*".join(["999999999999"] * 100), 0.1, False),
        ("3*4*5" + "+0" * 10_000, 0.1, False),
        ("3*4*5" + "=60" * 10_000, 0.1, False),
    ],
)
def test_countdown_right_hand_side_and_bounds(answer, reward, correct):
    assert bounded(countdown.score, f"<answer>{answer}</answer>", [3, 4, 5], 60) == pytest.approx((reward, correct))


def test_countdown_solutions_with_their_target_stated():
    for row in countdown.make_rows(50, seed=13):
        answer = f"<answer>{row['solution']} = {row['target']}</answer>"
        assert countdown.score(answer, row["numbers"], row["target"]) == pytest.approx((1.1, True))
        wrong = f"<answer>{row['solution']} = {row['target'] + 1}</answer>"
        assert countdown.score(wrong, row["numbers"], row["target"]) == pytest.approx((0.1, False))


def test_countdown_last_block_in_linear_time():
    assert countdown.extract_answer("<answer>1</answer> <answer>2</answer>") == "2"
    assert countdown.extract_answer("<answer>1</answer> <answer>2") == "1"
    assert countdown.extract_answer("<answer>1</answer></answer>") == "1"
    assert countdown.extract_answer("</answer><answer>1") is None
    assert bounded(countdown.extract_answer, "<answer>" * 100_000) is None  # quadratic with a lazy regex
    assert bounded(countdown.extract_answer, "<answer>" * 100_000 + "</answer>") == ""


@pytest.mark.parametrize("text", ["9" * 5000, "1" + "+1" * 300, "(" * 60 + "1" + ")" * 60, "-" * 60 + "1", "1" + " " * 100_000 + "+"])
def test_expression_refuses_oversized_input_with_its_own_error(text):
    with pytest.raises(ExpressionError):
        bounded(evaluate, text)


# --- rocstories --------------------------------------------------------------------------------


def test_rocstories_long_inputs_are_linear():
    assert bounded(rocstories.score, "<answer>" * 100_000, "ABCDE") == (0.0, False)
    assert bounded(rocstories.score, "<answer>" + "A " * 500_000 + "</answer>", "ABCDE") == (0.0, False)
    assert bounded(rocstories.score, "x\n" * 200_000 + "A B C D E", "ABCDE") == (1.0, True)
    assert rocstories.parse_order("<answer>A B C D E</answer></answer>") == "ABCDE"


# --- fuzz --------------------------------------------------------------------------------------

PIECES = [
    "0",
    "1",
    "7",
    "9",
    "12",
    "999",
    "1,000",
    ",",
    ",,",
    ".",
    "-",
    "−",
    "+",
    "*",
    "/",
    "×",
    "÷",
    "=",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "\\boxed{",
    "\\fbox{",
    "\\frac{",
    "\\text{",
    "\\left(",
    "\\right]",
    "####",
    "$",
    " ",
    "\n",
    "e",
    "E",
    "e400",
    "e-99999",
    "e100000000",
    "^{",
    "answer is ",
    "Answer: ",
    "<answer>",
    "</answer>",
    "A",
    "B",
    "C",
    "D",
    "E",
    "\\infty",
    "%",
    "\\%",
    "^\\circ",
    "\x00",
    "é",
    "٣",
]


def fuzz_strings(count: int = 300, seed: int = 13) -> list[str]:
    """Seeded random mixes of the pieces parsers react to, a few with long runs of one piece."""
    rng = random.Random(seed)
    strings = []
    for _ in range(count):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(0, 60))]
        if rng.random() < 0.2:
            parts.insert(rng.randint(0, len(parts)), rng.choice(PIECES) * rng.randint(100, 3000))
        strings.append("".join(parts))
    return strings


FUZZ = fuzz_strings()


def test_fuzz_rewards_never_raise_and_stay_in_range():
    for text in FUZZ:
        for completion in (text, f"<answer>{text}</answer>", f"\\boxed{{{text}}}", f"#### {text}"):
            result = bounded(gsm8k.score, completion, "#### 18")
            assert set(result.values()) <= {0.0, 1.0}
            assert bounded(math_answer.score, completion, ["(0,1]", r"\frac{1}{2}", "18"])[0] in (0.0, 1.0)
            assert bounded(countdown.score, completion, [3, 4, 5], 60)[0] in (0.0, 0.1, 1.1)
            assert 0.0 <= bounded(rocstories.score, completion, "ABCDE")[0] <= 1.0
            assert set(bounded(arith.score, completion, 18).values()) <= {0.0, 1.0}


def test_fuzz_parts_never_raise():
    for text, other in zip(FUZZ, reversed(FUZZ)):
        for value in (bounded(gsm8k.to_number, text), bounded(gsm8k.relaxed_value, text)):
            assert value is None or isinstance(value, Fraction)
        bounded(gsm8k.strict_answer, "#### " + text)
        assert bounded(math_answer.equivalent, text, text) is (len(text) <= math_answer.MAX_ANSWER)
        bounded(math_answer.equivalent, text, other)
        bounded(math_answer.normalise, text[: math_answer.MAX_ANSWER])
        try:
            bounded(evaluate, text)
        except ExpressionError:
            pass


@pytest.mark.parametrize("text", ["<answer>" * 20000, "x</answer>" * 20000, "```python\n" * 20000, "```" * 30000, "```python" + " " * 50000])
def test_mbpp_code_extraction_is_linear_on_hostile_completions(text):
    from corpmerge.rewards.mbpp import extract_code

    with hang_guard(HANG_GUARD):  # was 30 s for 20k '<answer>' tags
        extract_code(text)


def test_mbpp_code_comes_from_the_last_answer_block():
    from corpmerge.rewards.mbpp import extract_code

    assert extract_code("<answer>a = 1</answer> then <answer>```python\nb = 2\n```</answer>") == "b = 2"
    assert extract_code("no tags ```py\nc = 3\n```") == "c = 3"
    assert extract_code("nothing") is None
