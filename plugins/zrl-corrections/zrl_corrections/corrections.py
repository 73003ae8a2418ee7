"""Rollout corrections: IcePop, geometric-mean sequence masking (verl), batch-normalized IS weights (verl).

r_t = π_old(o_t) / π_behaviour(o_t) is the token ratio of a sampled token; log ratios of padding and of tokens the
engine could not score count as 0 (:func:`zrl_plugins.sdk.token_log_ratio`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist

from zrl_plugins.sdk import SAFETY_BOUND, CorrectionOutput, sequence_log_ratio, token_log_ratio


class IcePop:
    """IcePop (Ling team, Ring-1T): a token keeps its weight r_t inside [alpha, beta] and gets weight 0 outside,
    w_t = r_t · 1[alpha ≤ r_t ≤ beta]: calibrated where engine and trainer roughly agree, no gradient where they
    disagree. Masked tokens stay in the aggregation's denominator, as in the paper's objective (this is TRL's
    ``token_mask`` with clip_min = alpha, clip_max = beta). Metric ``icepop_masked_fraction``."""

    def __init__(self, alpha: float = 0.5, beta: float = 5.0):
        if not 0 <= alpha < 1 < beta:
            raise ValueError(f"IcePop needs 0 <= alpha < 1 < beta, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = alpha, beta

    def __call__(self, old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor) -> CorrectionOutput:
        mask = mask.float()
        log_ratio = token_log_ratio(old_logps, behaviour_logps, mask)
        ratio = torch.exp(log_ratio.clamp(max=math.log(self.beta)))  # never overflows; above beta it is dropped
        keep = log_ratio <= math.log(self.beta)
        if self.alpha > 0:
            keep &= log_ratio >= math.log(self.alpha)
        masked = ((~keep).float() * mask).sum() / mask.sum().clamp(min=1.0)
        # where, not a product: a ratio outside [alpha, beta] gets 0 even when it overflowed (inf * 0 is NaN)
        weights = torch.where(keep, ratio, torch.zeros_like(ratio))
        return CorrectionOutput(weights=weights, metrics={"icepop_masked_fraction": masked.item()})


class GeometricMeanMask:
    """verl's geometric rejection sampling (``rollout_rs="geometric"``): a sequence is rejected when its geometric
    mean ratio g_i = exp(clamp(mean_t log r_t, ±20)) lies outside [lower, upper] (lower defaults to 1 / upper; verl's
    ``geo_rs`` preset: upper 1.001). With ``veto``, a sequence holding any token with r_t < veto is rejected too
    (verl's ``rollout_token_veto_threshold``). Rejected sequences leave the loss mask (and its denominator); weights
    are 1. Metric ``geo_mask_rejected_fraction`` (sequences)."""

    def __init__(self, upper: float = 1.001, lower: float | None = None, veto: float | None = None):
        lower = 1.0 / upper if lower is None else lower
        if not 0 <= lower <= 1 <= upper:
            raise ValueError(f"geo_mask needs 0 <= lower <= 1 <= upper, got lower={lower}, upper={upper}")
        if veto is not None and not veto > 0:
            raise ValueError(f"veto must be positive, got {veto}")
        self.upper, self.lower, self.veto = upper, lower, veto

    def __call__(self, old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor) -> CorrectionOutput:
        mask = mask.float()
        log_ratio = token_log_ratio(old_logps, behaviour_logps, mask)
        geometric = torch.exp(sequence_log_ratio(log_ratio, mask, mean=True).clamp(-SAFETY_BOUND, SAFETY_BOUND))
        keep = (geometric >= self.lower) & (geometric <= self.upper)
        if self.veto is not None:
            vetoed = ((log_ratio < torch.log(torch.tensor(self.veto))) & mask.bool()).any(-1, keepdim=True)
            keep = keep & ~vetoed
        rows = mask.sum(-1, keepdim=True) > 0
        rejected = ((~keep) & rows).float().sum() / rows.float().sum().clamp(min=1.0)
        return CorrectionOutput(
            weights=torch.ones_like(geometric),
            mask=keep.float(),
            metrics={"geo_mask_rejected_fraction": rejected.item()},
        )


class BatchNormalizedIS:
    """verl's truncated IS weights with ``rollout_is_batch_normalize``: w = min(exp(clamp(log r, ±20)), threshold)
    per token (``level="token"``) or per sequence on the product of the token ratios (``"sequence"``), then divided
    by their mean over the batch's completion tokens (token level) or non-empty sequences (sequence level), over
    all processes, so the mean weight is 1. Metric ``batch_norm_factor``: the mean divided by."""

    def __init__(self, level: Literal["token", "sequence"] = "token", threshold: float = 2.0):
        if level not in ("token", "sequence"):
            raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.level, self.threshold = level, threshold

    def __call__(self, old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor) -> CorrectionOutput:
        mask = mask.float()
        log_ratio = token_log_ratio(old_logps, behaviour_logps, mask)
        if self.level == "sequence":
            log_ratio = sequence_log_ratio(log_ratio, mask)
            valid = (mask.sum(-1, keepdim=True) > 0).float()
        else:
            valid = mask
        weights = torch.exp(log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND)).clamp(max=self.threshold) * valid
        totals = torch.stack([weights.sum(), valid.sum()]).double()
        if dist.is_available() and dist.is_initialized():  # the batch is every process's rows, as in verl
            dist.all_reduce(totals)
        mean = (totals[0] / totals[1].clamp(min=1.0)).item()
        factor = mean if mean > 1e-8 else 1.0
        return CorrectionOutput(weights=weights / factor, metrics={"batch_norm_factor": factor})
