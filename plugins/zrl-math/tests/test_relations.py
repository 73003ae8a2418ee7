"""An answer that opens with a relation is not the number after it (math-verify drops a leading relation), and a
format_aware timeout is not an escape from the wrong-answer penalty."""

from __future__ import annotations

import pytest
from zrl_math.grading import grade, leading_relation


@pytest.mark.parametrize(
    ("answer", "gold", "outcome"),
    [
        ("\\neq 4", "4", "wrong"),  # was: correct
        ("\\boxed{\\neq 4}", "4", "wrong"),
        ("< 4", "4", "wrong"),
        ("\\leq 4", "4", "wrong"),
        ("\\ge 4", "\\geq 4", "correct"),  # the same relation, spelled two ways
        ("4", "4", "correct"),
        ("x = 4", "4", "correct"),  # an equation is still its value (math-verify's rule)
    ],
)
def test_a_leading_relation_is_part_of_the_answer(answer, gold, outcome):
    assert grade(answer, gold, timeout=30.0) == outcome


def test_relations_are_read_in_one_spelling():
    assert leading_relation("$\\ne 4$") == leading_relation("≠ 4") == "\\neq"
    assert leading_relation("\\lambda") is None and leading_relation("\\left(1, 2\\right)") is None


def test_format_aware_gives_a_timeout_the_wrong_answer_reward():
    from zrl_math.verifiers import MathCorrect

    aware, plain = MathCorrect(mode="format_aware", num_workers=0), MathCorrect(num_workers=0)
    assert aware.rewards["timeout"] == -0.5 and plain.rewards["timeout"] is None
