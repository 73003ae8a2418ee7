"""The core's policy loss ``clip``: PPO's clipped surrogate at token or sequence (GSPO) level, as TRL computes it.
CISPO, SAPO, LUSPO and VESPO live in the ``zrl-losses`` plugin (docs/methods.md#policy-losses)."""

from __future__ import annotations

from typing import Literal

import torch

from ..framework.protocols import PolicyLossOutput

Level = Literal["token", "sequence"]


def log_importance_weights(
    logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, level: Level
) -> torch.Tensor:
    """log(π_θ / π_old) per token (``token``, B x T) or its masked mean per sequence (``sequence``, GSPO, B x 1)."""
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


class ClipLoss:
    """PPO's clipped surrogate (Schulman et al. 2017): ℓ = −min(w·A, clip(w, 1 − ε_low, 1 + ε_high)·A), with
    w = π_θ / π_old per token, or per sequence as the geometric mean of the token ratios (GSPO, Zheng et al. 2025,
    ``importance_sampling_level="sequence"``). ``delta`` caps w from above as well (two-sided clipping, INTELLECT-2).
    ≡ TRL's loss for ``loss_type`` grpo / bnpo / dr_grpo / dapo / luspo (the aggregation is the normalizer's).

    Args:
        epsilon_low: ε_low (TRL's ``epsilon``).
        epsilon_high: ε_high (default ε_low).
        delta: upper cap of w in the unclipped term, or ``None``.
        importance_sampling_level: ``token`` or ``sequence``.
    """

    def __init__(
        self,
        epsilon_low: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        importance_sampling_level: Level = "token",
    ):
        self.epsilon_low = epsilon_low
        self.epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
        self.delta = delta
        self.level: Level = importance_sampling_level
        log_importance_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), self.level)  # validates

    def __call__(self, logps, old_logps, advantages, mask, importance_sampling_ratio=None) -> PolicyLossOutput:
        ratio = torch.exp(log_importance_weights(logps, old_logps, mask, self.level))
        clipped = torch.clamp(ratio, 1 - self.epsilon_low, 1 + self.epsilon_high)
        capped = ratio if self.delta is None else torch.clamp(ratio, max=self.delta)
        per_token_loss = -torch.min(capped * advantages, clipped * advantages)
        return PolicyLossOutput(
            per_token_loss=per_token_loss,
            ratio=ratio,
            clipped_low=(capped < 1 - self.epsilon_low) & (advantages < 0),
            clipped_high=(capped > 1 + self.epsilon_high) & (advantages > 0),
        )
