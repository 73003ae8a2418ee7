"""KL penalties of the core: the generic :class:`EstimatorKLPenalty`, the ``k3`` estimator (TRL's), ``none``
(β = 0, no reference model), and the ``fixed`` controller.

More estimators (k1, k2, low_var_kl, abs) and the ``adaptive`` controller live in the ``zrl-kl`` plugin, built on
:class:`EstimatorKLPenalty`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch

from ..framework.protocols import KLController

Placement = Literal["loss", "reward"]
Estimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FixedKLController:
    """β stays at its initial value (docs/methods.md#kl controller ``fixed``)."""

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


class EstimatorKLPenalty:
    """A KL penalty made of a per-token estimator, a placement and a coefficient controller (docs/methods.md#kl).

    Args:
        estimator: ``f(logp, ref_logp) -> per-token KL``.
        beta: the initial coefficient (the trainer passes the config's ``beta`` unless given here).
        placement: ``"loss"`` adds β·aggregate(KL) to the loss (GRPO); ``"reward"`` subtracts β·KL from the reward
            (per token for PPO; summed into the sequence reward before normalization for GRPO).
        controller: a controller name (``fixed``, or ``adaptive`` from zrl-kl; see ``zrl plugins``) or a
            :class:`~zrl_plugins.sdk.KLController` object.
        controller_kwargs: keyword arguments of the named controller (e.g. ``{"target_kl": 6, "horizon": 10000}``).
        plugin_manager: the manager that builds this penalty (passed by it), which also builds the named controller;
            default: the process-wide one.
    """

    def __init__(
        self,
        estimator: Estimator,
        beta: float = 0.0,
        placement: Placement = "loss",
        controller: str | KLController = "fixed",
        controller_kwargs: dict[str, Any] | None = None,
        plugin_manager: Any = None,
    ):
        if placement not in ("loss", "reward"):
            raise ValueError(f"placement must be 'loss' or 'reward', got {placement!r}")
        self.estimator = estimator
        self.placement: Placement = placement
        if isinstance(controller, str):
            if plugin_manager is None:
                from ..framework.plugins import get_plugin_manager

                plugin_manager = get_plugin_manager()
            kwargs = controller_kwargs or {}
            controller = plugin_manager.load_component("kl_controller", controller, beta=beta, **kwargs)
        elif controller_kwargs:
            raise ValueError("controller_kwargs are only used with a controller given by name")
        self.controller: KLController = controller

    @property
    def requires_reference(self) -> bool:
        # a zero β stays zero under every multiplicative controller: no reference model is needed
        return self.controller.beta != 0.0

    def per_token(self, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        return self.estimator(logp, ref_logp)


class K3KLPenalty(EstimatorKLPenalty):
    """The k3 estimator (TRL's) with any controller; see :class:`EstimatorKLPenalty` for the arguments."""

    def __init__(
        self,
        beta: float = 0.0,
        placement: Placement = "loss",
        controller: str | KLController = "fixed",
        controller_kwargs: dict[str, Any] | None = None,
        plugin_manager: Any = None,
    ):
        super().__init__(k3, beta, placement, controller, controller_kwargs, plugin_manager)


class NoKLPenalty:
    """No KL term: β = 0 and no reference model is ever loaded (docs/methods.md#kl ``none``)."""

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
