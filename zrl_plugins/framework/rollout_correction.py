"""Shared arithmetic of rollout corrections and the mismatch statistics logged for every one of them.

A correction compares π_old (the trainer's policy when the batch was sampled) with the behaviour policy that actually
sampled it (vLLM, a layer-skipped model, ...) through the per-token log ratio log π_old − log π_behaviour of the sampled
tokens (docs/methods.md#rollout-correction). Components build on :func:`token_log_ratio` and
:func:`sequence_log_ratio`; the trainer calls :func:`checked_correction` and logs :func:`mismatch_stats`.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import ComponentContractError
from .protocols import CorrectionOutput

SAFETY_BOUND = 20.0  # |log ratio| cap before exponentiating, as verl's rollout correction


def token_log_ratio(old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π_old − log π_behaviour per token (B x T), 0 on padding and where the behaviour log-prob is NaN (a token
    the engine could not score carries no evidence, as in TRL)."""
    return torch.nan_to_num((old_logps - behaviour_logps) * mask, nan=0.0)


def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """Σ_t (or, with ``mean``, the masked mean over tokens of) a per-token log ratio, per sequence (B x 1)."""
    total = (log_ratio * mask).sum(-1, keepdim=True)
    return total / mask.sum(-1, keepdim=True).clamp(min=1.0) if mean else total


def checked_correction(
    name: str, out: Any, old_logps: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights (float) and rejection mask (float, B x T, or ``None``) of a correction's output, after checking
    the contract, so that a wrong shape is reported against the component rather than deep inside the loss."""
    if not isinstance(out, CorrectionOutput):
        raise ComponentContractError(
            f"rollout_correction {name!r} must return a CorrectionOutput, got {type(out).__name__}"
        )
    rows, length = old_logps.shape
    for field_name, tensor in (("weights", out.weights), ("mask", out.mask)):
        if tensor is None and field_name == "mask":
            continue
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) not in ((rows, length), (rows, 1)):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ComponentContractError(
                f"rollout_correction {name!r} returned {field_name} of shape {shape}; expected ({rows}, {length}) "
                f"per token or ({rows}, 1) per sequence."
            )
    weights = out.weights.detach().float()
    counted = mask.bool() if weights.shape[1] == length else mask.bool().any(-1, keepdim=True)
    bad = counted & ~(torch.isfinite(weights) & (weights >= 0))
    if bad.any():
        row, column = (int(i) for i in bad.nonzero()[0])
        raise ComponentContractError(
            f"rollout_correction {name!r} returned weight {weights[row, column].item()} at row {row}, position "
            f"{column}; weights must be finite and >= 0 (0 drops a token's gradient; to reject it, use the mask). "
            "No optimizer step was taken."
        )
    rejection = None
    if out.mask is not None:
        rejection = out.mask.detach().float()
        if not ((rejection == 0) | (rejection == 1)).all():
            values = sorted({float(v) for v in rejection.unique()[:5]})
            raise ComponentContractError(
                f"rollout_correction {name!r} returned a mask with values {values}; a rejection mask holds 1 (keep) "
                "and 0 (reject) only (scale a token's weight through `weights`). No optimizer step was taken."
            )
        rejection = rejection.expand(rows, length) * mask
    return weights, rejection


def mismatch_stats(
    old_logps: torch.Tensor,
    behaviour_logps: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    rejection: torch.Tensor | None,
) -> dict[str, float]:
    """This process's statistics of the behaviour/π_old mismatch and of the correction applied to it.

    ``rollout/behaviour_kl``: mean over sampled tokens of log π_behaviour − log π_old (the k1 estimate of
    KL(behaviour ‖ π_old)); ``rollout/behaviour_kl_k3``: the mean of r − 1 − log r with r = π_old / π_behaviour (the
    non-negative k3 estimate of the same KL); ``rollout/ess``: effective sample size per sequence,
    (Σ w)² / (N Σ w²) of the sequence ratios w = Π_t π_old / π_behaviour (1 = on policy); ``rollout/is_weight_*``: the
    raw token ratio; ``rollout/masked_fraction``: completion tokens given weight 0 or rejected. TRL's names
    (``sampling/importance_sampling_ratio/*`` of the weights applied, ``sampling/sampling_logp_difference/*``) keep
    its dashboards working.
    """
    mask = mask.float()
    valid = mask.bool()
    log_ratio = token_log_ratio(old_logps, behaviour_logps, mask)
    tokens = mask.sum().clamp(min=1.0)
    raw = torch.exp(log_ratio.clamp(-SAFETY_BOUND, SAFETY_BOUND))
    stats: dict[str, float] = {
        "rollout/behaviour_kl": (-log_ratio.sum() / tokens).item(),
        "rollout/behaviour_kl_k3": (((raw - 1 - log_ratio) * mask).sum() / tokens).item(),
    }
    raw_valid = raw[valid]
    stats["rollout/is_weight_mean"] = raw_valid.mean().item() if raw_valid.numel() else 1.0
    stats["rollout/is_weight_min"] = raw_valid.min().item() if raw_valid.numel() else 1.0
    stats["rollout/is_weight_max"] = raw_valid.max().item() if raw_valid.numel() else 1.0
    rows = mask.sum(-1) > 0
    log_w = log_ratio.sum(-1)[rows]
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / max(log_w.numel(), 1)
    stats["rollout/ess"] = ess.item() if log_w.numel() else 1.0
    kept = (weights != 0).float().expand_as(mask) * (1.0 if rejection is None else rejection)
    stats["rollout/masked_fraction"] = (((1 - kept) * mask).sum() / tokens).item()

    # TRL's own statistics, computed as TRL computes them
    delta = torch.abs(old_logps - behaviour_logps)
    delta = delta[valid & ~torch.isnan(delta)]
    stats["sampling/sampling_logp_difference/mean"] = delta.mean().item() if delta.numel() else 0.0
    stats["sampling/sampling_logp_difference/max"] = delta.max().item() if delta.numel() else 0.0
    flat = weights.flatten() if weights.shape[1] == 1 else weights[valid]
    for key, reduce in (("min", torch.min), ("mean", torch.mean), ("max", torch.max)):
        stats[f"sampling/importance_sampling_ratio/{key}"] = reduce(flat).item() if flat.numel() else 0.0
    return stats
