"""Oracle tests of the built-in components against docs/methods.md (#grpo, #aggregation, #kl), with hand-computed
numbers."""

from __future__ import annotations

import math

import pytest
import torch

from zrl_plugins import LossContext, PluginError, load_component
from zrl_plugins.framework.ops import constant_length_aggregate, sequence_mean_aggregate, token_mean_aggregate

NAN = float("nan")


def ctx(**overrides):
    values = dict(
        num_items_in_batch=10,
        num_processes=2,
        gradient_accumulation_steps=2,
        steps_per_generation=2,
        max_completion_length=4,
        training=True,
    )
    values.update(overrides)
    return LossContext(**values)


# ----------------------------------------------------------------------------------------------- grpo advantages
def test_grpo_advantages_hand_computed():
    grpo = load_component("normalizer", "grpo")
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, NAN, 4.0, 0.0, 3.0, 3.0, 3.0, 3.0])
    advantages = grpo.advantages(rewards, group_size=4)
    # group 1: mean 0.5, unbiased std sqrt(1/3) = 0.5773503 → ±0.5 / (0.5773503 + 1e-4) = ±0.8658755
    # group 2: the NaN row is left out: mean(2, 4, 0) = 2, std = sqrt((0 + 4 + 4) / 2) = 2 → (0, 0, 2, -2) / 2.0001
    # group 3: all equal → 0
    expected = torch.tensor(
        [0.8658755, -0.8658755, -0.8658755, 0.8658755, 0.0, 0.0, 0.99995, -0.99995, 0.0, 0.0, 0.0, 0.0]
    )
    torch.testing.assert_close(advantages, expected, atol=1e-6, rtol=0)


def test_grpo_delta_option():
    grpo = load_component("normalizer", "grpo", delta=1.0)
    advantages = grpo.advantages(torch.tensor([0.0, 2.0]), group_size=2)
    # mean 1, std sqrt(2) → ±1 / (sqrt(2) + 1)
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + 1))


def test_grpo_all_unscorable_group_gets_zero_not_nan():
    grpo = load_component("normalizer", "grpo")
    advantages = grpo.advantages(torch.tensor([NAN, NAN, 1.0, 0.0]), group_size=2)
    assert torch.isfinite(advantages).all()
    assert advantages[:2].tolist() == [0.0, 0.0]


def test_grpo_group_size_one_is_a_clear_error():
    grpo = load_component("normalizer", "grpo")
    with pytest.raises(ValueError, match="needs group_size >= 2"):
        grpo.advantages(torch.tensor([1.0, 0.0]), group_size=1)
    with pytest.raises(ValueError, match="cannot be split into groups of 4"):
        grpo.advantages(torch.tensor([1.0, 0.0, 1.0]), group_size=4)


# ----------------------------------------------------------------------------------------------- aggregation
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_grpo_aggregation_is_the_mean_of_sequence_means():
    grpo = load_component("normalizer", "grpo")
    # ((1 + 2) / 2 + (4 + 5 + 6) / 3) / 2 = 3.25, divided by 2 accumulation steps
    assert grpo.aggregate(PER_TOKEN, MASK, ctx()).item() == pytest.approx(1.625)
    assert grpo.aggregate(PER_TOKEN, MASK, ctx(training=False)).item() == pytest.approx(3.25)
    assert sequence_mean_aggregate(PER_TOKEN, MASK, ctx(gradient_accumulation_steps=1)).item() == pytest.approx(3.25)


def test_token_mean_uses_the_global_token_count():
    # Σ ℓ m = 18; 10 tokens over 2 processes, 2 accumulation steps out of 2 steps per generation → 18 / 5
    assert token_mean_aggregate(PER_TOKEN, MASK, ctx()).item() == pytest.approx(3.6)
    # one process, everything in one step: plain Σ ℓ m / Σ m
    one = ctx(num_items_in_batch=5, num_processes=1, gradient_accumulation_steps=1, steps_per_generation=1)
    assert token_mean_aggregate(PER_TOKEN, MASK, one).item() == pytest.approx(18 / 5)


def test_constant_length_aggregation():
    # Σ ℓ m / (B · L_max) = 18 / (2 · 4), divided by 2 accumulation steps
    assert constant_length_aggregate(PER_TOKEN, MASK, ctx()).item() == pytest.approx(1.125)
    assert constant_length_aggregate(PER_TOKEN, MASK, ctx(), max_length=9).item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------- KL
def test_k3_values():
    k3 = load_component("kl_penalty", "k3", beta=0.1)
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.5]]))
    # Δ = log π_ref − log π_θ: −ln 2 → 0.5 + ln 2 − 1; 0 → 0; ln 2 → 2 − ln 2 − 1
    expected = torch.tensor([[0.5 + math.log(2) - 1, 0.0, 1 - math.log(2)]])
    torch.testing.assert_close(k3.per_token(logp, ref), expected)
    assert k3.placement == "loss" and k3.requires_reference and k3.controller.beta == 0.1


def test_k3_is_nonnegative_and_zero_only_at_equality():
    k3 = load_component("kl_penalty", "k3", beta=0.1)
    logp = torch.linspace(-5, 0, 50)
    ref = torch.linspace(0, -5, 50)
    values = k3.per_token(logp, ref)
    assert (values >= 0).all()
    assert (values[(logp - ref).abs() > 1e-3] > 0).all()


def test_k3_with_beta_zero_needs_no_reference():
    assert not load_component("kl_penalty", "k3", beta=0.0).requires_reference


def test_k3_rejects_unknown_placement():
    with pytest.raises(PluginError, match=r"factory of kl_penalty 'k3'.*placement must be 'loss' or 'reward'"):
        load_component("kl_penalty", "k3", beta=0.1, placement="advantage")


def test_none_kl():
    none = load_component("kl_penalty", "none")
    assert not none.requires_reference and none.controller.beta == 0.0
    assert none.per_token(torch.zeros(2, 3), torch.ones(2, 3)).abs().sum() == 0
    with pytest.warns(UserWarning, match="kl_penalty 'none' means β = 0: beta=0.04 is not used"):
        assert load_component("kl_penalty", "none", beta=0.04).controller.beta == 0.0


def test_fixed_controller_state_round_trip():
    controller = load_component("kl_penalty", "k3", beta=0.3).controller
    controller.update(observed_kl=10.0, n_steps=8)
    assert controller.beta == 0.3
    other = load_component("kl_penalty", "k3", beta=0.0).controller
    other.load_state_dict(controller.state_dict())
    assert other.beta == 0.3


# ----------------------------------------------------------------------------------------------- last_number
def test_last_number_verifier():
    verify = load_component("verifier", "last_number")
    completions = ["so 3 + 4 = 7", "the answer is 1,000.", "I think 8", "no idea", "-2.50", "7"]
    gold = ["7", "1000", "9", "3", "-2.5", "not a number"]
    assert verify(prompts=[""] * 6, completions=completions, answer=gold) == [1.0, 1.0, 0.0, 0.0, 1.0, None]


def test_last_number_verifier_reads_chat_messages_and_custom_column():
    verify = load_component("verifier", "last_number", gold_column="solution")
    completions = [[{"role": "assistant", "content": "It is 12"}]]
    assert verify(prompts=[""], completions=completions, solution=["12"]) == [1.0]
    with pytest.raises(KeyError, match="needs the data set column 'solution'"):
        verify(prompts=[""], completions=completions, answer=["12"])


def test_mean_interval_by_hand():
    from zrl_plugins.framework.stats import mean_interval, t_quantile_975

    mean, low, high = mean_interval([1.0, 2.0, 3.0, None])
    # sd = 1, n = 3: half-width = t(0.975, 2) / sqrt(3) = 4.303 / 1.732
    assert mean == 2.0 and low == pytest.approx(2.0 - 4.303 / 3**0.5) and high == pytest.approx(2.0 + 4.303 / 3**0.5)
    assert mean_interval([5.0]) == (5.0, 5.0, 5.0) and mean_interval([]) == (None, None, None)
    assert t_quantile_975(1) == 12.706 and t_quantile_975(100) == 1.96
