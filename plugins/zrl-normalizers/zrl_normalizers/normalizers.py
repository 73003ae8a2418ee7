"""Advantage normalizers (docs/methods.md#aggregation). Each owns its advantage formula *and* its loss aggregation,
because the biases Dr. GRPO removes live in both (std scaling → question-difficulty bias; 1/|o_i| → length bias).

Rewards are 1-D over the global batch, groups contiguous, NaN = unscorable (left out of every statistic, advantage
0). δ defaults to TRL's 1e-4 so that options coinciding with TRL reproduce its numbers.
"""

from __future__ import annotations

from typing import Literal

import torch

from zrl_plugins import LossContext
from zrl_plugins.ops import constant_length_aggregate, group_view, nanstd, token_mean_aggregate


def _finite(advantages: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(advantages, nan=0.0, posinf=0.0, neginf=0.0)


class TokenMeanAggregation:
    """Token mean over the generation batch: Σ_{i,t} ℓ m / Σ_{i,t} m, independent of the process/accumulation split
    (TRL's ``loss_type="dapo"``)."""

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return token_mean_aggregate(per_token_loss, mask, ctx)


class DrGRPO:
    """Dr. GRPO (Liu et al. 2025): A_i = r_i − mean_g(r) (no std: no question-difficulty bias); loss =
    (1/N) Σ_i Σ_t ℓ_{i,t} m_{i,t} / L_max with a constant L_max (no length bias).

    ≡ TRL ``scale_rewards="none"`` + ``loss_type="dr_grpo"``.

    Args:
        max_length: L_max; defaults to the trainer's ``max_completion_length``.
        max_completion_length: passed by the trainer.
    """

    def __init__(self, max_length: int | None = None, max_completion_length: int | None = None):
        self.max_length = max_length or max_completion_length
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}")

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        grouped = group_view(rewards, group_size, "dr_grpo")
        return _finite(grouped - torch.nanmean(grouped, dim=1, keepdim=True)).view(-1)

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return constant_length_aggregate(per_token_loss, mask, ctx, self.max_length)


class LitePPO(TokenMeanAggregation):
    """Lite PPO (Liu et al. 2025, "Tricks or Traps"): A_i = (r_i − mean_g(r)) / (std_batch + δ), group mean with
    batch-level std; token-mean loss.

    Args:
        delta: δ.
        batch_std: ``"raw"`` = std of the N raw rewards (the paper's and TRL's ``scale_rewards="batch"``);
            ``"centered"`` = std of the group-centred rewards r_i − mean_g(r) (removes between-group spread).
    """

    def __init__(self, delta: float = 1e-4, batch_std: Literal["raw", "centered"] = "raw"):
        if batch_std not in ("raw", "centered"):
            raise ValueError(f"batch_std must be 'raw' or 'centered', got {batch_std!r}")
        self.delta = delta
        self.batch_std = batch_std

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        grouped = group_view(rewards, group_size, "lite_ppo")
        centred = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
        std = nanstd(rewards) if self.batch_std == "raw" else nanstd(centred)
        return _finite(centred / (std + self.delta)).view(-1)


class BatchNormalizer(TokenMeanAggregation):
    """REINFORCE++-style: A_i = (r_i − mean_batch(r)) / (std_batch(r) + δ); token-mean loss. Needs no groups.

    Args:
        delta: δ.
    """

    def __init__(self, delta: float = 1e-4):
        self.delta = delta

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        if rewards.dim() != 1:
            raise ValueError(f"batch: rewards must be 1-D, got shape {tuple(rewards.shape)}")
        return _finite((rewards - torch.nanmean(rewards)) / (nanstd(rewards) + self.delta))


class RLOO(TokenMeanAggregation):
    """Leave-one-out baseline: A_i = r_i − mean_{j≠i in group}(r_j) over the scorable completions; token-mean loss.

    A completion whose group has no other scorable completion gets 0.
    """

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        grouped = group_view(rewards, group_size, "rloo")
        valid = ~torch.isnan(grouped)
        count = valid.sum(dim=1, keepdim=True)
        total = torch.where(valid, grouped, torch.zeros_like(grouped)).sum(dim=1, keepdim=True)
        others = (count - 1).clamp(min=1)
        advantages = grouped - (total - grouped) / others
        advantages = torch.where(valid & (count > 1), advantages, torch.zeros_like(advantages))
        return _finite(advantages).view(-1)


class NoNormalization(TokenMeanAggregation):
    """A_i = r_i (no baseline, no scaling); token-mean loss. Unscorable rows get 0."""

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        if rewards.dim() != 1:
            raise ValueError(f"none: rewards must be 1-D, got shape {tuple(rewards.shape)}")
        return _finite(rewards.clone())
