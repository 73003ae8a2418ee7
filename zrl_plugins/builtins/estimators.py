"""Per-token advantage estimators of the PPO trainer (docs/methods.md#ppo): ``gae`` (with a critic) and ``reinforce_pp``
(REINFORCE++: discounted returns of the per-token rewards, no critic). Both are registered as normalizers and
follow :class:`~zrl_plugins.sdk.TokenAdvantageEstimator`.
"""

from __future__ import annotations

import torch

from ..framework.ops import token_mean_aggregate
from ..framework.protocols import LossContext


def discounted_sum(x: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """y_t = Σ_l discount^l · x_{t+l} over the masked (right-padded) tokens of each row; 0 on padding."""
    x = x * mask
    out = torch.zeros_like(x)
    running = torch.zeros_like(x[:, 0])
    for t in reversed(range(x.size(1))):
        running = x[:, t] + discount * running
        out[:, t] = running
    return out * mask


def gae(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: δ_t = r_t + γV_{t+1} − V_t, A_t = Σ_l (γλ)^l δ_{t+l}, R_t = A_t + V_t.

    ``V`` past the last completion token is 0 (the episode ends there); padding gets A = R = 0.
    """
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = token_rewards * mask + gamma * next_values - values
    advantages = discounted_sum(deltas, mask, gamma * lam)
    return advantages, (advantages + values) * mask


class GAEEstimator:
    """GAE over per-token rewards with a critic; the policy loss is the token mean (docs/methods.md#ppo).

    Args:
        gamma: discount γ (1.0 for language: the reward arrives at the last token).
        lam: GAE λ (0.95).
    """

    needs_critic = True

    def __init__(self, gamma: float = 1.0, lam: float = 0.95):
        if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
            raise ValueError(f"gae needs 0 <= gamma, lam <= 1; got gamma={gamma}, lam={lam}")
        self.gamma, self.lam = gamma, lam

    def token_advantages(
        self, token_rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if values is None:
            raise ValueError("gae needs the critic's values")
        return gae(token_rewards, values, mask, self.gamma, self.lam)

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return token_mean_aggregate(per_token_loss, mask, ctx)


class ReinforcePlusPlusEstimator:
    """REINFORCE++ (Hu 2025): A_t = Σ_l γ^l r_{t+l} of the per-token rewards (KL in the reward), no critic; the
    trainer's global whitening (``whiten_advantages``, on by default) is the method's normalization.

    Args:
        gamma: discount γ.
    """

    needs_critic = False

    def __init__(self, gamma: float = 1.0):
        self.gamma = gamma

    def token_advantages(
        self, token_rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        returns = discounted_sum(token_rewards, mask, self.gamma)
        return returns, returns

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return token_mean_aggregate(per_token_loss, mask, ctx)
