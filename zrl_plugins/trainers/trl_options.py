"""TRL's ``loss_type``, ``scale_rewards`` and ``importance_sampling_level``, translated into zrl components.

A TRL option that zrl accepts keeps its meaning: at config time it becomes the components that compute exactly what
TRL computes (tested against TRL for every loss type × scale_rewards), and an explicit zrl choice that contradicts it
is an error naming both.

==================  ==========================================================================================
TRL option          zrl components
==================  ==========================================================================================
scale_rewards       ``group`` → normalizer ``grpo``; ``none`` → ``dr_grpo``; ``batch`` → ``lite_ppo`` (advantages)
loss_type           policy loss + the normalizer's aggregation: grpo → clip + sequence_mean; bnpo → clip +
                    batch_token_mean; dr_grpo → clip + constant; dapo → clip + token_mean; luspo → luspo +
                    sequence_sum; cispo → cispo + token_mean; sapo → sapo + sequence_mean; vespo → vespo +
                    token_mean
importance_sampling policy loss argument ``importance_sampling_level`` (token, or sequence = GSPO)
_level
==================  ==========================================================================================

Unset on both sides, a config gets TRL's defaults (``loss_type="dapo"``, ``scale_rewards="group"``): ``ZRLConfig()``
trains what ``GRPOConfig()`` trains. Naming a ``normalizer`` alone keeps that normalizer's own aggregation.
"""

from __future__ import annotations

from typing import Any

from ..framework.errors import ConfigError

TRL_DEFAULTS = {"loss_type": "dapo", "scale_rewards": "group", "importance_sampling_level": "token"}
LOSS_TYPES = {  # loss_type → (policy loss, aggregation)
    "grpo": ("clip", "sequence_mean"),
    "bnpo": ("clip", "batch_token_mean"),
    "dr_grpo": ("clip", "constant"),
    "dapo": ("clip", "token_mean"),
    "luspo": ("luspo", "sequence_sum"),
    "cispo": ("cispo", "token_mean"),
    "sapo": ("sapo", "sequence_mean"),
    "vespo": ("vespo", "token_mean"),
}
SCALE_NORMALIZERS = {"group": "grpo", "none": "dr_grpo", "batch": "lite_ppo"}
# normalizer → (the scale_rewards its advantages equal, or None; its own aggregation)
NORMALIZERS = {
    "grpo": ("group", "sequence_mean"),
    "dr_grpo": ("none", "constant"),
    "lite_ppo": ("batch", "token_mean"),
    "rloo": (None, "token_mean"),
    "batch": (None, "token_mean"),
    "none": (None, "token_mean"),
}
AGGREGATION_LOSS_TYPE = {
    "sequence_mean": "grpo",
    "batch_token_mean": "bnpo",
    "constant": "dr_grpo",
    "token_mean": "dapo",
    "sequence_sum": "luspo",
}
POLICY_LOSS_PLUGINS = {"cispo": "zrl-losses", "sapo": "zrl-losses", "luspo": "zrl-losses", "vespo": "zrl-losses"}


def _scale(value: Any) -> str | None:
    return {True: "group", False: "none"}.get(value, value)


def resolve(config: Any, per_token_advantages: bool = False) -> None:
    """Fill ``config.normalizer`` / ``normalizer_kwargs["aggregation"]`` / ``policy_loss`` / ``policy_loss_kwargs``
    from TRL's options (or check them against explicit choices), then set TRL's fields to the equivalent values."""
    loss_type, scale = config.loss_type, _scale(config.scale_rewards)
    if loss_type is not None and loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss_type must be one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
    if scale is not None and scale not in SCALE_NORMALIZERS:
        raise ConfigError(f"scale_rewards must be one of {sorted(SCALE_NORMALIZERS)}, got {config.scale_rewards!r}")
    if per_token_advantages:  # PPO: advantages from a critic, aggregation from the per-token estimator
        if loss_type is not None or scale is not None:
            raise ConfigError(
                f"ZRLPPOTrainer takes its advantages from the per-token `advantage_estimator` "
                f"({config.advantage_estimator!r}) and its loss from `policy_loss`: loss_type / scale_rewards do not "
                "apply; drop them (or use ZRLGRPOTrainer, where they select TRL's GRPO variants)."
            )
        config.policy_loss = config.policy_loss or "clip"
    if getattr(config, "multi_objective_aggregation", "sum_then_normalize") == "normalize_then_sum":
        _normalize_then_sum(config, scale, per_token_advantages)
        scale = None  # TRL ignores scale_rewards here: its advantages are the batch-normalized sum
    from_trl = not per_token_advantages and (config.normalizer is None or loss_type is not None)
    if not per_token_advantages and config.normalizer is None:
        _from_trl(config, loss_type or TRL_DEFAULTS["loss_type"], scale or TRL_DEFAULTS["scale_rewards"])
    elif not per_token_advantages:
        _check_against_normalizer(config, loss_type, scale)
    _resolve_level(config, from_trl)
    aggregation = config.normalizer_kwargs.get("aggregation") or NORMALIZERS.get(config.normalizer, (None, None))[1]
    config.loss_type = loss_type or AGGREGATION_LOSS_TYPE.get(aggregation, TRL_DEFAULTS["loss_type"])
    config.scale_rewards = scale or NORMALIZERS.get(config.normalizer, (None,))[0] or TRL_DEFAULTS["scale_rewards"]


def _from_trl(config: Any, loss_type: str, scale: str) -> None:
    policy_loss, aggregation = LOSS_TYPES[loss_type]
    config.normalizer = SCALE_NORMALIZERS[scale]
    chosen = config.normalizer_kwargs.get("aggregation")
    if chosen is not None and chosen != aggregation:
        raise ConfigError(
            f"normalizer_kwargs aggregation={chosen!r} contradicts loss_type={loss_type!r} (aggregation "
            f"{aggregation!r}); drop one of them."
        )
    config.normalizer_kwargs["aggregation"] = aggregation
    _set_policy_loss(config, policy_loss, f"loss_type={loss_type!r}")


def _check_against_normalizer(config: Any, loss_type: str | None, scale: str | None) -> None:
    name = config.normalizer
    own_scale, own_aggregation = NORMALIZERS.get(name, (None, None))
    if scale is not None and scale != own_scale:
        if own_scale is None:
            raise ConfigError(
                f"scale_rewards={scale!r} chooses TRL's advantage formula, but normalizer={name!r} has its own; set "
                f"one of them (scale_rewards={scale!r} alone selects normalizer {SCALE_NORMALIZERS[scale]!r})."
            )
        raise ConfigError(
            f"normalizer={name!r} computes its advantages as TRL's scale_rewards={own_scale!r}, which contradicts "
            f"scale_rewards={scale!r}; use normalizer={SCALE_NORMALIZERS[scale]!r}, or drop scale_rewards."
        )
    if loss_type is None:
        config.policy_loss = config.policy_loss or "clip"
        return
    policy_loss, aggregation = LOSS_TYPES[loss_type]
    chosen = config.normalizer_kwargs.get("aggregation", own_aggregation)
    if chosen != aggregation:
        where = "normalizer_kwargs aggregation" if "aggregation" in config.normalizer_kwargs else "its aggregation"
        raise ConfigError(
            f"normalizer={name!r} ({where} {chosen!r}) contradicts loss_type={loss_type!r}, which aggregates with "
            f"{aggregation!r}; set normalizer_kwargs={{'aggregation': '{aggregation}'}} to combine them, or drop "
            "loss_type."
        )
    config.normalizer_kwargs["aggregation"] = aggregation
    _set_policy_loss(config, policy_loss, f"loss_type={loss_type!r}")


def _set_policy_loss(config: Any, policy_loss: str, because: str) -> None:
    if config.policy_loss is not None and config.policy_loss != policy_loss:
        raise ConfigError(
            f"policy_loss={config.policy_loss!r} contradicts {because}, whose policy loss is {policy_loss!r}; drop "
            "one of them."
        )
    config.policy_loss = policy_loss


def _resolve_level(config: Any, from_trl: bool) -> None:
    """TRL's importance_sampling_level becomes the policy loss's argument: explicit, or TRL's default ``token`` when
    the loss came from TRL's options; a policy loss chosen by name alone keeps its own default (``None`` here)."""
    level = config.importance_sampling_level
    chosen = config.policy_loss_kwargs.get("importance_sampling_level")
    if level is not None and chosen is not None and chosen != level:
        raise ConfigError(
            f"policy_loss_kwargs importance_sampling_level={chosen!r} contradicts importance_sampling_level="
            f"{level!r}; drop one of them."
        )
    if level is None and chosen is None and from_trl:
        level = TRL_DEFAULTS["importance_sampling_level"]
    config.importance_sampling_level = level or chosen


def _normalize_then_sum(config: Any, scale: str | None, per_token_advantages: bool) -> None:
    """TRL's ``multi_objective_aggregation="normalize_then_sum"`` (GDPO): each reward function is normalized
    within its group before the weighted sum (the trainer's reward shaping), and the advantages are the sum
    normalized over the batch — the normalizer ``batch``, whatever ``scale_rewards`` says."""
    if per_token_advantages:
        raise ConfigError("multi_objective_aggregation='normalize_then_sum' is a GRPO option; ZRLPPOTrainer sums.")
    if scale is not None:
        raise ConfigError(
            f"scale_rewards={scale!r} has no effect with multi_objective_aggregation='normalize_then_sum' (TRL "
            "normalizes the summed rewards over the batch); drop scale_rewards."
        )
    if config.normalizer not in (None, "batch"):
        raise ConfigError(
            f"normalizer={config.normalizer!r} contradicts multi_objective_aggregation='normalize_then_sum', whose "
            "advantages are the batch-normalized sum (normalizer 'batch'); drop one of them."
        )
    if config.normalizer is None:
        config.normalizer = "batch"
        loss_type = config.loss_type or TRL_DEFAULTS["loss_type"]
        policy_loss, aggregation = LOSS_TYPES[loss_type]
        config.normalizer_kwargs.setdefault("aggregation", aggregation)
        _set_policy_loss(config, policy_loss, f"loss_type={loss_type!r}")
