"""The rollout pipeline's arithmetic: rewards per completion from the reward matrix, advantages checked against the
normalizer's contract, the value the advantage step returns, the rollout correction's loss inputs, and the rollout
statistics logged over processes.
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..framework.errors import ComponentContractError
from ..framework.ops import nanstd
from ..framework.plugins import ZRLPluginManager
from ..framework.protocols import ObservesMismatch
from ..framework.rollout_correction import checked_correction, mismatch_stats
from .batch import loss_mask
from .components import Selected, call_plugin


@dataclass(frozen=True)
class RewardRule:
    """How TRL combines the reward functions into one reward per completion, plus Dr. GRPO's truncation rule."""

    weights: torch.Tensor  # one per reward function
    multi_objective_aggregation: str  # `sum_then_normalize` or `normalize_then_sum`
    truncated_reward: float | None = None

    def rewards(self, rewards_per_func: torch.Tensor, truncated: torch.Tensor, group_size: int) -> torch.Tensor:
        """Weighted sum (``sum_then_normalize``) or weighted sum of each function's group-normalized rewards
        (``normalize_then_sum``); NaN where every function said None; then ``truncated_reward`` on truncated rows."""
        weights = self.weights.to(rewards_per_func.device).unsqueeze(0)
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        if self.multi_objective_aggregation == "normalize_then_sum":
            grouped = rewards_per_func.view(-1, group_size, rewards_per_func.size(1))
            mean = torch.nanmean(grouped, dim=1, keepdim=True)
            std = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
            rewards_per_func = ((grouped - mean) / (std + 1e-4)).view(-1, rewards_per_func.size(1))
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[unscorable] = torch.nan
        if self.truncated_reward is not None:
            rewards[truncated] = self.truncated_reward
        return rewards


@dataclass(frozen=True)
class Advantages:
    """What the advantage step returns for one rollout batch."""

    local: torch.Tensor  # this process's rows: B (one per completion) or B x T (per token)
    logged: torch.Tensor  # one per completion of the global batch, for TRL's completions table
    rewards: torch.Tensor  # the global rewards they came from (a reward-placed KL subtracted), as observers see them
    columns: dict[str, torch.Tensor] = field(default_factory=dict)  # further loss inputs (PPO: values, returns, π_old)


def process_rows(rows: int, process_index: int) -> slice:
    """This process's rows of a gathered (global) per-completion tensor."""
    return slice(process_index * rows, (process_index + 1) * rows)


def sequence_advantages(
    pm: ZRLPluginManager, normalizer: Selected, rewards: torch.Tensor, group_size: int, mode: str
) -> torch.Tensor:
    """The normalizer's advantages of the global batch, checked: one finite value per completion."""
    if mode == "eval" and group_size < 2:  # a group of one has no relative advantage (TRL's are 0 too)
        return torch.zeros_like(rewards)
    advantages = call_plugin(pm, normalizer, "advantages", rewards, group_size)
    if not isinstance(advantages, torch.Tensor) or advantages.shape != rewards.shape:
        shape = tuple(advantages.shape) if isinstance(advantages, torch.Tensor) else type(advantages).__name__
        raise ComponentContractError(
            f"normalizer {normalizer.name!r} returned advantages of shape {shape} for {rewards.numel()} rewards; "
            f"expected ({rewards.numel()},), one per completion. No optimizer step was taken."
        )
    if not torch.isfinite(advantages).all():
        bad = (~torch.isfinite(advantages)).nonzero().flatten()[:8].tolist()
        raise ComponentContractError(
            f"normalizer {normalizer.name!r} returned NaN or infinite advantages (rows {bad}, rewards there: "
            f"{rewards[bad].tolist()}); unscorable rows must get advantage 0. No optimizer step was taken."
        )
    return advantages


def correct_rollout(
    pm: ZRLPluginManager,
    correction: Selected,
    rollout: Selected,
    output: dict[str, Any],
    gather: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The rollout correction of a batch whose behaviour policy reported log-probs: the columns it adds to TRL's
    batch — its weights as ``importance_sampling_ratio`` (the loss multiplies by them), its rejections as
    ``rollout_correction_mask`` (multiplied into the loss mask), the loss tokens recounted over all processes — and
    the mismatch statistics, which a rollout strategy that observes them receives too."""
    old, behaviour, mask = output["old_per_token_logps"], output["sampling_per_token_logps"], loss_mask(output)
    out = call_plugin(pm, correction, "__call__", old, behaviour, mask)
    weights, rejection = checked_correction(correction.name, out, old, mask)
    columns = {"importance_sampling_ratio": weights}
    if rejection is not None:
        columns["rollout_correction_mask"] = rejection
    # recounted on every process alike (one process may reject nothing while another does)
    kept = mask if rejection is None else mask * rejection
    columns["num_items_in_batch"] = gather(kept.sum()).sum()
    stats = mismatch_stats(old, behaviour, mask, weights, rejection)
    stats.update({f"rollout/{key}": value for key, value in out.metrics.items()})
    if isinstance(rollout.component, ObservesMismatch):
        call_plugin(pm, rollout, "observe_mismatch", stats)
    return columns, stats


def replace_tail(logged: MutableSequence[float], values: torch.Tensor) -> None:
    """Replace the last ``len(values)`` entries of TRL's logged advantages (its own, of its normalizer) with the
    ones trained on, so its completions table shows what is trained on."""
    for _ in range(min(len(values), len(logged))):
        logged.pop()
    logged.extend(values.tolist())


def rollout_stats(
    stats: dict[str, float], gather: Callable[[torch.Tensor], torch.Tensor], device: Any, prefix: str = "rollout/"
) -> dict:
    """Statistics of this process over all processes (min of ``*min*``, max of ``*max*``, else mean), named
    ``prefix + name``."""
    names = sorted(stats)
    if not names:
        return {}
    gathered = gather(torch.tensor([stats[k] for k in names], device=device)).view(-1, len(names))
    metrics = {}
    for i, name in enumerate(names):
        column = gathered[:, i]
        value = column.min() if "min" in name else column.max() if "max" in name else column.mean()
        metrics[f"{prefix}{name}"] = value.item()
    return metrics


def rollout_batch_view(
    batch: Any,
    output: dict[str, Any],
    completions: list[str],
    rewards: torch.Tensor,
    rewards_per_func: torch.Tensor,
    reward_func_names: list[str],
    step: int,
) -> dict[str, Any]:
    """What ``zrl_on_rollout_batch`` observers get: this process's rows, the global rewards, the advantages used."""
    return {
        "prompts": [x.get("prompt") for x in batch.inputs],
        "completions": completions,
        "rewards": rewards.detach(),
        "rewards_per_func": rewards_per_func.detach(),
        "reward_func_names": reward_func_names,
        "advantages": output["advantages"].detach(),
        "completion_ids": output["completion_ids"],
        "completion_mask": output["completion_mask"],
        "mode": batch.mode,
        "step": step,
    }
