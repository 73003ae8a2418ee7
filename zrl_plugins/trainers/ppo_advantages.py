"""PPO's advantage arithmetic as functions: per-token rewards, the estimator's contract, whitening and clipping over
the global batch, and the critic's metrics (docs/methods.md#ppo)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..framework.errors import ComponentContractError

ReduceSum = Callable[[torch.Tensor], torch.Tensor]


def last_token_rewards(scores: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """B x T rewards: each row's (scaled) score at its last completion token, 0 elsewhere."""
    token_rewards = torch.zeros_like(completion_mask)
    last = (completion_mask.sum(-1).long() - 1).clamp(min=0)
    token_rewards[torch.arange(len(last), device=last.device), last] = scores.to(token_rewards.dtype)
    return token_rewards


def check_token_advantages(name: str, shape: torch.Size, advantages: object, returns: object) -> None:
    """An estimator returns finite advantages and returns of the token rewards' shape."""
    for label, x in (("advantages", advantages), ("returns", returns)):
        if not isinstance(x, torch.Tensor) or x.shape != shape or not torch.isfinite(x).all():
            raise ComponentContractError(
                f"advantage_estimator {name!r}.token_advantages must return finite {label} of shape "
                f"{tuple(shape)}; got {tuple(x.shape) if isinstance(x, torch.Tensor) else x!r}. "
                "No optimizer step was taken."
            )


def global_moments(x: torch.Tensor, mask: torch.Tensor, reduce_sum: ReduceSum) -> tuple[float, float]:
    """Mean and (population) variance of ``x`` over the masked tokens of every process."""
    x, mask = x.detach().double(), mask.double()
    totals = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()])
    total, squares, count = reduce_sum(totals).tolist()
    count = max(count, 1.0)
    mean = total / count
    return mean, max(squares / count - mean * mean, 0.0)


def whitened_and_clipped(
    advantages: torch.Tensor, mask: torch.Tensor, whiten: bool, clip: float | None, reduce_sum: ReduceSum
) -> torch.Tensor:
    """Whitened over the masked tokens of the global batch (variance + 1e-6), then clipped to ±``clip``."""
    if whiten:
        mean, var = global_moments(advantages, mask, reduce_sum)
        advantages = (advantages - mean) / math.sqrt(var + 1e-6)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages


def critic_metrics(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reduce_sum: ReduceSum
) -> dict[str, float]:
    """Explained variance 1 − Var(R − V) / Var(R) (left out when every return is equal, e.g. all rewards 0 on the
    first step), and the mean value and return."""
    residual_var = global_moments(returns - values, mask, reduce_sum)[1]
    return_mean, return_var = global_moments(returns, mask, reduce_sum)
    metrics = {}
    if return_var > 1e-8:
        metrics["critic/explained_variance"] = 1.0 - residual_var / return_var
    metrics["critic/value_mean"] = global_moments(values, mask, reduce_sum)[0]
    metrics["critic/return_mean"] = return_mean
    return metrics
