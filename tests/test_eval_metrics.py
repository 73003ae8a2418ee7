"""Evaluation metrics against hand-computed values (docs/methods.md, "Evaluation metrics")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zrl_plugins.apps.eval_metrics import (
    avg_at_k,
    bootstrap_interval,
    majority_correct,
    paired_difference,
    pass_at_k,
    pass_at_k_curve,
    vote_keys,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - 3 / 10),  # 1 − C(3,2)/C(5,2)
        (5, 2, 4, 1.0),  # fewer wrong samples than draws: a correct one is always among them
        (5, 0, 3, 0.0),
        (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
        (4, 1, 4, 1.0),
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_pass_at_k_is_the_combinatorial_formula_and_grows_with_k(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)
    if k < n:
        assert pass_at_k(n, c, k + 1) >= pass_at_k(n, c, k) - 1e-12


def test_pass_at_k_refuses_more_draws_than_samples():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 8)


def test_avg_at_k_by_hand():
    assert avg_at_k([[1, 0, 1, 1], [0, 0, 0, 1]]) == pytest.approx((0.75 + 0.25) / 2)


def test_majority_vote_by_hand():
    assert majority_correct(["4", "4", "5"], [True, True, False])
    assert not majority_correct(["5", "4", "5"], [False, True, False])
    assert majority_correct(["4", "5"], [True, False])  # a tie goes to the first answer
    assert not majority_correct([None, None, "5"], [False, False, False])  # no answer never wins a vote
    assert not majority_correct([None, None], [False, False])
    assert majority_correct(["5", "4", "4", "5", "5"], [False, True, True, False, False], k=3)  # the first 3 only


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_interval(values, seed=3)
    assert (low, high) == bootstrap_interval(values, seed=3)
    assert low < 0.3 < high and low > 0.18 and high < 0.42  # ≈ 0.3 ± 1.96·sqrt(0.21/100)
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)


def test_paired_difference_cancels_what_both_models_share():
    base = [0.0, 1.0, 0.0, 1.0] * 25
    trained = [1.0, 1.0, 0.0, 1.0] * 25  # one problem in four improved, none got worse
    mean, (low, high) = paired_difference(base, trained)
    assert mean == pytest.approx(0.25) and 0.15 < low <= 0.25 <= high < 0.35


def test_pass_at_k_curve_default_ks_and_estimates():
    correct = [[True, False, False, False], [False, False, False, False], [True, True, True, True]]
    curve = pass_at_k_curve(correct)
    assert list(curve) == [1, 2, 4]
    assert curve[1]["estimate"] == pytest.approx((1 / 4 + 0 + 1) / 3)
    assert curve[2]["estimate"] == pytest.approx((1 - math.comb(3, 2) / math.comb(4, 2) + 0 + 1) / 3)
    assert curve[4]["estimate"] == pytest.approx(2 / 3)
    assert all(v["low"] <= v["estimate"] <= v["high"] for v in curve.values())


def test_vote_keys_group_answers_written_alike_and_merge_equivalent_ones():
    rows = [["1/2", " 0.5", "3", None, "1/2", "0.5"], [None, None], ["7", "8", "9"]]
    # without an equivalence: only answers written alike (up to whitespace) share a key; ties keep first appearance
    assert vote_keys(rows) == [[0, 1, 2, None, 0, 1], [None, None], [0, 1, 2]]
    asked: list[tuple[str, str]] = []

    def equivalent(pairs):
        asked.extend(pairs)
        return [{a, b} == {"1/2", "0.5"} for a, b in pairs]

    keys = vote_keys(rows, equivalent)
    assert keys[0] == [0, 0, 2, None, 0, 0]  # 1/2 and 0.5 vote together, under the more frequent one's key
    assert len(asked) == 3 + 3  # one call for all problems: the pairs among each problem's distinct answers
    # majority over the merged keys: 4 votes for 1/2 == 0.5 (correct), 1 for 3
    assert majority_correct(keys[0], [True, True, False, False, True, True])
    # only the `top` most frequent answers are compared
    asked.clear()
    vote_keys(rows, equivalent, top=2)
    assert len(asked) == 2


def test_stratified_interval_resamples_within_benchmarks():
    from zrl_plugins.apps.eval_metrics import stratified_interval

    values = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert stratified_interval([values]) == bootstrap_interval(values)  # one benchmark: the plain bootstrap
    # every benchmark keeps its weight in the macro mean: 2 solved problems and 100 failed ones average to 0.5,
    # and with no spread inside a benchmark there is none in its mean
    assert stratified_interval([[1.0, 1.0], [0.0] * 100]) == (0.5, 0.5)
    low, high = stratified_interval([values, [0.0, 1.0] * 20])
    assert low < (4 / 7 + 0.5) / 2 < high
