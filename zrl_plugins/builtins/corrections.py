"""The core's rollout corrections (docs/methods.md#rollout-correction): TRL's four vLLM importance-sampling modes,
truncated importance sampling (TIS) per token or per sequence, and ``none``."""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..framework.protocols import CorrectionOutput
from ..framework.rollout_correction import sequence_log_ratio, token_log_ratio

TRLMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
TRL_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


LOG_FLOAT32_MAX = 88.0  # exp(88) ≈ 1.65e38 < float32's 3.4e38


def finite_exp(log_ratio: torch.Tensor) -> torch.Tensor:
    """exp of a log ratio, finite for any input: a behaviour log-prob of -inf (which vLLM returns) or one far below
    π_old's gives +inf, clamped to float32's range (identical to exp below it)."""
    return torch.exp(log_ratio.clamp(max=LOG_FLOAT32_MAX))


class NoCorrection:
    """``none``: weight 1 everywhere (the biased baseline); the mismatch is still measured and logged."""

    def __call__(self, old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor) -> CorrectionOutput:
        return CorrectionOutput(weights=torch.ones_like(old_logps[:, :1], dtype=torch.float))


class TRLCorrection:
    """TRL's ``vllm_importance_sampling_mode``: the ratio π_old / π_behaviour per token, or per sequence as the product
    of the token ratios, then truncated into [clip_min, clip_max] (``*_truncate``) or set to 0 outside it
    (``*_mask``; the token stays in the loss's denominator, as in TRL). Defaults are TRL's."""

    def __init__(self, mode: TRLMode, clip_min: float | None = None, clip_max: float | None = 3.0):
        if mode not in TRL_MODES:
            raise ValueError(f"mode must be one of {TRL_MODES}, got {mode!r}")
        if mode.endswith("truncate") and clip_min is None and clip_max is None:
            raise ValueError(f"{mode} needs clip_min or clip_max (TRL truncates into [clip_min, clip_max])")
        if clip_min is not None and clip_max is not None and clip_min > clip_max:
            raise ValueError(f"clip_min ({clip_min}) must not exceed clip_max ({clip_max})")
        self.mode, self.clip_min, self.clip_max = mode, clip_min, clip_max

    def __call__(self, old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor) -> CorrectionOutput:
        log_ratio = token_log_ratio(old_logps, behaviour_logps, mask)
        if self.mode.startswith("sequence"):
            log_ratio = log_ratio.sum(-1, keepdim=True)
        ratio = finite_exp(log_ratio)
        if self.mode.endswith("truncate"):
            return CorrectionOutput(weights=torch.clamp(ratio, min=self.clip_min, max=self.clip_max))
        low = -math.inf if self.clip_min is None else self.clip_min
        high = math.inf if self.clip_max is None else self.clip_max
        return CorrectionOutput(weights=ratio.masked_fill((ratio < low) | (ratio > high), 0.0))


def trl_mode(mode: TRLMode):
    """The factory registered for one of TRL's modes (the mode is the component's name)."""

    def factory(clip_min: float | None = None, clip_max: float | None = 3.0) -> TRLCorrection:
        return TRLCorrection(mode, clip_min=clip_min, clip_max=clip_max)

    factory.__name__ = f"{mode}_correction"
    factory.__doc__ = f"TRL's vllm_importance_sampling_mode={mode!r}."
    return factory


class TruncatedIS:
    """Truncated importance sampling (TIS): w = min(π_old / π_behaviour, C) per token (``token_tis``), or per sequence
    on the geometric mean of the token ratios, exp(mean_t log ratio) (``seq_tis``), which keeps the weight of a long
    sequence on the scale of a token's. Metric ``is_truncated_fraction``: weights (tokens or sequences) above C."""

    def __init__(self, level: Literal["token", "sequence"], clip: float = 2.0):
        if level not in ("token", "sequence"):
            raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
        if not clip > 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.level, self.clip = level, clip

    def __call__(self, old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor) -> CorrectionOutput:
        mask = mask.float()
        log_ratio = token_log_ratio(old_logps, behaviour_logps, mask)
        if self.level == "sequence":
            raw = finite_exp(sequence_log_ratio(log_ratio, mask, mean=True))
            valid = mask.sum(-1, keepdim=True) > 0
        else:
            raw = finite_exp(log_ratio)
            valid = mask > 0
        values = raw[valid]
        truncated = (values > self.clip).float().mean().item() if values.numel() else 0.0
        return CorrectionOutput(weights=torch.clamp(raw, max=self.clip), metrics={"is_truncated_fraction": truncated})


def token_tis(clip: float = 2.0) -> TruncatedIS:
    """Per-token truncated importance sampling, w = min(ratio, clip)."""
    return TruncatedIS("token", clip)


def seq_tis(clip: float = 2.0) -> TruncatedIS:
    """Per-sequence truncated importance sampling on the geometric-mean ratio."""
    return TruncatedIS("sequence", clip)
