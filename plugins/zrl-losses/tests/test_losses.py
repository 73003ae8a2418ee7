"""Each loss against its formula, by hand, on two tokens (the TRL equivalence is tests/test_trl_loss_types.py)."""

from __future__ import annotations

import math

import pytest
import torch
from zrl_losses import CISPO, LUSPO, SAPO, VESPO, gamma_weights

from zrl_plugins import load_component

LOGPS = torch.log(torch.tensor([[0.6, 0.2]]))
OLD = torch.log(torch.tensor([[0.3, 0.4]]))  # ratios w = 2 and 0.5
MASK = torch.ones(1, 2)


def test_cispo_clips_the_weight_not_the_gradient():
    logps = LOGPS.clone().requires_grad_(True)
    out = CISPO(epsilon_high=1.5)(logps, OLD, torch.tensor([[1.0]]), MASK)
    # ℓ = −min(w, 1.5)·A·log π: weights 1.5 and 0.5, detached
    torch.testing.assert_close(out.per_token_loss, -torch.tensor([[1.5, 0.5]]) * LOGPS)
    out.per_token_loss.sum().backward()
    torch.testing.assert_close(logps.grad, -torch.tensor([[1.5, 0.5]]))  # every token keeps a gradient
    assert out.metrics["cispo_clip_ratio"].tolist() == [[1.0, 0.0]]


def test_sapo_soft_gate():
    out = SAPO(sapo_temperature_pos=1.0, sapo_temperature_neg=2.0)(LOGPS, OLD, torch.tensor([[-1.0]]), MASK)
    tau = 2.0  # A < 0
    expected = [-(4 / tau) / (1 + math.exp(-tau * (w - 1))) * -1.0 for w in (2.0, 0.5)]
    torch.testing.assert_close(out.per_token_loss, torch.tensor([expected]))


def test_luspo_is_the_sequence_level_clip():
    out = LUSPO(epsilon_low=0.2)(LOGPS, OLD, torch.tensor([[1.0]]), MASK)
    # w = geometric mean of 2 and 0.5 = 1: inside the clip range, ℓ = −w·A for the sequence
    assert out.per_token_loss.shape == (1, 1) and out.per_token_loss.item() == pytest.approx(-1.0)


def test_vespo_gamma_kernel():
    # sequence log-ratio log 2 + log 0.5 = 0 → w = 1 → φ = e^λ · 1 · e^(−λ) = 1
    phi = gamma_weights(torch.tensor([[1.0]]), LOGPS - OLD, MASK, None, 2.0, 3.0, 3.0, 2.0)
    assert phi.item() == pytest.approx(1.0)
    # only the first token: w = 2, A ≥ 0 → φ = e^3 · 2^2 · e^(−6)
    phi = gamma_weights(torch.tensor([[1.0]]), LOGPS - OLD, torch.tensor([[1.0, 0.0]]), None, 2.0, 3.0, 3.0, 2.0)
    assert phi.item() == pytest.approx(math.exp(3) * 4 * math.exp(-6))
    out = VESPO()(LOGPS, OLD, torch.tensor([[2.0]]), MASK)
    torch.testing.assert_close(out.per_token_loss, -1.0 * 2.0 * LOGPS)
    assert VESPO.uses_importance_sampling_ratio


def test_registered_by_name():
    for name in ("cispo", "sapo", "luspo", "vespo"):
        assert callable(load_component("policy_loss", name))
