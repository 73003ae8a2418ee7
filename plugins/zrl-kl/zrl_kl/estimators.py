"""Per-token KL estimators on sampled tokens, with Δ = log π_ref − log π_θ (docs/methods.md#kl; Schulman,
"Approximating KL divergence"). The core's ``k3`` is :func:`zrl_plugins.builtins.kl.k3`."""

from __future__ import annotations

import torch


def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = −Δ = log π_θ − log π_ref: unbiased, high variance, negative on some tokens."""
    return logp - ref_logp


def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ Δ²: biased, low variance, ≥ 0."""
    return 0.5 * (ref_logp - logp) ** 2


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor, bound: float = 10.0) -> torch.Tensor:
    """verl's ``low_var_kl``: k3 with Δ clamped to [−20, 20] before the exponential (as verl does, so a large Δ gives
    a finite value *and* a finite gradient, not 0·∞ = NaN), then clamped to [−bound, bound] (in effect ≤ bound)."""
    delta = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(delta) - delta - 1, min=-bound, max=bound)


def abs_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """|Δ| = |log π_θ − log π_ref| (verl's ``abs``)."""
    return (logp - ref_logp).abs()


ESTIMATORS = {"k1": k1, "k2": k2, "low_var_kl": low_var_kl, "abs": abs_kl}
