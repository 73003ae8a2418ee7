"""Advantage normalizers (docs/methods.md#aggregation). Each owns its advantage formula *and* its loss aggregation,
because the biases Dr. GRPO removes live in both (std scaling → question-difficulty bias; 1/|o_i| → length bias).

Rewards are 1-D over the global batch, groups contiguous, NaN = unscorable (left out of every statistic, advantage
0). δ defaults to TRL's 1e-4 so that options coinciding with TRL reproduce its numbers.
"""

from __future__ import annotations

from typing import Literal

import torch

from zrl_plugins.sdk import LossContext, aggregate, check_aggregation, group_view, nanstd


def _finite(advantages: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(advantages, nan=0.0, posinf=0.0, neginf=0.0)


class Aggregating:
    """The loss aggregation of a normalizer: its own by default, or another one by name (``aggregation=``, as verl's
    ``loss_agg_mode``; see :func:`zrl_plugins.framework.ops.aggregate`)."""

    default_aggregation = "token_mean"  # Σ ℓ m / Σ m over the generation batch (TRL's ``dapo``)

    def _set_aggregation(self, aggregation: str | None, max_length: int | None) -> None:
        self.aggregation = check_aggregation(aggregation) or self.default_aggregation
        self.max_length = max_length

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return aggregate(self.aggregation, per_token_loss, mask, ctx, self.max_length)


class DrGRPO(Aggregating):
    """Dr. GRPO (Liu et al. 2025): A_i = r_i − mean_g(r) (no std: no question-difficulty bias); loss =
    (1/N) Σ_i Σ_t ℓ_{i,t} m_{i,t} / L_max with a constant L_max (no length bias).

    ≡ TRL ``scale_rewards="none"`` + ``loss_type="dr_grpo"``.

    Args:
        max_length: L_max; defaults to the trainer's ``max_completion_length``.
        max_completion_length: passed by the trainer.
        aggregation: another aggregation by name (default ``constant``).
    """

    default_aggregation = "constant"

    def __init__(
        self, max_length: int | None = None, max_completion_length: int | None = None, aggregation: str | None = None
    ):
        max_length = max_length or max_completion_length
        if max_length is not None and max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self._set_aggregation(aggregation, max_length)

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        grouped = group_view(rewards, group_size, "dr_grpo")
        return _finite(grouped - torch.nanmean(grouped, dim=1, keepdim=True)).view(-1)


class LitePPO(Aggregating):
    """Lite PPO (Liu et al. 2025, "Tricks or Traps"): A_i = (r_i − mean_g(r)) / (std_batch + δ), group mean with
    batch-level std; token-mean loss.

    Args:
        delta: δ.
        batch_std: ``"raw"`` = std of the N raw rewards (the paper's and TRL's ``scale_rewards="batch"``);
            ``"centered"`` = std of the group-centred rewards r_i − mean_g(r) (removes between-group spread).
        aggregation: another aggregation by name (default ``token_mean``).
        max_completion_length: passed by the trainer (L_max of the ``constant`` aggregation).
    """

    def __init__(
        self,
        delta: float = 1e-4,
        batch_std: Literal["raw", "centered"] = "raw",
        aggregation: str | None = None,
        max_completion_length: int | None = None,
    ):
        if batch_std not in ("raw", "centered"):
            raise ValueError(f"batch_std must be 'raw' or 'centered', got {batch_std!r}")
        self.delta = delta
        self.batch_std = batch_std
        self._set_aggregation(aggregation, max_completion_length)

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        grouped = group_view(rewards, group_size, "lite_ppo")
        centred = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
        std = nanstd(rewards) if self.batch_std == "raw" else nanstd(centred)
        return _finite(centred / (std + self.delta)).view(-1)


class BatchNormalizer(Aggregating):
    """REINFORCE++-style: A_i = (r_i − mean_batch(r)) / (std_batch(r) + δ); token-mean loss. Needs no groups.

    Args:
        delta: δ.
        aggregation: another aggregation by name (default ``token_mean``).
        max_completion_length: passed by the trainer (L_max of the ``constant`` aggregation).
    """

    def __init__(self, delta: float = 1e-4, aggregation: str | None = None, max_completion_length: int | None = None):
        self.delta = delta
        self._set_aggregation(aggregation, max_completion_length)

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        if rewards.dim() != 1:
            raise ValueError(f"batch: rewards must be 1-D, got shape {tuple(rewards.shape)}")
        return _finite((rewards - torch.nanmean(rewards)) / (nanstd(rewards) + self.delta))


class RLOO(Aggregating):
    """Leave-one-out baseline: A_i = r_i − mean_{j≠i in group}(r_j) over the scorable completions; token-mean loss.

    A completion whose group has no other scorable completion gets 0.

    Args:
        aggregation: another aggregation by name (default ``token_mean``).
        max_completion_length: passed by the trainer (L_max of the ``constant`` aggregation).
    """

    def __init__(self, aggregation: str | None = None, max_completion_length: int | None = None):
        self._set_aggregation(aggregation, max_completion_length)

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        grouped = group_view(rewards, group_size, "rloo")
        valid = ~torch.isnan(grouped)
        count = valid.sum(dim=1, keepdim=True)
        total = torch.where(valid, grouped, torch.zeros_like(grouped)).sum(dim=1, keepdim=True)
        others = (count - 1).clamp(min=1)
        advantages = grouped - (total - grouped) / others
        advantages = torch.where(valid & (count > 1), advantages, torch.zeros_like(advantages))
        return _finite(advantages).view(-1)


class NoNormalization(Aggregating):
    """A_i = r_i (no baseline, no scaling); token-mean loss. Unscorable rows get 0.

    Args:
        aggregation: another aggregation by name (default ``token_mean``).
        max_completion_length: passed by the trainer (L_max of the ``constant`` aggregation).
    """

    def __init__(self, aggregation: str | None = None, max_completion_length: int | None = None):
        self._set_aggregation(aggregation, max_completion_length)

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        if rewards.dim() != 1:
            raise ValueError(f"none: rewards must be 1-D, got shape {tuple(rewards.shape)}")
        return _finite(rewards.clone())
