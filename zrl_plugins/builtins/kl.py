"""The core's reference KL penalties: ``k3`` (TRL's estimator) and ``none`` (β = 0, no reference model).

Other estimators and the adaptive controller live in the ``zrl-kl`` plugin.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch

Placement = Literal["loss", "reward"]


class FixedKLController:
    """β stays at its initial value (SPEC §3 controller ``fixed``)."""

    def __init__(self, beta: float):
        self._beta = float(beta)

    @property
    def beta(self) -> float:
        return self._beta

    def update(self, observed_kl: float, n_steps: int) -> None:
        """A fixed controller ignores the observed KL."""

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self._beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._beta = float(state["beta"])


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(Δ) − Δ − 1 with Δ = log π_ref − log π_θ: unbiased, ≥ 0 (Schulman's estimator, TRL's ``beta`` path)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


class K3KLPenalty:
    """KL penalty with the k3 estimator and a fixed β (SPEC §3).

    Args:
        beta: the KL coefficient (defaults to the config's ``beta``).
        placement: ``"loss"`` adds β·aggregate(k3) to the loss (GRPO); ``"reward"`` subtracts β·Σ_t k3 from the
            sequence reward before normalization (per token for PPO).
    """

    def __init__(self, beta: float = 0.0, placement: Placement = "loss"):
        if placement not in ("loss", "reward"):
            raise ValueError(f"placement must be 'loss' or 'reward', got {placement!r}")
        self.placement: Placement = placement
        self.controller = FixedKLController(beta)

    @property
    def requires_reference(self) -> bool:
        return self.controller.beta != 0.0

    def per_token(self, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        return k3(logp, ref_logp)


class NoKLPenalty:
    """No KL term: β = 0 and no reference model is ever loaded (SPEC §3 ``none``)."""

    placement: Placement = "loss"

    def __init__(self, beta: float = 0.0):
        if beta:  # e.g. a recipe's beta with `--kl_penalty none` as the one-flag ablation
            warnings.warn(
                f"kl_penalty 'none' means β = 0: beta={beta} is not used and no reference model is loaded",
                stacklevel=2,
            )
        self.controller = FixedKLController(0.0)

    @property
    def requires_reference(self) -> bool:
        return False

    def per_token(self, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(logp)
