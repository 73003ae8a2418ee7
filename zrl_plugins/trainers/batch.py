"""Views of TRL's batch dict that several parts of the trainers need, written once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# The multimodal inputs TRL's forward takes, when the batch has them
MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def loss_mask(batch: Mapping[str, Any]) -> torch.Tensor:
    """The completion tokens the loss counts (B x T): TRL's completion mask less tool-output tokens, when any."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


def sequences(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + completion token ids and their attention mask, as the model reads them (B x (P + T) each)."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    return input_ids, attention_mask


def mode_of(model: torch.nn.Module) -> str:
    """TRL's metrics key for the phase the model is in: ``"train"`` or ``"eval"``."""
    return "train" if model.training else "eval"
