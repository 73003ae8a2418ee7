"""Row surgery for group-filtering rollout strategies (DAPO's dynamic sampling): which groups carry no signal, and
how to swap groups between two scored rollout batches of this process."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

LEFT_PADDED = ("prompt_ids", "prompt_mask")  # TRL pads prompts on the left, completions on the right
ROW_KEYS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "tool_mask",
    "old_per_token_logps",
    "sampling_per_token_logps",
    "ref_per_token_logps",
    "importance_sampling_ratio",
    "advantages",
    "rollout_correction_mask",
)


def uninformative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """One bool per group: every scorable reward equal (or none scorable), so every advantage would be 0."""
    grouped = rewards.view(-1, group_size)
    scorable = ~torch.isnan(grouped)
    filled_max = torch.where(scorable, grouped, torch.full_like(grouped, -torch.inf)).max(dim=1).values
    filled_min = torch.where(scorable, grouped, torch.full_like(grouped, torch.inf)).min(dim=1).values
    return (scorable.sum(dim=1) < 2) | (filled_max == filled_min)


def _pad_to(x: torch.Tensor, length: int, left: bool) -> torch.Tensor:
    missing = length - x.size(1)
    if missing <= 0:
        return x
    return F.pad(x, (missing, 0) if left else (0, missing), value=0)


def swap_rows(base: dict[str, Any], donor: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """``base`` with the rows where ``rows`` is True taken from ``donor`` (same batch size); sequence tensors are
    padded to the longer of the two (prompts on the left, completions on the right)."""
    unsupported = sorted(k for k in base if k not in ROW_KEYS and k != "num_items_in_batch")
    if unsupported:
        raise NotImplementedError(
            f"dynamic sampling cannot merge rollout batches with {unsupported} (multimodal or "
            "tool outputs); use it with text-only data"
        )
    merged: dict[str, Any] = {}
    for key in ROW_KEYS:
        if key not in base:
            continue
        a, b = base[key], donor[key]
        if a.dim() == 2 and a.size(1) != b.size(1):
            length = max(a.size(1), b.size(1))
            a, b = _pad_to(a, length, key in LEFT_PADDED), _pad_to(b, length, key in LEFT_PADDED)
        mask = rows.view(-1, *([1] * (a.dim() - 1)))
        merged[key] = torch.where(mask, b, a)
    return merged
