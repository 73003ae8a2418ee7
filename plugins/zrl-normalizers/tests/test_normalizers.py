"""Oracle values (docs/methods.md#aggregation, hand-computed), edge cases, and invariance of the loss to how the
batch is split."""

from __future__ import annotations

import math

import pytest
import torch

from zrl_plugins import LossContext, PluginError, get_plugin_manager, load_component

NAN = float("nan")
# two groups of G = 4; the second has an unscorable completion
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, NAN, 4.0, 0.0])
SCORABLE = [1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 0.0]


def _std(values):  # unbiased, plain Python: an oracle independent of torch
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_all_five_are_registered():
    names = set(get_plugin_manager().names("normalizer"))
    assert {"dr_grpo", "lite_ppo", "batch", "rloo", "none", "grpo"} <= names


def test_dr_grpo_oracle():
    # group means 0.5 and 2 (the NaN row left out); no std scaling
    expected = [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 2.0, -2.0]
    advantages = load_component("normalizer", "dr_grpo").advantages(REWARDS, 4)
    torch.testing.assert_close(advantages, torch.tensor(expected))


def test_rloo_oracle():
    # group 1: 1 − (0 + 0 + 1)/3 = 2/3 and 0 − (1 + 0 + 1)/3 = −2/3;
    # group 2 over {2, 4, 0}: 2 − (4 + 0)/2 = 0, 4 − (2 + 0)/2 = 3, 0 − (2 + 4)/2 = −3
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 3.0, -3.0]
    torch.testing.assert_close(load_component("normalizer", "rloo").advantages(REWARDS, 4), torch.tensor(expected))


def test_batch_oracle():
    mean, std = sum(SCORABLE) / 7, _std(SCORABLE)  # 8/7 and sqrt(12.857142.../6) = 1.4638501
    assert std == pytest.approx(1.4638501, abs=1e-6)
    expected = [(r - mean) / (std + 1e-4) if not math.isnan(r) else 0.0 for r in REWARDS.tolist()]
    torch.testing.assert_close(load_component("normalizer", "batch").advantages(REWARDS, 4), torch.tensor(expected))


def test_lite_ppo_oracle_raw_and_centered_std():
    centred = [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 2.0, -2.0]
    raw = load_component("normalizer", "lite_ppo").advantages(REWARDS, 4)
    torch.testing.assert_close(raw, torch.tensor(centred) / (_std(SCORABLE) + 1e-4))
    # std of the 7 centred values {±0.5 x4, 0, 2, −2}: sqrt(9/6) = 1.2247449
    centered = load_component("normalizer", "lite_ppo", batch_std="centered").advantages(REWARDS, 4)
    torch.testing.assert_close(centered, torch.tensor(centred) / (math.sqrt(1.5) + 1e-4))


def test_none_oracle():
    advantages = load_component("normalizer", "none").advantages(REWARDS, 4)
    torch.testing.assert_close(advantages, torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 0.0]))


@pytest.mark.parametrize("name", ["dr_grpo", "lite_ppo", "batch", "rloo", "none", "grpo"])
def test_equal_rewards_give_zero_and_never_nan(name):
    normalizer = load_component("normalizer", name)
    for rewards in (torch.full((8,), 3.0), torch.tensor([1.0, 1.0, 1.0, 1.0, NAN, NAN, NAN, NAN])):
        advantages = normalizer.advantages(rewards, 4)
        assert torch.isfinite(advantages).all()
        if name != "none":
            assert advantages.abs().max() == 0, (name, advantages)


@pytest.mark.parametrize("name", ["dr_grpo", "lite_ppo", "rloo"])
def test_group_methods_refuse_groups_of_one(name):
    with pytest.raises(ValueError, match="needs group_size >= 2"):
        load_component("normalizer", name).advantages(torch.tensor([1.0, 0.0]), 1)


@pytest.mark.parametrize("name", ["batch", "none"])
def test_batch_methods_accept_groups_of_one(name):
    assert torch.isfinite(load_component("normalizer", name).advantages(torch.tensor([1.0, 0.0, 2.0]), 1)).all()


def test_bad_options():
    with pytest.raises(PluginError, match="batch_std must be 'raw' or 'centered'"):
        load_component("normalizer", "lite_ppo", batch_std="global")
    with pytest.raises(PluginError, match="max_length must be positive"):
        load_component("normalizer", "dr_grpo", max_length=-3)


def test_dr_grpo_length_defaults_to_max_completion_length():
    assert load_component("normalizer", "dr_grpo", max_completion_length=512).max_length == 512
    assert load_component("normalizer", "dr_grpo", max_length=100, max_completion_length=512).max_length == 100


# ---------------------------------------------------------------------------------------------------- aggregation
def _microbatches():
    generator = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    m1 = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    m2 = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    return (x1, m1), (x2, m2)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "lite_ppo", "batch", "rloo", "none"])
def test_one_process_two_accumulation_steps_equals_two_processes_one_step(name):
    normalizer = load_component("normalizer", name, **({"max_length": 5} if name == "dr_grpo" else {}))
    (x1, m1), (x2, m2) = _microbatches()
    tokens = float(m1.sum() + m2.sum())

    # 1 process, 2 micro-batches accumulated into one optimizer step (one generation batch split in 2)
    w = torch.tensor(1.0, requires_grad=True)
    ctx = LossContext(
        tokens, num_processes=1, gradient_accumulation_steps=2, steps_per_generation=2, max_completion_length=5
    )
    (normalizer.aggregate(w * x1, m1, ctx) + normalizer.aggregate(w * x2, m2, ctx)).backward()
    accumulated = w.grad.clone()

    # 2 processes, 1 micro-batch each; DDP averages the gradients over processes
    ctx = LossContext(
        tokens, num_processes=2, gradient_accumulation_steps=1, steps_per_generation=1, max_completion_length=5
    )
    grads = []
    for x, m in ((x1, m1), (x2, m2)):
        w = torch.tensor(1.0, requires_grad=True)
        normalizer.aggregate(w * x, m, ctx).backward()
        grads.append(w.grad)
    distributed = sum(grads) / 2

    torch.testing.assert_close(accumulated, distributed)
    assert accumulated.abs() > 1e-3


def test_aggregation_oracles_on_the_whole_batch():
    (x1, m1), (x2, m2) = _microbatches()
    x, m = torch.cat([x1, x2]), torch.cat([m1, m2])
    ctx = LossContext(float(m.sum()), 1, 1, 1, max_completion_length=5)
    masked = (x * m).sum()
    assert load_component("normalizer", "lite_ppo").aggregate(x, m, ctx) == pytest.approx((masked / m.sum()).item())
    assert load_component("normalizer", "dr_grpo", max_length=5).aggregate(x, m, ctx) == pytest.approx(
        (masked / (6 * 5)).item()
    )
