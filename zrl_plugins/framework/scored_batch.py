"""The value that moves through the trainer's rollout pipeline: one scored rollout batch.

``ZRLGRPOTrainer._generate_and_score_completions`` is a straight pipeline over it — score → group filter → reward
shaping → advantages → observers — with no state handed from one method to the next through attributes. The only
seam into TRL is :func:`capturing_scores`: TRL computes the rewards inside its own generation-and-scoring method
and keeps them; the trainer's ``_calculate_rewards`` override reports them to the capture that is open around that
call (a context variable, so nothing outlives the call).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .group_filter import ROW_KEYS, swap_rows


@dataclass
class ScoredBatch:
    """One rollout batch after generation and scoring: this process's rows of TRL's batch, the global rewards.

    Attributes:
        inputs: this process's data set rows (one per completion).
        output: TRL's batch dict (``prompt_ids``, ``completion_ids``, masks, log-probs, ...) for these rows.
        rewards_per_func: the reward matrix of every process's rows, as TRL gathers it (rows x reward functions;
            NaN = not scored); ``local_rewards_per_func`` are this process's rows.
        truncated: every process's rows: completion ended without EOS (TRL's definition); ``local_truncated``.
        mode: ``"train"`` or ``"eval"``; group_size: completions per prompt.
        local: this process's rows of the global tensors.
    """

    inputs: list[dict[str, Any]]
    output: dict[str, Any]
    rewards_per_func: torch.Tensor
    truncated: torch.Tensor
    mode: str
    group_size: int
    local: slice

    @property
    def rows(self) -> int:
        return len(self.inputs)

    @property
    def groups(self) -> int:
        return self.rows // self.group_size

    @property
    def local_rewards_per_func(self) -> torch.Tensor:
        return self.rewards_per_func[self.local]

    @property
    def local_truncated(self) -> torch.Tensor:
        return self.truncated[self.local]

    def replace_groups(self, fresh: ScoredBatch, targets: Sequence[int], sources: Sequence[int]) -> ScoredBatch:
        """This batch with group ``targets[k]`` replaced by ``fresh``'s group ``sources[k]`` (rows, TRL tensors,
        rewards and truncation alike). Only this process's rows change: :meth:`synced` shares them afterwards."""
        size = self.group_size
        order = torch.arange(self.rows)
        take = torch.zeros(self.rows, dtype=torch.bool)
        for target, source in zip(targets, sources, strict=True):
            order[target * size : (target + 1) * size] = torch.arange(source * size, (source + 1) * size)
            take[target * size : (target + 1) * size] = True
        device = self.rewards_per_func.device
        donor = {k: v[order.to(v.device)] for k, v in fresh.output.items() if k in ROW_KEYS}
        output = {**self.output, **swap_rows(self.output, donor, take.to(self.output["completion_ids"].device))}
        inputs = [fresh.inputs[j] if t else row for row, j, t in zip(self.inputs, order.tolist(), take.tolist())]
        rows, fresh_rows = take.to(device), order.to(device)
        per_func = torch.where(rows.unsqueeze(1), fresh.local_rewards_per_func[fresh_rows], self.local_rewards_per_func)
        truncated = torch.where(rows, fresh.local_truncated[fresh_rows], self.local_truncated)
        return self._with_local(per_func, truncated, inputs=inputs, output=output)

    def drop_groups(self, keep: torch.Tensor) -> ScoredBatch:
        """This batch with the groups where ``keep`` is False left out of the loss (completion mask 0) and of every
        reward statistic (rewards NaN = unscorable). ``num_items_in_batch`` must be recounted afterwards."""
        dropped = (~keep.bool().cpu()).repeat_interleave(self.group_size)
        device = self.rewards_per_func.device
        per_func = self.local_rewards_per_func.clone()
        per_func[dropped.to(device)] = torch.nan
        truncated = self.local_truncated.clone()
        truncated[dropped.to(device)] = False
        mask = self.output["completion_mask"]
        output = {**self.output, "completion_mask": mask * (~dropped).to(mask.device, mask.dtype).unsqueeze(1)}
        return self._with_local(per_func, truncated, output=output)

    def synced(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> ScoredBatch:
        """This batch with the global rewards and truncation rebuilt from every process's rows (a collective call:
        after a group filter changed rows on some processes)."""
        per_func, truncated = gather(self.local_rewards_per_func), gather(self.local_truncated)
        return dataclasses.replace(self, rewards_per_func=per_func, truncated=truncated)

    def _with_local(self, per_func: torch.Tensor, truncated: torch.Tensor, **changes: Any) -> ScoredBatch:
        """A copy whose own rows of the global rewards and truncation are ``per_func`` and ``truncated``."""
        all_per_func, all_truncated = self.rewards_per_func.clone(), self.truncated.clone()
        all_per_func[self.local], all_truncated[self.local] = per_func, truncated
        return dataclasses.replace(self, rewards_per_func=all_per_func, truncated=all_truncated, **changes)


@dataclass
class RefillContext:
    """What the core gives a group-filtering rollout strategy (:class:`~zrl_plugins.sdk.GroupFilter`).

    Attributes:
        score_more: generate and score completions for these data set rows (one per completion, grouped) on this
            process; a collective call — every process must make the same number of calls.
        group_rewards: the rewards this process's groups of a batch are judged on: reward functions weighted and
            summed, Dr. GRPO's truncation rule applied; ``groups x group_size``.
        any_process: whether ``flag`` holds on any process (collective).
        dataset: the training data set (rows by index); process_index: this process's rank.
    """

    score_more: Callable[[list[dict[str, Any]]], ScoredBatch]
    group_rewards: Callable[[ScoredBatch], torch.Tensor]
    any_process: Callable[[bool], bool]
    dataset: Any
    process_index: int


@dataclass
class ScoreCapture:
    """Filled by the trainer's ``_calculate_rewards`` while TRL scores a batch (global rows, as TRL gathers them)."""

    rewards_per_func: torch.Tensor | None = None
    truncated: list[bool] = field(default_factory=list)


_CAPTURE: contextvars.ContextVar[ScoreCapture | None] = contextvars.ContextVar("zrl_score_capture", default=None)


@contextlib.contextmanager
def capturing_scores() -> Iterator[ScoreCapture]:
    """Open a capture for the rewards TRL computes inside the block."""
    capture = ScoreCapture()
    token = _CAPTURE.set(capture)
    try:
        yield capture
    finally:
        _CAPTURE.reset(token)


def report_scores(rewards_per_func: torch.Tensor, truncated: list[bool]) -> None:
    """Called from ``_calculate_rewards``: hand TRL's reward matrix to the open capture (if any)."""
    capture = _CAPTURE.get()
    if capture is not None:
        capture.rewards_per_func, capture.truncated = rewards_per_func, truncated
