"""TRL's vLLM importance-sampling options, translated into the ``rollout_correction`` component.

==========================================  =====================================================================
TRL option                                  zrl
==========================================  =====================================================================
vllm_importance_sampling_correction=False   ``rollout_correction="none"``
vllm_importance_sampling_mode=<mode>        ``rollout_correction=<mode>`` (token_truncate, token_mask,
                                            sequence_truncate, sequence_mask: TRL's arithmetic, tested equal)
vllm_importance_sampling_clip_min/max       ``rollout_correction_kwargs`` ``clip_min`` / ``clip_max`` of those modes
==========================================  =====================================================================

TRL applies these options with vLLM only; so does zrl. Unset, a vLLM run gets TRL's defaults (``sequence_mask`` with
``clip_max=3``); any other run leaves the choice to the trainer (``token_tis`` for an off-policy rollout strategy,
``none`` otherwise). An explicit ``rollout_correction`` that contradicts an explicit TRL option is an error naming
both. TRL's own computation of the ratio is switched off in the trainer: one mechanism corrects every behaviour
policy.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..builtins.corrections import TRL_MODES
from ..framework.errors import ConfigError

TRL_DEFAULT_MODE = "sequence_mask"


def resolve_rollout_correction(config: Any) -> None:
    """Fill ``rollout_correction`` / ``rollout_correction_kwargs`` from TRL's options (or check them against an
    explicit choice), then set TRL's fields to the equivalent values."""
    name, kwargs = config.rollout_correction, config.rollout_correction_kwargs
    enabled, mode = config.vllm_importance_sampling_correction, config.vllm_importance_sampling_mode
    if mode is not None and mode not in TRL_MODES:
        raise ConfigError(f"vllm_importance_sampling_mode must be one of {list(TRL_MODES)}, got {mode!r}")
    trl_name = "none" if enabled is False else mode or TRL_DEFAULT_MODE
    if enabled is False and mode is not None:
        raise ConfigError(
            f"vllm_importance_sampling_mode={mode!r} has no effect with vllm_importance_sampling_correction=False; "
            "drop one of them."
        )
    if name is not None and ((enabled is False and name != "none") or (mode is not None and name != mode)):
        explicit = "vllm_importance_sampling_correction=False" if enabled is False else f"{trl_name!r} (TRL's options)"
        raise ConfigError(
            f"rollout_correction={name!r} contradicts {explicit}; drop the TRL option, or set "
            f"rollout_correction={trl_name!r} alone."
        )
    if name is None and kwargs:
        raise ConfigError(
            f"rollout_correction_kwargs {sorted(kwargs)} given without rollout_correction; name the correction."
        )
    if name is None and config.use_vllm:
        name = trl_name
    if name in TRL_MODES:
        _clip_bounds(config, kwargs)
    config.rollout_correction = name
    # TRL's fields now say what runs (TRL reads them at construction, e.g. to check VESPO's mode)
    config.vllm_importance_sampling_correction = name not in (None, "none")
    config.vllm_importance_sampling_mode = name if name in TRL_MODES else None


def _clip_bounds(config: Any, kwargs: dict[str, Any]) -> None:
    """TRL's clip fields are the bounds of TRL's modes unless ``rollout_correction_kwargs`` sets them; a kwarg that
    contradicts a TRL field set away from TRL's default is an error."""
    trl_defaults = {"clip_min": None, "clip_max": 3.0}
    for key, default in trl_defaults.items():
        trl_value = getattr(config, f"vllm_importance_sampling_{key}")
        if key not in kwargs:
            kwargs[key] = trl_value
        elif trl_value != default and kwargs[key] != trl_value:
            raise ConfigError(
                f"rollout_correction_kwargs {key}={kwargs[key]} contradicts vllm_importance_sampling_{key}="
                f"{trl_value}; drop one of them."
            )


def truncated_support(config: Any) -> list[str]:
    """The sampling options that restrict vLLM's sampling to part of the vocabulary (top_k, top_p, min_p)."""
    restricting = []
    if config.top_k not in (None, 0, -1):
        restricting.append(f"top_k={config.top_k}")
    if config.top_p is not None and config.top_p < 1.0:
        restricting.append(f"top_p={config.top_p}")
    if config.min_p:
        restricting.append(f"min_p={config.min_p}")
    return restricting


def warn_truncated_support(config: Any, correction: str) -> None:
    """vLLM returns log-probs renormalized over the kept tokens (log p − log S, S the kept probability mass) while
    π_old is the full-vocabulary softmax, so every token ratio is multiplied by S (trl#6789, fixed in TRL 1.17 by
    renormalizing π_old over the same support). zrl does not renormalize: it warns."""
    restricting = truncated_support(config)
    if not (config.use_vllm and correction != "none" and restricting):
        return
    warnings.warn(
        f"{', '.join(restricting)} with vLLM: vLLM's log-probs are renormalized over the kept tokens, so each token's "
        "ratio pi_old / pi_behaviour carries the factor S, the kept probability mass (log S per token: measured "
        "mean S 0.90 at top_p=0.9 and 0.18 at top_k=50 on the tiny test model, bench/results/truncated_support.md), "
        f"and rollout_correction {correction!r} treats that bias as mismatch. zrl does not renormalize pi_old over "
        "the kept tokens as TRL 1.17 does: sample without top_k / top_p / min_p, or set rollout_correction='none' "
        "(docs/methods.md#rollout-correction).",
        stacklevel=3,
    )
