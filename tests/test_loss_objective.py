"""The policy objective as one function of tensors and components (no trainer), checked by hand: the rollout
correction's mask and weights, the KL term in the loss, aggregation, the entropy bonus, and what the controllers are
handed to observe."""

from __future__ import annotations

import math

import pytest
import torch

from zrl_plugins.framework.protocols import LossContext, PolicyLossOutput
from zrl_plugins.trainers.components import Selected
from zrl_plugins.trainers.controllers import EntropyControl
from zrl_plugins.trainers.loss import Collective, CompletionForward, ObjectiveSetup, objective


class RatioTimesAdvantage:
    def __call__(self, logps, old_logps, advantages, mask, sampling_ratio):
        ratio = torch.exp(logps - old_logps)
        return PolicyLossOutput(per_token_loss=-ratio * advantages, ratio=ratio)


class TokenMean:
    def aggregate(self, per_token_loss, mask, ctx):
        return (per_token_loss * mask).sum() / mask.sum()


class Controller:
    beta = 0.1


class DifferenceKL:
    controller = Controller()

    def per_token(self, logps, ref_logps):
        return logps - ref_logps


def _setup(**changes):
    setup = dict(
        pm=None,
        policy_loss=Selected("policy_loss", "ratio_times_advantage", RatioTimesAdvantage()),
        aggregator=Selected("normalizer", "token_mean", TokenMean()),
        kl_penalty=DifferenceKL(),
        kl_in_loss=True,
        bias_correction_kl=False,
        entropy_control=EntropyControl(0.2, False, 0.0, 0.0, 0.0, 1.0),
        aux_loss_coef=None,
        off_policy_mask_threshold=None,
        high_entropy_mask=None,
    )
    return ObjectiveSetup(**{**setup, **changes})


IDENTITY = Collective(lambda x: x, lambda x: x, lambda x: x)
CTX = LossContext(1.0, 1, 2, 1, 3, True)  # 1 token in the batch, 2 accumulation steps
INPUTS = {
    "completion_mask": torch.tensor([[1, 1, 0]]),
    "rollout_correction_mask": torch.tensor([[1, 0, 1]]),  # token 1 rejected: only token 0 counts
    "advantages": torch.tensor([2.0]),
    "old_per_token_logps": torch.tensor([[-1.5, -2.0, -0.5]]),
    "importance_sampling_ratio": torch.tensor([[0.5, 0.5, 0.5]]),
    "ref_per_token_logps": torch.tensor([[-1.2, -2.0, -0.5]]),
}
FORWARD = CompletionForward(logps=torch.tensor([[-1.0, -2.0, -0.5]]), entropies=torch.tensor([[1.0, 3.0, 5.0]]))


def test_the_objective_by_hand():
    result = objective(_setup(), FORWARD, INPUTS, CTX, IDENTITY)
    # token 0: ratio e^0.5, -ratio*A = -2e^0.5, times the correction's weight 0.5, plus β·KL = 0.1 * 0.2
    policy = -math.exp(0.5) + 0.02
    # entropy bonus: -coef * (token-mean entropy over the mask) / accumulation steps = -0.2 * 1.0 / 2
    assert result.loss.item() == pytest.approx(policy - 0.1)
    assert result.metrics["policy_loss"] == pytest.approx(policy)
    assert result.metrics["kl"] == pytest.approx(0.2) and result.metrics["entropy"] == pytest.approx(1.0)
    kl_sum, tokens = result.kl
    assert kl_sum.item() == pytest.approx(0.2) and tokens.item() == 1
    entropies, entropy_mask = result.entropy
    assert entropy_mask.tolist() == [[1, 0, 0]] and entropies is FORWARD.entropies


def test_without_kl_in_the_loss_nor_an_entropy_bonus_nothing_is_observed():
    setup = _setup(kl_in_loss=False, entropy_control=EntropyControl(0.0, False, 0.0, 0.0, 0.0, 1.0))
    result = objective(setup, FORWARD, INPUTS, CTX, IDENTITY)
    assert result.loss.item() == pytest.approx(-math.exp(0.5))
    assert result.kl is None and result.entropy is None and "kl" not in result.metrics


def test_a_policy_loss_that_applies_the_sampling_ratio_itself_is_not_weighted_twice():
    loss = RatioTimesAdvantage()
    loss.uses_importance_sampling_ratio = True
    setup = _setup(policy_loss=Selected("policy_loss", "own_ratio", loss), kl_in_loss=False)
    result = objective(setup, FORWARD, INPUTS, CTX, IDENTITY)
    assert result.loss.item() == pytest.approx(-2 * math.exp(0.5) - 0.1)


def test_the_high_entropy_mask_leaves_the_loss_and_the_entropy_bonus():
    keep_none = _setup(kl_in_loss=False, high_entropy_mask=lambda entropies, mask: torch.zeros_like(mask))
    result = objective(keep_none, FORWARD, INPUTS, CTX, IDENTITY)
    assert result.loss.item() == pytest.approx(0.0)
    assert result.entropy[1].sum().item() == 0
