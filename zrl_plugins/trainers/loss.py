"""Loss assembly: one micro-batch's policy objective as a function of tensors and components (:func:`objective`),
in TRL's order — policy loss → TRL's masks → KL term → aggregation → entropy bonus and router aux loss — returning
the loss, the metrics TRL logs, and what the coefficient controllers observe (they move only at the optimizer step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import nanmax, nanmin

from ..framework.errors import ComponentContractError
from ..framework.plugins import ZRLPluginManager
from ..framework.protocols import LossContext, PolicyLossOutput
from .batch import loss_mask
from .components import Selected, call_plugin
from .controllers import EntropyControl

Metrics = dict[str, float]


@dataclass(frozen=True)
class CompletionForward:
    """What one training forward pass yields for the completion tokens (B x T each; ``aux_loss`` a scalar)."""

    logps: torch.Tensor
    entropies: torch.Tensor | None
    aux_loss: torch.Tensor | None = None
    values: torch.Tensor | None = None  # V(s_t) of a PPO critic computed in the same pass
    # per-position outputs of the pass's model calls (one tensor per call) -> the padded B x L layout: the
    # concatenation, or the unpacking of packed rows (padding_free)
    sequence_layout: Callable[[list[torch.Tensor]], torch.Tensor] = field(default=torch.cat)


@dataclass(frozen=True)
class Collective:
    """The all-process operations metrics need (each the identity on one process)."""

    reduce_sum: Callable[[torch.Tensor], torch.Tensor]
    gather: Callable[[torch.Tensor], torch.Tensor]
    gather_for_metrics: Callable[[torch.Tensor], torch.Tensor]
    device: Any = "cpu"

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some process (every process must call it)."""
        return bool(self.reduce_sum(torch.tensor([float(flag)], device=self.device)) > 0)

    def masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of ``x`` over the masked tokens of all processes (over rows when ``x`` is per sequence, B x 1)."""
        if x.shape[1] == 1:
            local_sum, local_count = x.sum(), torch.tensor(float(x.shape[0]), device=x.device)
        else:
            local_sum, local_count = (x * mask).sum(), mask.sum().float()
        totals = self.reduce_sum(torch.stack([local_sum, local_count]))
        return (totals[0] / totals[1].clamp(min=1.0)).item()


def policy_loss(pm: ZRLPluginManager, selected: Selected, *args: torch.Tensor | None) -> PolicyLossOutput:
    """The ``policy_loss`` component on ``(logps, old_logps, advantages, mask, sampling_ratio)``, contract checked."""
    out = call_plugin(pm, selected, "__call__", *args)
    if not isinstance(out, PolicyLossOutput):
        raise ComponentContractError(
            f"policy_loss {selected.name!r} must return a PolicyLossOutput, got {type(out).__name__}"
        )
    check_policy_loss(selected.name, out, args[0])
    return out


def check_policy_loss(name: str, out: PolicyLossOutput, logps: torch.Tensor) -> None:
    """A policy loss's output where the core receives it: per-token (B x T) or per-sequence (B x 1) floating tensors
    — never broadcast over rows — and a loss that carries the gradient of the log-probs it was given."""
    rows, length = logps.shape
    for field_name in ("per_token_loss", "ratio"):
        tensor = getattr(out, field_name)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) not in ((rows, length), (rows, 1)):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ComponentContractError(
                f"policy_loss {name!r} returned {field_name} of shape {shape}; expected ({rows}, {length}) per token "
                f"or ({rows}, 1) per sequence. No optimizer step was taken."
            )
        if not tensor.is_floating_point():
            raise ComponentContractError(f"policy_loss {name!r} returned {field_name} of dtype {tensor.dtype}")
    if logps.requires_grad and not out.per_token_loss.requires_grad:
        raise ComponentContractError(
            f"policy_loss {name!r} returned a per_token_loss without gradient: it must be computed from the logps it "
            "is given (not detached, not from old_logps alone). No optimizer step was taken."
        )


def kl_term(
    kl_penalty: Any,
    logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    ratio: torch.Tensor,
    bias_correction: bool,
    name: str = "kl_penalty",
) -> torch.Tensor:
    """β-free per-token KL of a penalty placed in the loss (bias-corrected by the importance ratio when asked)."""
    per_token_kl = checked_kl(name, kl_penalty.per_token(logps, ref_logps), logps, ref_logps)
    return per_token_kl * ratio if bias_correction else per_token_kl


def checked_kl(name: str, per_token_kl: Any, logps: torch.Tensor, ref_logps: torch.Tensor | None) -> torch.Tensor:
    """A KL penalty's per-token estimate where the core receives it: a floating B x T tensor, never NaN where both
    log-probs are finite. (An estimate that overflows to inf — k3's exp(Δ) beyond float32 — is the step's numerics,
    for the skip guard, not the plugin's fault.)"""
    if not isinstance(per_token_kl, torch.Tensor) or per_token_kl.shape != logps.shape:
        shape = tuple(per_token_kl.shape) if isinstance(per_token_kl, torch.Tensor) else type(per_token_kl).__name__
        raise ComponentContractError(
            f"kl_penalty {name!r}.per_token returned {shape}; expected {tuple(logps.shape)}, one value per token. No "
            "optimizer step was taken."
        )
    if not per_token_kl.is_floating_point():
        raise ComponentContractError(f"kl_penalty {name!r}.per_token returned dtype {per_token_kl.dtype}")
    finite_inputs = torch.isfinite(logps) & (torch.isfinite(ref_logps) if ref_logps is not None else True)
    if torch.isnan(per_token_kl[finite_inputs]).any():
        raise ComponentContractError(
            f"kl_penalty {name!r}.per_token returned NaN from finite log-probs. No optimizer step was taken."
        )
    return per_token_kl


def aggregate(
    pm: ZRLPluginManager, selected: Selected, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext
) -> torch.Tensor:
    """The per-token loss reduced to the micro-batch's scalar by the normalizer (or PPO's estimator)."""
    loss = call_plugin(pm, selected, "aggregate", per_token_loss, mask, ctx)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ComponentContractError(
            f"{selected.kind} {selected.name!r}.aggregate must return a scalar tensor, got "
            f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}. "
            "No optimizer step was taken."
        )
    if not torch.isfinite(loss) and torch.isfinite(per_token_loss[mask.bool()]).all():
        raise ComponentContractError(
            f"{selected.kind} {selected.name!r}.aggregate returned a non-finite loss ({loss.item()}) from finite "
            "per-token losses; no optimizer step was taken."
        )  # non-finite per-token losses are the step's numerics, handled by the trainer's skip guard
    return loss.reshape(())


def entropy_bonus(
    entropy_control: EntropyControl,
    entropies: torch.Tensor,
    mask: torch.Tensor,
    policy_loss_value: torch.Tensor,
    ctx: LossContext,
    collective: Collective,
) -> tuple[torch.Tensor, Metrics]:
    """TRL's entropy bonus: −coef · token-mean entropy (over ``mask``, the entropy mask applied), scaled only for
    gradient accumulation; TRL then logs the aggregated policy loss without it."""
    entropy = (entropies * mask).sum() / mask.sum().clamp(min=1.0)
    bonus = -entropy_control.applied_coef() * entropy / ctx.gradient_accumulation_steps
    return bonus, {"policy_loss": collective.gather(policy_loss_value).nanmean().item()}


def aux_loss_term(aux_loss: torch.Tensor, coef: float, ctx: LossContext, collective: Collective) -> tuple[Any, Metrics]:
    """TRL's MoE router aux loss, scaled only for gradient accumulation."""
    metrics = {"aux_loss": collective.gather_for_metrics(aux_loss).mean().item()}
    return coef * aux_loss / ctx.gradient_accumulation_steps, metrics


def policy_metrics(
    out: PolicyLossOutput,
    entropies: torch.Tensor,
    per_token_kl: torch.Tensor | None,
    mask: torch.Tensor,
    collective: Collective,
) -> Metrics:
    """TRL's loss metrics: KL to the reference, entropy, approximate KL to π_old, clip fractions, plus what the
    policy loss reports."""

    def mean(x: torch.Tensor) -> float:
        return collective.masked_mean(x, mask)

    def masked_seq_mean(x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1)

    metrics: Metrics = {}
    if per_token_kl is not None:
        metrics["kl"] = mean(per_token_kl.detach())
    metrics["entropy"] = mean(entropies)
    ratio = out.ratio.detach()
    metrics["approx_kl"] = mean((ratio - 1) - torch.log(ratio.clamp(min=1e-12)))  # vs π_old
    if out.clipped_low is not None and out.clipped_high is not None:
        low, high = out.clipped_low.float(), out.clipped_high.float()
        metrics["clip_ratio/low_mean"] = mean(low)
        metrics["clip_ratio/high_mean"] = mean(high)
        metrics["clip_ratio/region_mean"] = mean(((low + high) > 0).float())
        metrics["clip_ratio/low_min"] = nanmin(collective.gather(masked_seq_mean(low))).item()
        metrics["clip_ratio/high_max"] = nanmax(collective.gather(masked_seq_mean(high))).item()
    for name, value in out.metrics.items():
        metrics[name] = mean(value.detach().float())
    return metrics


@dataclass(frozen=True)
class ObjectiveSetup:
    """The policy objective's fixed parts, chosen once at construction: the components and TRL's loss options."""

    pm: ZRLPluginManager
    policy_loss: Selected
    aggregator: Selected  # the normalizer (GRPO family) or the token estimator (PPO)
    kl_penalty: Any
    kl_in_loss: bool  # the KL penalty is placed in the loss and TRL computes reference log-probs
    bias_correction_kl: bool  # TRL's use_bias_correction_kl
    entropy_control: EntropyControl
    aux_loss_coef: float | None  # TRL's router_aux_loss_coef when the model reports an aux loss, else None
    off_policy_mask_threshold: float | None  # TRL's DeepSeek-V3.2 sequence mask
    high_entropy_mask: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None  # TRL's top-entropy token mask
    kl_penalty_name: str = "kl_penalty"  # what contract errors name


@dataclass(frozen=True)
class Objective:
    """One micro-batch's loss, its metrics, and what the controllers observe (``None`` where nothing is observed)."""

    loss: torch.Tensor
    metrics: Metrics
    kl: tuple[torch.Tensor, torch.Tensor] | None  # (Σ masked per-token KL, tokens): the KL controller's window
    entropy: tuple[torch.Tensor, torch.Tensor] | None  # (entropies, mask): the adaptive entropy controller's window


def objective(
    setup: ObjectiveSetup,
    forward: CompletionForward,
    inputs: dict[str, Any],
    ctx: LossContext,
    collective: Collective,
) -> Objective:
    """The policy objective of one micro-batch (TRL's batch dict ``inputs``), in TRL's order."""
    mask = loss_mask(inputs)
    if "rollout_correction_mask" in inputs:  # the rollout correction's rejections leave the loss
        mask = mask * inputs["rollout_correction_mask"]
    advantages = inputs["advantages"]
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    old_logps = inputs.get("old_per_token_logps")
    if old_logps is None:
        old_logps = forward.logps.detach()
    sampling_ratio = inputs.get("importance_sampling_ratio")
    out = policy_loss(setup.pm, setup.policy_loss, forward.logps, old_logps, advantages, mask, sampling_ratio)
    per_token_loss = out.per_token_loss
    if setup.off_policy_mask_threshold is not None:
        per_token_loss = per_token_loss * GRPOTrainer.get_off_policy_mask(
            advantages=advantages,
            per_token_logps=forward.logps,
            sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_logps),
            mask=mask,
            off_policy_threshold=setup.off_policy_mask_threshold,
        )
    entropy_mask = mask
    if setup.high_entropy_mask is not None:
        high_entropy = setup.high_entropy_mask(forward.entropies, mask)
        per_token_loss, entropy_mask = per_token_loss * high_entropy, mask * high_entropy
    if sampling_ratio is not None and not getattr(setup.policy_loss.component, "uses_importance_sampling_ratio", False):
        per_token_loss = per_token_loss * sampling_ratio
    per_token_kl, kl = None, None
    if setup.kl_in_loss:
        per_token_kl = kl_term(
            setup.kl_penalty,
            forward.logps,
            inputs["ref_per_token_logps"],
            out.ratio,
            setup.bias_correction_kl,
            setup.kl_penalty_name,
        )
        per_token_loss = per_token_loss + setup.kl_penalty.controller.beta * per_token_kl
        kl = ((per_token_kl.detach() * mask).sum(), mask.sum())

    total = aggregate(setup.pm, setup.aggregator, per_token_loss, mask, ctx)
    bonus, metrics, entropy = torch.zeros((), device=total.device), {}, None
    if setup.entropy_control.enabled:
        bonus_inputs = (forward.entropies, entropy_mask, total.detach(), ctx, collective)
        entropy_term, metrics = entropy_bonus(setup.entropy_control, *bonus_inputs)
        bonus, entropy = bonus + entropy_term, (forward.entropies, entropy_mask)
    if setup.aux_loss_coef is not None:
        aux, aux_metrics = aux_loss_term(forward.aux_loss, setup.aux_loss_coef, ctx, collective)
        bonus, metrics = bonus + aux, {**metrics, **aux_metrics}
    metrics.update(policy_metrics(out, forward.entropies, per_token_kl, mask, collective))
    return Objective(loss=total + bonus, metrics=metrics, kl=kl, entropy=entropy)
