"""Tensor helpers shared by the built-in components and by plugin authors.

Group statistics follow TRL exactly (``trl.trainer.utils.nanstd``: NaN-aware, Bessel-corrected) so that a
normalizer that coincides with a TRL option reproduces TRL's numbers.
"""

from __future__ import annotations

import torch

from .protocols import LossContext

__all__ = [
    "constant_length_aggregate",
    "group_view",
    "nanstd",
    "sequence_mean_aggregate",
    "token_mean_aggregate",
]


def nanstd(tensor: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """TRL's NaN-aware unbiased standard deviation (imported on first use: ``trl.trainer.utils`` is slow to import)."""
    from trl.trainer.utils import nanstd as trl_nanstd

    return trl_nanstd(tensor, dim=dim, keepdim=keepdim)


def group_view(rewards: torch.Tensor, group_size: int, method: str) -> torch.Tensor:
    """``rewards`` (N,) as (N / group_size, group_size), with clear errors for shapes a group method cannot use."""
    if rewards.dim() != 1:
        raise ValueError(
            f"{method}: rewards must be a 1-D tensor over the global batch, got shape {tuple(rewards.shape)}"
        )
    if group_size < 2:
        raise ValueError(
            f"{method} normalizes within groups of completions of the same prompt and needs group_size >= 2 "
            f"(got {group_size}); set num_generations >= 2 or pick a batch-level normalizer."
        )
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{method}: {rewards.numel()} rewards cannot be split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _accumulation(ctx: LossContext) -> float:
    return float(ctx.gradient_accumulation_steps) if ctx.training else 1.0


def sequence_mean_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """GRPO's aggregation: the mean over sequences of each sequence's token mean, (1/N) Σ_i (1/|o_i|) Σ_t ℓ m."""
    per_sequence = (per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_sequence.mean() / _accumulation(ctx)


def token_mean_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Token mean over the whole generation batch, Σ ℓ m / Σ m, with the denominator taken over all processes and
    accumulation steps (TRL's ``dapo``), so it does not change with how the batch is split."""
    denominator = max(float(ctx.num_items_in_batch), 1.0) / ctx.num_processes
    if ctx.training:
        denominator = denominator * ctx.gradient_accumulation_steps / ctx.steps_per_generation
    return (per_token_loss * mask).sum() / denominator


def constant_length_aggregate(
    per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext, max_length: int | None = None
) -> torch.Tensor:
    """Dr. GRPO's aggregation: (1/N) Σ_i Σ_t ℓ m / L_max with a constant L_max (default ``max_completion_length``)."""
    length = max_length or ctx.max_completion_length
    return (per_token_loss * mask).sum() / (per_token_loss.size(0) * length) / _accumulation(ctx)
