"""Extraction modes, reward modes, bad input with wall-clock bounds, parallel grading, hang protection."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from zrl_math.extract import MAX_ANSWER_CHARS, answer_is, boxed_contents, extract_answer, last_boxed, last_number
from zrl_math.grading import Grader

from zrl_plugins import PluginError, load_component


# ---------------------------------------------------------------------------------------------------- extraction
def test_last_boxed_takes_the_last_balanced_box():
    text = r"first \boxed{1} then \boxed{\frac{1}{2}} done"
    assert last_boxed(text) == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{x^{2} + \{1\}}") == r"x^{2} + \{1\}"
    assert last_boxed(r"\boxed{3} and an unclosed \boxed{4") == "3"
    assert last_boxed("no box here") is None
    assert boxed_contents(r"\fbox{2} \boxed{5") == ["2", None]


def test_answer_is():
    assert answer_is("So the answer is 42.") == "42"
    assert answer_is("The answer is: $\\frac{1}{2}$.\nMore text") == r"\frac{1}{2}"
    assert answer_is("I think the answer is 3. Wait, the Answer is 5") == "5"
    assert answer_is("no final statement") is None


def test_last_number():
    assert last_number("3 apples and 1,250 pears") == "1250"
    assert last_number("-0.5 is it") == "-0.5"
    assert last_number("none") is None


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("boxed", "7"), ("answer_is", "8"), ("last_number", "9"), ("auto", "7")],
)
def test_extraction_modes(mode, expected):
    text = r"We get \boxed{7}. So the answer is 8. Check: 9"
    assert extract_answer(text, mode) == expected


def test_auto_falls_back_in_order():
    assert extract_answer("so the answer is 8. check 9", "auto") == "8"
    assert extract_answer("check 9", "auto") == "9"
    assert extract_answer("nothing at all", "auto") is None
    with pytest.raises(ValueError, match="unknown extraction mode 'last'"):
        extract_answer("1", "last")


# ---------------------------------------------------------------------------------------------------- verifiers
def score(verifier, completions, golds, **columns):
    return verifier(prompts=[""] * len(completions), completions=completions, answer=golds, **columns)


def test_math_correct_correct_only():
    verifier = load_component("verifier", "math_correct", num_workers=0)
    completions = [r"so \boxed{\frac{1}{2}}", r"\boxed{0.4}", "I don't know", "the answer is 50%"]
    assert score(verifier, completions, ["0.5", "0.5", "0.5", r"50\%"]) == [1.0, 0.0, 0.0, 1.0]


def test_math_correct_format_aware():
    verifier = load_component(
        "verifier", "math_correct", mode="format_aware", wrong_reward=-0.5, no_answer_reward=-1.0, num_workers=0
    )
    assert score(verifier, [r"\boxed{2}", r"\boxed{3}", "no answer here"], ["2", "2", "2"]) == [1.0, -0.5, -1.0]


def test_math_correct_reads_chat_messages_and_another_column():
    verifier = load_component("verifier", "math_correct", gold_column="solution", num_workers=0)
    completions = [[{"role": "assistant", "content": r"\boxed{12}"}]]
    assert verifier(prompts=[""], completions=completions, solution=["12"]) == [1.0]
    with pytest.raises(KeyError, match="needs the gold answer column 'solution'"):
        verifier(prompts=[""], completions=completions, answer=["12"])


def test_bad_options_are_clear():
    with pytest.raises(PluginError, match="extraction must be one of"):
        load_component("verifier", "math_correct", extraction="first")
    with pytest.raises(PluginError, match="mode must be 'correct_only' or 'format_aware'"):
        load_component("verifier", "math_correct", mode="partial")


def test_unparsable_gold_gives_none_one_warning_and_a_count(caplog):
    verifier = load_component("verifier", "math_correct", num_workers=0)
    logged = {}
    with caplog.at_level(logging.WARNING, logger="zrl_math.verifiers"):
        rewards = score(verifier, ["1", "2", "3"], ["???", "???", "3"], log_metric=logged.__setitem__)
        score(verifier, ["1"], ["???"])  # the same bad gold again: no second warning
    assert rewards == [None, None, 1.0]
    warnings = [r for r in caplog.records if "cannot be parsed" in r.getMessage()]
    assert len(warnings) == 1 and "row 0" in warnings[0].getMessage()
    assert logged["verifier/unparsable_gold"] == 2.0 and logged["verifier/timeouts"] == 0.0


def test_boxed_format():
    verifier = load_component("verifier", "boxed_format")
    completions = [r"\boxed{1}", r"\boxed{1} \boxed{2}", r"\boxed{1", "none", r"\boxed{\frac{1}{2}}"]
    assert verifier(prompts=[""] * 5, completions=completions) == [1.0, 0.0, 0.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------------- bad input
PATHOLOGICAL = {
    "huge_latex": "\\frac{1}{2}+" * 10_000 + "1",  # 10⁵ characters
    "huge_boxed": "\\boxed{" + "x+" * 50_000 + "1}",
    "deep_braces": "\\boxed{" + "{" * 5_000 + "1" + "}" * 5_000 + "}",
    "binary_junk": bytes(range(256)).decode("latin-1") * 40,
    "empty": "",
    "only_whitespace": " \n\t ",
    "unbalanced": "\\boxed{\\frac{1}{2" * 200,
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_completions_return_quickly(name):
    verifier = load_component("verifier", "math_correct", num_workers=0, timeout=2)
    start = time.perf_counter()
    rewards = score(verifier, [PATHOLOGICAL[name]], ["7"])  # 7 appears in none of them
    assert time.perf_counter() - start < 5.0
    assert rewards[0] in (0.0, None)


def test_pathological_gold_returns_quickly():
    verifier = load_component("verifier", "math_correct", num_workers=0, timeout=2)
    start = time.perf_counter()
    assert score(verifier, ["1", "2"], ["", bytes(range(1, 256)).decode("latin-1")]) == [None, None]
    assert time.perf_counter() - start < 5.0


def test_overlong_extracted_answer_is_not_verified():
    assert extract_answer("\\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}", "boxed") is None


# ---------------------------------------------------------------------------------------------------- grading pool
def test_parallel_grading_matches_serial():
    items = [(str(i), str(i)) for i in range(20)] + [(str(i), str(i + 1)) for i in range(20)] + [(None, "1")]
    serial = Grader(num_workers=0).grade_many(items)
    grader = Grader(num_workers=2, chunk_size=4)
    try:
        assert grader.grade_many(items) == serial
        assert serial == ["correct"] * 20 + ["wrong"] * 20 + ["no_answer"]
    finally:
        grader.close()


def test_off_main_thread_uses_a_worker_and_still_has_a_deadline():
    grader = Grader(num_workers=0, timeout=5)
    results = {}
    thread = threading.Thread(target=lambda: results.update(out=grader.grade_many([("2", "2"), ("3", "2")])))
    thread.start()
    thread.join(timeout=120)
    try:
        assert results["out"] == ["correct", "wrong"]
        assert grader._pool is not None  # graded in a worker process, where signals bound the work
    finally:
        grader.close()


def hanging_chunk(items, timeout):
    """A worker stuck where SIGALRM cannot reach it (signals blocked), as inside some C extensions."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(3600)


def test_a_hung_worker_is_killed_its_items_time_out_and_training_goes_on():
    hanging = Grader(num_workers=1, timeout=0.2, chunk_size=2, grace=1.0, chunk_function=hanging_chunk)
    start = time.perf_counter()
    assert hanging.grade_many([("1", "1"), ("2", "2"), ("3", "3")]) == ["timeout"] * 3
    # the hung worker never returns by itself; the bound is the replacement worker's start-up, which took 25 s on a
    # slowed 2-core CI machine (10 s normally): wide enough not to flake, far below "waited for the hang"
    assert time.perf_counter() - start < 60
    assert hanging.restarts == 3  # each item's worker hung: killed and replaced (the pool no longer dies whole)

    verifier = load_component("verifier", "math_correct", num_workers=1, timeout=0.2)
    verifier.grader = hanging
    logged = {}
    assert score(verifier, ["1"], ["1"], log_metric=logged.__setitem__) == [None]  # timeout → not scored
    assert logged["verifier/timeouts"] == 1.0
    hanging.close()


QUADRATIC = {  # inputs on which one scan per box from its start to the end of the text was quadratic
    "open_boxes": "\\boxed{" * 10_000,  # 70 KB
    "nested_closed_boxes": "\\boxed{" * 5_000 + "}" * 5_000,
    "open_braces": "\\boxed{" + "{" * 70_000,
}


@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_extraction_is_linear_on_70_kb(name):
    text = QUADRATIC[name]
    boxed_format = load_component("verifier", "boxed_format")
    start = time.perf_counter()
    assert boxed_format(prompts=[""], completions=[text]) == [0.0]
    for mode in ("auto", "boxed"):
        extract_answer(text, mode)
    assert time.perf_counter() - start < 0.5  # 36 s for boxed_format on open_boxes when it was quadratic


def _boxed_contents_reference(text):
    """The definition: from each box's opening brace, scan until its depth returns to zero."""
    import re

    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] in "{}" and text[i - 1] != "\\":
                depth += 1 if text[i] == "{" else -1
                if depth == 0:
                    found.append(text[start:i])
                    break
        else:
            found.append(None)
    return found


def test_boxed_contents_matches_its_definition_on_random_text():
    import random

    rng = random.Random(0)
    pieces = ["\\boxed{", "\\fbox {", "{", "}", "\\{", "\\}", "x", "1", "\\", " "]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert boxed_contents(text) == _boxed_contents_reference(text), text


def test_an_item_out_of_time_inside_math_verify_is_a_timeout_not_wrong():
    from zrl_math.grading import grade

    start = time.perf_counter()
    assert grade("10^{10^{10}}!", "5", timeout=1) == "timeout"  # math-verify catches every Exception as "no match"
    assert time.perf_counter() - start < 3
    assert grade("\\frac{1}{2}", "0.5", timeout=1) == "correct"


def test_answers_and_equivalence_for_majority_votes():
    """What zrl eval's maj@k asks of math_correct: the extracted answers, and which pairs are one answer."""
    from zrl_math import MathCorrect

    verifier = MathCorrect(num_workers=0)
    assert verifier.answers(["so $\\boxed{\\frac12}$", "The answer is 0.5.", "nothing"]) == ["\\frac12", "0.5", None]
    assert verifier.equivalent([("0.5", "\\frac{1}{2}"), ("x=3", "3"), ("2", "3"), ("(1,2)", "[1,2]")]) == [
        True,
        True,
        False,
        False,
    ]
