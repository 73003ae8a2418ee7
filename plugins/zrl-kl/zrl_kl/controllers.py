"""The adaptive KL controller of Ziegler et al. (2019), as in TRL's former PPO and verl."""

from __future__ import annotations

from typing import Any


class AdaptiveKLController:
    """β ← β · (1 + clip(KL / KL_target − 1, −clip, clip) · n_steps / horizon), once per optimizer step.

    Args:
        beta: initial coefficient.
        target_kl: the KL (mean per token) the controller steers towards.
        horizon: how many samples it takes to correct a proportional error fully.
        clip: bound of the proportional error (0.2 in the paper).
    """

    def __init__(self, beta: float, target_kl: float = 6.0, horizon: float = 10000, clip: float = 0.2):
        if target_kl <= 0 or horizon <= 0:
            raise ValueError(f"target_kl and horizon must be positive, got {target_kl} and {horizon}")
        self._beta = float(beta)
        self.target_kl = float(target_kl)
        self.horizon = float(horizon)
        self.clip = float(clip)

    @property
    def beta(self) -> float:
        return self._beta

    def update(self, observed_kl: float, n_steps: int) -> None:
        error = min(max(observed_kl / self.target_kl - 1.0, -self.clip), self.clip)
        self._beta *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self._beta, "target_kl": self.target_kl, "horizon": self.horizon, "clip": self.clip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._beta = float(state["beta"])
        for key in ("target_kl", "horizon", "clip"):
            if key in state:
                setattr(self, key, float(state[key]))
