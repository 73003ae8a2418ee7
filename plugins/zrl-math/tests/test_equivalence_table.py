"""≥ 60 gold / answer pairs: what math_correct counts as the same answer, and what it does not."""

from __future__ import annotations

import pytest
from zrl_math.grading import grade

EQUIVALENT = [
    (r"\frac{1}{2}", "0.5"),
    ("0.5", r"\frac{1}{2}"),
    (r"50\%", "0.5"),  # percentage rule: a gold percentage matches the fraction ...
    (r"50\%", "50"),  # ... and the bare number ...
    (r"50\%", r"50\%"),  # ... and itself
    ("x=3", "3"),
    ("1{,}000", "1000"),
    ("1,000", "1000"),
    (r"\{1,2\}", r"\{2,1\}"),
    ("2/4", "1/2"),
    (r"\sqrt{4}", "2"),
    ("10", r"10 \text{ cm}"),
    ("3", "3.0"),
    (r"\dfrac{3}{4}", "0.75"),
    ("-5", "-5"),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt 3}{2}"),
    (r"2\pi", r"2 \pi"),
    (r"\pi/2", r"\frac{\pi}{2}"),
    ("(1,2]", "(1,2]"),
    (r"[0, \infty)", r"[0,\infty)"),
    ("x^2+2x+1", "(x+1)^2"),
    ("7", r"\boxed{7}"),
    ("1.25", r"\frac{5}{4}"),
    ("12", "12.000"),
    (r"\frac{10}{4}", "2.5"),
    ("2^{10}", "1024"),
    (r"\sqrt{8}", r"2\sqrt{2}"),
    (r"6\sqrt{2}", r"\sqrt{72}"),
    ("(3, -1)", "(3,-1)"),
    ("a+b", "b+a"),
    (r"-\frac{1}{2}", "-0.5"),
    ("0", "0.0"),
    (r"\frac{3}{6}", "0.5"),
    (r"\frac{1}{4}", "0.25"),
    ("2x", "x+x"),
    (r"\frac{x}{2}", "0.5x"),
    ("100", "100"),
    (r"\tfrac{1}{8}", "0.125"),
    ("3.5", r"\frac{7}{2}"),
    (r"\left(1, 2\right)", "(1, 2)"),
]

NOT_EQUIVALENT = [
    ("(1,2]", "(1,2)"),  # an interval's closed end matters
    ("-2", "2"),
    (r"\pi", "3.14159"),  # symbolic π is not its decimal approximation
    (r"\frac{1}{3}", "0.33"),
    (r"\{1,2\}", r"\{1,2,3\}"),
    ("x=3", "x=4"),
    ("5", "50"),
    (r"2\sqrt{2}", r"\sqrt{2}"),
    ("12", "21"),
    ("0.5", "5"),
    ("(1,2)", "[1,2]"),
    ("10", "100"),
    ("1/2", "2"),
    ("x^2", "2x"),
    ("3", "3.1"),
    ("-1", "1"),
    (r"\frac{2}{3}", r"\frac{3}{2}"),
    ("(3,-1)", "(-1,3)"),  # tuples are ordered
    ("1000", "100"),
    (r"50\%", "5"),
    ("7", "7.5"),
    ("a+b", "a-b"),
]


@pytest.mark.parametrize(("gold", "answer"), EQUIVALENT)
def test_equivalent(gold, answer):
    assert grade(answer, gold, timeout=5) == "correct"


@pytest.mark.parametrize(("gold", "answer"), NOT_EQUIVALENT)
def test_not_equivalent(gold, answer):
    assert grade(answer, gold, timeout=5) == "wrong"


def test_table_size():
    assert len(EQUIVALENT) + len(NOT_EQUIVALENT) >= 60
