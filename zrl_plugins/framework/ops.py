"""Tensor helpers shared by the built-in components and by plugin authors.

Group statistics follow TRL exactly (``trl.trainer.utils.nanstd``: NaN-aware, Bessel-corrected) so that a
normalizer that coincides with a TRL option reproduces TRL's numbers.
"""

from __future__ import annotations

import torch

from .protocols import LossContext

AGGREGATIONS = ("sequence_mean", "token_mean", "constant", "batch_token_mean", "sequence_sum")

__all__ = [
    "AGGREGATIONS",
    "aggregate",
    "batch_token_mean_aggregate",
    "constant_length_aggregate",
    "group_view",
    "nanstd",
    "sequence_mean_aggregate",
    "sequence_sum_aggregate",
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


def batch_token_mean_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Token mean within the micro-batch, Σ ℓ m / Σ m (TRL's ``loss_type="bnpo"``): depends on how the batch is
    split, unlike :func:`token_mean_aggregate`."""
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / _accumulation(ctx)


def sequence_sum_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Mean over sequences of each sequence's token *sum*, (1/N) Σ_i Σ_t ℓ m (LUSPO; TRL's ``loss_type="luspo"``)."""
    return (per_token_loss * mask).sum(-1).mean() / _accumulation(ctx)


def aggregate(
    name: str, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext, max_length: int | None = None
) -> torch.Tensor:
    """The aggregation called ``name`` (verl's ``loss_agg_mode``; TRL's per-``loss_type`` reductions):
    ``sequence_mean`` (grpo, sapo), ``token_mean`` (dapo, cispo, vespo), ``constant`` (dr_grpo; L_max =
    ``max_length``), ``batch_token_mean`` (bnpo), ``sequence_sum`` (luspo)."""
    if name == "sequence_mean":
        return sequence_mean_aggregate(per_token_loss, mask, ctx)
    if name == "token_mean":
        return token_mean_aggregate(per_token_loss, mask, ctx)
    if name == "constant":
        return constant_length_aggregate(per_token_loss, mask, ctx, max_length)
    if name == "batch_token_mean":
        return batch_token_mean_aggregate(per_token_loss, mask, ctx)
    if name == "sequence_sum":
        return sequence_sum_aggregate(per_token_loss, mask, ctx)
    raise ValueError(f"unknown aggregation {name!r}; aggregations: {', '.join(AGGREGATIONS)}")


def check_aggregation(name: str | None) -> str | None:
    """``name`` if it is a known aggregation (or ``None``), else a ValueError listing them."""
    if name is not None and name not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; aggregations: {', '.join(AGGREGATIONS)}")
    return name
