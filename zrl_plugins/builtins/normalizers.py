"""The core's reference normalizer ``grpo`` (DeepSeekMath). Others live in the ``zrl-normalizers`` plugin."""

from __future__ import annotations

import torch

from ..framework.ops import aggregate, check_aggregation, group_view, nanstd
from ..framework.protocols import LossContext


class GRPONormalizer:
    """Group-normalized advantages and the sequence-mean-of-token-means loss (docs/methods.md#grpo ``grpo``).

    A_i = (r_i − mean_g(r)) / (std_g(r) + δ), std unbiased over the scorable completions of the group;
    loss = (1/N) Σ_i (1/|o_i|) Σ_t ℓ_{i,t} m_{i,t}.

    Equals TRL's ``scale_rewards="group"`` + ``loss_type="grpo"`` (δ = 1e-4 as in TRL). Unscorable rows (NaN) are
    left out of the group statistics and get advantage 0; a group whose rewards are all equal gets 0 everywhere.

    Args:
        delta: δ added to the standard deviation.
        aggregation: another loss aggregation by name (``zrl_plugins.sdk.aggregate``: ``token_mean`` gives TRL's
            ``scale_rewards="group"`` + ``loss_type="dapo"``, TRL's default), as verl's ``loss_agg_mode``.
        max_completion_length: passed by the trainer (L_max of the ``constant`` aggregation).
    """

    def __init__(self, delta: float = 1e-4, aggregation: str | None = None, max_completion_length: int | None = None):
        self.delta = delta
        self.aggregation = check_aggregation(aggregation) or "sequence_mean"
        self.max_completion_length = max_completion_length

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        grouped = group_view(rewards, group_size, "grpo")
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        std = nanstd(grouped, dim=1, keepdim=True)
        advantages = (grouped - mean) / (std + self.delta)
        return torch.nan_to_num(advantages, nan=0.0).view(-1)

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return aggregate(self.aggregation, per_token_loss, mask, ctx, self.max_completion_length)
